//! The `deployments` and `journal` tables: [`DeploymentRecord`]s and their [`JournalEntry`]s.
//!
//! A deployment is `running` from `begin` until `finish`; the newest running one of a service
//! is what a later `deploy` resumes, replaying its journal.

use rusqlite::{params, OptionalExtension, Params};
use switchyard_engine::{
    Color, DeployKind, DeploymentId, DeploymentRecord, JournalEntry, Name, NewDeployment, Outcome,
    Step, StoreError, Version,
};

use crate::SqliteStore;

const COLUMNS: &str = "id, service, kind, strategy, from_version, to_version, color, who, \
                       started_ms, finished_ms, outcome, message";

/// A `deployments` row as SQLite returns it, before its columns are checked.
struct Row {
    id: i64,
    service: String,
    kind: String,
    strategy: String,
    from_version: Option<String>,
    to_version: String,
    color: String,
    who: String,
    started_ms: i64,
    finished_ms: Option<i64>,
    outcome: String,
    message: String,
}

pub(crate) fn begin(store: &SqliteStore, new: &NewDeployment) -> Result<DeploymentId, StoreError> {
    let doing = format!("recording a deployment of {}", new.service);
    let tx = store.immediate(&doing)?;
    tx.execute(
        "INSERT INTO deployments (service, kind, strategy, from_version, to_version, color, who,
             started_ms, outcome)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            new.service.as_str(),
            new.kind.as_str(),
            new.strategy,
            new.from_version.as_ref().map(Version::as_str),
            new.to_version.as_str(),
            new.color.as_str(),
            new.who,
            new.started_ms,
            Outcome::Running.as_str(),
        ],
    )
    .map_err(|e| store.error(&doing, e))?;
    let id = tx.last_insert_rowid();
    tx.execute(
        "UPDATE locks SET deployment = ?2 WHERE service = ?1",
        params![new.service.as_str(), id],
    )
    .map_err(|e| store.error(&doing, e))?;
    tx.commit().map_err(|e| store.error(&doing, e))?;
    Ok(id)
}

pub(crate) fn journal(
    store: &SqliteStore,
    id: DeploymentId,
    at_ms: i64,
    step: &Step,
) -> Result<(), StoreError> {
    let doing = format!("journaling {} for deployment {id}", step.name());
    let json = serde_json::to_string(step).map_err(|e| store.error(&doing, e))?;
    // One statement, so the seq is computed and used under the same write lock.
    store
        .conn
        .execute(
            "INSERT INTO journal (deployment, seq, at_ms, name, step)
             SELECT ?1, COALESCE(MAX(seq), 0) + 1, ?2, ?3, ?4 FROM journal WHERE deployment = ?1",
            params![id, at_ms, step.name(), json],
        )
        .map_err(|e| store.error(&doing, e))?;
    Ok(())
}

pub(crate) fn finish(
    store: &SqliteStore,
    id: DeploymentId,
    at_ms: i64,
    outcome: Outcome,
    message: &str,
) -> Result<(), StoreError> {
    let doing = format!("finishing deployment {id}");
    let changed = store
        .conn
        .execute(
            "UPDATE deployments SET finished_ms = ?2, outcome = ?3, message = ?4 WHERE id = ?1",
            params![id, at_ms, outcome.as_str(), message],
        )
        .map_err(|e| store.error(&doing, e))?;
    if changed == 0 {
        return Err(store.error(&doing, "no such deployment"));
    }
    Ok(())
}

pub(crate) fn unfinished(
    store: &SqliteStore,
    service: &Name,
) -> Result<Option<(DeploymentRecord, Vec<JournalEntry>)>, StoreError> {
    let doing = format!("reading the unfinished deployment of {service}");
    let sql = format!(
        "SELECT {COLUMNS} FROM deployments WHERE service = ?1 AND outcome = ?2
         ORDER BY id DESC LIMIT 1"
    );
    let record = select(
        store,
        &doing,
        &sql,
        params![service.as_str(), Outcome::Running.as_str()],
    )?;
    attach_journal(store, record)
}

pub(crate) fn with_journal(
    store: &SqliteStore,
    id: DeploymentId,
) -> Result<Option<(DeploymentRecord, Vec<JournalEntry>)>, StoreError> {
    let doing = format!("reading deployment {id}");
    let sql = format!("SELECT {COLUMNS} FROM deployments WHERE id = ?1");
    let record = select(store, &doing, &sql, [id])?;
    attach_journal(store, record)
}

