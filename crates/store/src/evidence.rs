//! The `evidence` table: what the app layer keeps beside a deployment, as JSON documents the
//! store does not interpret. [`SqliteStore::put_failure`] keeps a failed deployment's
//! evidence, [`SqliteStore::put_disruption`] what any deployment cost at the proxy;
//! [`SqliteStore::evidence`] reads both back as a [`StoredEvidence`], and
//! [`SqliteStore::latest_disruptions`] the newest disruption of every service (for
//! `/metrics`). Not part of the engine's `Store` seam: the engine never reads it.

use rusqlite::{params, OptionalExtension};
use switchyard_engine::{DeploymentId, StoreError};

use crate::SqliteStore;

/// The row of one deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvidence {
    pub deployment: DeploymentId,
    /// What a failed deployment left behind; None for one that did not fail (or kept none).
    pub failure: Option<serde_json::Value>,
    /// Requests that failed at the proxy during the deployment and before it.
    pub disruption: Option<serde_json::Value>,
    pub updated_ms: i64,
}

/// The newest disruption recorded for one service.
#[derive(Debug, Clone, PartialEq)]
pub struct LatestDisruption {
    pub service: String,
    pub deployment: DeploymentId,
    pub disruption: serde_json::Value,
}

/// The two documents of a row; each put replaces only its own.
#[derive(Clone, Copy)]
enum Column {
    Failure,
    Disruption,
}

impl Column {
    fn name(self) -> &'static str {
        match self {
            Column::Failure => "failure",
            Column::Disruption => "disruption",
        }
    }
}

impl SqliteStore {
    /// Keeps `failure` as deployment `id`'s failure evidence (replacing an earlier one).
    pub fn put_failure(
        &self,
        id: DeploymentId,
        failure: &serde_json::Value,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        self.put_document(id, Column::Failure, failure, at_ms)
    }

    /// Keeps `disruption` as what deployment `id` cost at the proxy (replacing an earlier one).
    pub fn put_disruption(
        &self,
        id: DeploymentId,
        disruption: &serde_json::Value,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        self.put_document(id, Column::Disruption, disruption, at_ms)
    }

    fn put_document(
        &self,
        id: DeploymentId,
        column: Column,
        value: &serde_json::Value,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let doing = format!("keeping the {} evidence of deployment {id}", column.name());
        let column = column.name();
        // The column name is one of two constants, never input.
        let sql = format!(
            "INSERT INTO evidence (deployment, {column}, updated_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (deployment) DO UPDATE SET {column} = excluded.{column},
                 updated_ms = excluded.updated_ms"
        );
        self.conn
            .execute(&sql, params![id, value.to_string(), at_ms])
            .map_err(|e| self.error(&doing, e))?;
        Ok(())
    }

    /// What is kept beside deployment `id`, if anything.
    pub fn evidence(&self, id: DeploymentId) -> Result<Option<StoredEvidence>, StoreError> {
        let doing = format!("reading the evidence of deployment {id}");
        let row: Option<(Option<String>, Option<String>, i64)> = self
            .conn
            .query_row(
                "SELECT failure, disruption, updated_ms FROM evidence WHERE deployment = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(|e| self.error(&doing, e))?;
        let Some((failure, disruption, updated_ms)) = row else {
            return Ok(None);
        };
        Ok(Some(StoredEvidence {
            deployment: id,
            failure: self.document("failure", id, failure)?,
            disruption: self.document("disruption", id, disruption)?,
            updated_ms,
        }))
    }

    /// For every service with a recorded disruption, the newest one.
    pub fn latest_disruptions(&self) -> Result<Vec<LatestDisruption>, StoreError> {
        let doing = "reading the latest disruption of each service";
        let mut stmt = self
            .conn
            .prepare(
                "SELECT d.service, e.deployment, e.disruption
                 FROM evidence e JOIN deployments d ON d.id = e.deployment
                 WHERE e.disruption IS NOT NULL
                   AND e.deployment = (
                     SELECT MAX(e2.deployment) FROM evidence e2
                     JOIN deployments d2 ON d2.id = e2.deployment
                     WHERE d2.service = d.service AND e2.disruption IS NOT NULL)
                 ORDER BY d.service",
            )
            .map_err(|e| self.error(doing, e))?;
        let rows: Vec<(String, i64, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|rows| rows.collect::<Result<_, _>>())
            .map_err(|e| self.error(doing, e))?;
        rows.into_iter()
            .map(|(service, deployment, json)| {
                let disruption = self
                    .document("disruption", deployment, Some(json))?
                    .unwrap_or_default();
                Ok(LatestDisruption {
                    service,
                    deployment,
                    disruption,
                })
            })
            .collect()
    }

    /// A column's JSON parsed; a value that does not parse names the table and column.
    fn document(
        &self,
        column: &str,
        id: DeploymentId,
        json: Option<String>,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        json.map(|text| {
            serde_json::from_str(&text).map_err(|e| {
                StoreError(format!(
                    "reading {}: table evidence, column {column} (deployment {id}): {e}",
                    self.path
                ))
            })
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use switchyard_engine::Store;

    use crate::fixtures::deployment;
    use crate::SqliteStore;

    #[test]
    fn failure_and_disruption_round_trip_and_each_put_keeps_the_other() {
        let store = SqliteStore::open_in_memory().unwrap();
        let id = store.begin(&deployment("web", "v2")).unwrap();
        assert_eq!(store.evidence(id).unwrap(), None);
        let failure = json!({"schema": 1, "replicas": [{"exit_code": 2, "oom_killed": false}]});
        store.put_failure(id, &failure, 10).unwrap();
        let disruption = json!({"schema": 1, "tracks": {"stable": {"requests": 5, "failed": 0}}});
        store.put_disruption(id, &disruption, 11).unwrap();
        let kept = store.evidence(id).unwrap().unwrap();
        assert_eq!(kept.failure, Some(failure.clone()));
        assert_eq!(kept.disruption, Some(disruption));
        assert_eq!(kept.updated_ms, 11);
        let again = json!({"schema": 1, "tracks": {}});
        store.put_disruption(id, &again, 12).unwrap();
        let kept = store.evidence(id).unwrap().unwrap();
        assert_eq!(
            (kept.failure, kept.disruption),
            (Some(failure), Some(again))
        );
    }

    #[test]
    fn evidence_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = SqliteStore::open(&path).unwrap();
        let id = store.begin(&deployment("web", "v2")).unwrap();
        store.put_failure(id, &json!({"log": "boom"}), 1).unwrap();
        drop(store);
        let store = SqliteStore::open(&path).unwrap();
        let kept = store.evidence(id).unwrap().unwrap();
        assert_eq!(kept.failure, Some(json!({"log": "boom"})));
        assert_eq!(kept.disruption, None);
    }

    #[test]
    fn latest_disruptions_is_the_newest_per_service() {
        let store = SqliteStore::open_in_memory().unwrap();
        let web1 = store.begin(&deployment("web", "v1")).unwrap();
        let api = store.begin(&deployment("api", "v1")).unwrap();
        let web2 = store.begin(&deployment("web", "v2")).unwrap();
        let web3 = store.begin(&deployment("web", "v3")).unwrap();
        store.put_disruption(web1, &json!({"n": 1}), 1).unwrap();
        store.put_disruption(api, &json!({"n": 2}), 1).unwrap();
        store.put_disruption(web2, &json!({"n": 3}), 1).unwrap();
        // A failure without a disruption does not hide web2's.
        store.put_failure(web3, &json!({}), 1).unwrap();
        let latest = store.latest_disruptions().unwrap();
        let got: Vec<(&str, i64, &serde_json::Value)> = latest
            .iter()
            .map(|l| (l.service.as_str(), l.deployment, &l.disruption))
            .collect();
        assert_eq!(
            got,
            [
                ("api", api, &json!({"n": 2})),
                ("web", web2, &json!({"n": 3}))
            ]
        );
    }

    #[test]
    fn a_corrupt_document_is_an_error_naming_table_and_column() {
        let store = SqliteStore::open_in_memory().unwrap();
        let id = store.begin(&deployment("web", "v1")).unwrap();
        store
            .conn
            .execute(
                "INSERT INTO evidence (deployment, failure, updated_ms) VALUES (?1, 'nope', 1)",
                [id],
            )
            .unwrap();
        let err = store.evidence(id).unwrap_err();
        assert!(err.0.contains("table evidence, column failure"), "{err}");
    }
}