pub(crate) fn history(
    store: &SqliteStore,
    service: Option<&Name>,
    limit: usize,
) -> Result<Vec<DeploymentRecord>, StoreError> {
    let doing = "reading the deployment history";
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = store
        .conn
        .prepare(&format!(
            "SELECT {COLUMNS} FROM deployments WHERE ?1 IS NULL OR service = ?1
             ORDER BY id DESC LIMIT ?2"
        ))
        .map_err(|e| store.error(doing, e))?;
    let rows = stmt
        .query_map(params![service.map(Name::as_str), limit], read_row)
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(|e| store.error(doing, e))?;
    rows.into_iter().map(|row| decode(store, row)).collect()
}

fn select(
    store: &SqliteStore,
    doing: &str,
    sql: &str,
    params: impl Params,
) -> Result<Option<DeploymentRecord>, StoreError> {
    let row = store
        .conn
        .query_row(sql, params, read_row)
        .optional()
        .map_err(|e| store.error(doing, e))?;
    row.map(|row| decode(store, row)).transpose()
}

fn attach_journal(
    store: &SqliteStore,
    record: Option<DeploymentRecord>,
) -> Result<Option<(DeploymentRecord, Vec<JournalEntry>)>, StoreError> {
    let Some(record) = record else {
        return Ok(None);
    };
    let entries = journal_of(store, record.id)?;
    Ok(Some((record, entries)))
}

fn journal_of(store: &SqliteStore, id: DeploymentId) -> Result<Vec<JournalEntry>, StoreError> {
    let doing = format!("reading the journal of deployment {id}");
    let mut stmt = store
        .conn
        .prepare("SELECT seq, at_ms, step FROM journal WHERE deployment = ?1 ORDER BY seq")
        .map_err(|e| store.error(&doing, e))?;
    let rows = stmt
        .query_map([id], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, String>(2)?,
            ))
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(|e| store.error(&doing, e))?;
    rows.into_iter()
        .map(|(seq, at_ms, json)| {
            let step = serde_json::from_str(&json).map_err(|e| {
                StoreError(format!(
                    "reading {}: table journal, column step (deployment {id}, seq {seq}): {e}",
                    store.path
                ))
            })?;
            Ok(JournalEntry { seq, at_ms, step })
        })
        .collect()
}

fn read_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        id: row.get(0)?,
        service: row.get(1)?,
        kind: row.get(2)?,
        strategy: row.get(3)?,
        from_version: row.get(4)?,
        to_version: row.get(5)?,
        color: row.get(6)?,
        who: row.get(7)?,
        started_ms: row.get(8)?,
        finished_ms: row.get(9)?,
        outcome: row.get(10)?,
        message: row.get(11)?,
    })
}

fn decode(store: &SqliteStore, row: Row) -> Result<DeploymentRecord, StoreError> {
    let table = "deployments";
    let from_version = match row.from_version {
        None => None,
        Some(v) => Some(store.decode(table, "from_version", v, |s| Version::parse(s).ok())?),
    };
    Ok(DeploymentRecord {
        id: row.id,
        service: store.decode(table, "service", row.service, |s| Name::parse(s).ok())?,
        kind: store.decode(table, "kind", row.kind, |s| DeployKind::parse(s))?,
        strategy: row.strategy,
        from_version,
        to_version: store.decode(table, "to_version", row.to_version, |s| {
            Version::parse(s).ok()
        })?,
        color: store.decode(table, "color", row.color, |s| Color::parse(s))?,
        who: row.who,
        started_ms: row.started_ms,
        finished_ms: row.finished_ms,
        outcome: store.decode(table, "outcome", row.outcome, |s| Outcome::parse(s))?,
        message: row.message,
    })
}

#[cfg(test)]
mod tests {
    use switchyard_engine::{DeployKind, Outcome, Step, Store};

    use crate::fixtures::{deployment, instance, lock, name, steps};
    use crate::SqliteStore;

    #[test]
    fn begin_journal_finish_round_trip() {
        let store = SqliteStore::open_in_memory().unwrap();
        let new = deployment("web", "v2");
        let id = store.begin(&new).unwrap();

        let steps = steps(&instance("c1", "web", "v2", id, 0, 4001));
        for (at, step) in steps.iter().enumerate() {
            store.journal(id, 10 + at as i64, step).unwrap();
        }

        let (record, journal) = store.unfinished(&name("web")).unwrap().expect("running");
        assert_eq!(record.id, id);
        assert_eq!(record.service, new.service);
        assert_eq!(record.kind, DeployKind::Deploy);
        assert_eq!(record.strategy, new.strategy);
        assert_eq!(record.from_version, new.from_version);
        assert_eq!(record.to_version, new.to_version);
        assert_eq!(record.color, new.color);
        assert_eq!(record.who, new.who);
        assert_eq!(record.started_ms, new.started_ms);
        assert_eq!(
            (record.finished_ms, record.outcome),
            (None, Outcome::Running)
        );
        let seqs: Vec<i64> = journal.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=steps.len() as i64).collect::<Vec<_>>());
        assert_eq!(
            journal.iter().map(|e| e.at_ms).collect::<Vec<_>>()[..2],
            [10, 11]
        );
        let read: Vec<Step> = journal.into_iter().map(|e| e.step).collect();
        assert_eq!(read, steps);

        store
            .finish(id, 99, Outcome::Failed, "unhealthy: 503")
            .unwrap();
        assert_eq!(store.unfinished(&name("web")).unwrap(), None);
        let (record, journal) = store.deployment(id).unwrap().unwrap();
        assert_eq!(record.finished_ms, Some(99));
        assert_eq!(record.outcome, Outcome::Failed);
        assert_eq!(record.message, "unhealthy: 503");
        assert_eq!(journal.len(), steps.len());
    }

    #[test]
    fn journal_seq_counts_per_deployment() {
        let store = SqliteStore::open_in_memory().unwrap();
        let a = store.begin(&deployment("web", "v1")).unwrap();
        let b = store.begin(&deployment("api", "v1")).unwrap();
        store.journal(a, 1, &Step::WaitHealthy).unwrap();
        store.journal(a, 2, &Step::Drain).unwrap();
        store.journal(b, 3, &Step::OldStopped).unwrap();
        let (_, journal) = store.deployment(b).unwrap().unwrap();
        assert_eq!(journal.len(), 1);
        assert_eq!((journal[0].seq, &journal[0].step), (1, &Step::OldStopped));
    }

    #[test]
    fn unfinished_is_the_newest_running_deployment_of_that_service() {
        let store = SqliteStore::open_in_memory().unwrap();
        let old = store.begin(&deployment("web", "v1")).unwrap();
        let newer = store.begin(&deployment("web", "v2")).unwrap();
        let done = store.begin(&deployment("web", "v3")).unwrap();
        store.begin(&deployment("api", "v9")).unwrap();
        store.finish(done, 5, Outcome::Succeeded, "").unwrap();
        let (record, _) = store.unfinished(&name("web")).unwrap().unwrap();
        assert_eq!(record.id, newer);
        store.finish(newer, 6, Outcome::Failed, "x").unwrap();
        assert_eq!(store.unfinished(&name("web")).unwrap().unwrap().0.id, old);
    }

    #[test]
    fn begin_records_the_deployment_on_the_lock() {
        let store = SqliteStore::open_in_memory().unwrap();
        store.try_lock(&lock("web", 100, 1), None).unwrap().unwrap();
        let id = store.begin(&deployment("web", "v1")).unwrap();
        assert_eq!(
            store.lock(&name("web")).unwrap().unwrap().deployment,
            Some(id)
        );
        // No lock row for api: begin must not create one.
        store.begin(&deployment("api", "v1")).unwrap();
        assert_eq!(store.lock(&name("api")).unwrap(), None);
    }

    #[test]
    fn history_is_newest_first_filtered_and_limited() {
        let store = SqliteStore::open_in_memory().unwrap();
        let mut web = Vec::new();
        for v in ["v1", "v2", "v3"] {
            web.push(store.begin(&deployment("web", v)).unwrap());
            store.begin(&deployment("api", v)).unwrap();
        }
        let ids = |records: Vec<switchyard_engine::DeploymentRecord>| -> Vec<i64> {
            records.into_iter().map(|r| r.id).collect()
        };
        assert_eq!(
            ids(store.history(Some(&name("web")), 10).unwrap()),
            [web[2], web[1], web[0]]
        );
        assert_eq!(
            ids(store.history(Some(&name("web")), 2).unwrap()),
            [web[2], web[1]]
        );
        assert_eq!(ids(store.history(None, 4).unwrap()), [6, 5, 4, 3]);
        assert_eq!(store.history(None, usize::MAX).unwrap().len(), 6);
        assert!(store.history(None, 0).unwrap().is_empty());
    }

    #[test]
    fn finishing_an_unknown_deployment_is_an_error() {
        let store = SqliteStore::open_in_memory().unwrap();
        let err = store.finish(42, 1, Outcome::Succeeded, "").unwrap_err();
        assert_eq!(
            err.0,
            "finishing deployment 42 in :memory:: no such deployment"
        );
    }

    #[test]
    fn a_corrupt_row_is_an_error_naming_table_and_column() {
        let store = SqliteStore::open_in_memory().unwrap();
        let id = store.begin(&deployment("web", "v1")).unwrap();
        store
            .conn
            .execute("UPDATE deployments SET color = 'red' WHERE id = ?1", [id])
            .unwrap();
        let err = store.deployment(id).unwrap_err();
        assert!(err.0.contains("table deployments, column color"), "{err}");
        assert!(err.0.contains("\"red\""), "{err}");
    }
}
