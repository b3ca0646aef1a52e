//! The database schema and its [`migrate`] function, versioned with `PRAGMA user_version`.
//!
//! [`MIGRATIONS`]`[i]` takes a database from version `i` to `i + 1`. A later switchyard adds
//! tables by appending a migration; it never edits one that has shipped.

use rusqlite::{Connection, Transaction, TransactionBehavior};

/// Version 1, the initial schema.
///
/// `journal` and `services` reference `deployments`; `instances` and `locks` do not, because
/// they record what was found in the world (a runtime's labels, a process's lock) and must be
/// storable even when that names a deployment this file never saw.
const V1: &str = "
CREATE TABLE deployments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    service TEXT NOT NULL,
    kind TEXT NOT NULL,
    strategy TEXT NOT NULL,
    from_version TEXT,
    to_version TEXT NOT NULL,
    color TEXT NOT NULL,
    who TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    finished_ms INTEGER,
    outcome TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT ''
);
CREATE INDEX deployments_by_service ON deployments (service, outcome, id);

CREATE TABLE journal (
    deployment INTEGER NOT NULL REFERENCES deployments (id),
    seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    -- Step::name(), so a person with the sqlite3 shell can read the journal.
    name TEXT NOT NULL,
    -- The Step as JSON.
    step TEXT NOT NULL,
    PRIMARY KEY (deployment, seq)
);

CREATE TABLE services (
    name TEXT PRIMARY KEY,
    active_deployment INTEGER REFERENCES deployments (id),
    updated_ms INTEGER NOT NULL
);

CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    service TEXT NOT NULL,
    version TEXT NOT NULL,
    color TEXT NOT NULL,
    deployment INTEGER NOT NULL,
    replica INTEGER NOT NULL,
    host_port INTEGER NOT NULL,
    state TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX instances_by_service ON instances (service, state);
CREATE INDEX instances_by_deployment ON instances (deployment, state);

CREATE TABLE locks (
    service TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    deployment INTEGER,
    acquired_ms INTEGER NOT NULL,
    heartbeat_ms INTEGER NOT NULL
);
";

/// Every migration, oldest first.
/// Version 2: promote/abort requests from the CLI to a running deployment.
const V2: &str = "
CREATE TABLE controls (
    deployment INTEGER PRIMARY KEY REFERENCES deployments (id),
    action TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
";

/// Version 3: every instance records the deployment that created it (`origin`), which alone
/// may remove it. Rows and journal entries written before are backfilled by [`backfill_origin`]
/// from the instance name, `sy-<service>-<colour>-d<deployment>-r<replica>`, the one place a
/// name is ever parsed.
const V3: &str = "
ALTER TABLE instances ADD COLUMN origin INTEGER NOT NULL DEFAULT 0;
";

/// Version 4: what a deployment left behind, kept beside it by the app layer (the engine
/// never reads it): `failure`, the evidence of a failed deployment (health responses, log
/// tails, exit codes, nginx error lines, the judge's measurements), and `disruption`, the
/// requests that failed at the proxy during the deploy and in the window before it. Both
/// are JSON documents whose `schema` field versions them.
const V4: &str = "
CREATE TABLE evidence (
    deployment INTEGER PRIMARY KEY REFERENCES deployments (id),
    failure TEXT,
    disruption TEXT,
    updated_ms INTEGER NOT NULL
);
";

pub const MIGRATIONS: &[&str] = &[V1, V2, V3, V4];

/// The schema version this build writes.
pub const CURRENT: u32 = MIGRATIONS.len() as u32;

/// Brings the database up to [`CURRENT`], in one `BEGIN IMMEDIATE` transaction so that two
/// processes opening a new file at once do not both create the tables. Refuses a file
/// written by a newer switchyard.
pub fn migrate(conn: &Connection) -> Result<(), String> {
    let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
        .map_err(|e| e.to_string())?;
    let found: u32 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|e| e.to_string())?;
    if found > CURRENT {
        return Err(format!(
            "schema version {found} is newer than this switchyard understands ({CURRENT})"
        ));
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let to = from + 1;
        tx.execute_batch(sql)
            .map_err(|e| format!("to version {to}: {e}"))?;
        if to == 3 {
            backfill_origin(&tx).map_err(|e| format!("to version {to}: {e}"))?;
        }
        tx.pragma_update(None, "user_version", to)
            .map_err(|e| format!("to version {to}: {e}"))?;
    }
    tx.commit().map_err(|e| e.to_string())
}

/// The deployment that created an instance named `name`, from the name written before
/// instances recorded it.
fn origin_in(name: &str, replica: i64) -> Option<i64> {
    let rest = name.strip_suffix(&format!("-r{replica}"))?;
    rest.rsplit_once("-d")?.1.parse().ok()
}

/// Gives every `instances` row, and every instance in the journal, its `origin`.
fn backfill_origin(tx: &Transaction) -> rusqlite::Result<()> {
    let rows: Vec<(String, String, i64, i64)> = tx
        .prepare("SELECT id, name, replica, deployment FROM instances WHERE origin = 0")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    for (id, name, replica, deployment) in rows {
        let origin = origin_in(&name, replica).unwrap_or(deployment);
        tx.execute(
            "UPDATE instances SET origin = ?2 WHERE id = ?1",
            (id, origin),
        )?;
    }
    let entries: Vec<(i64, i64, String)> = tx
        .prepare("SELECT deployment, seq, step FROM journal WHERE step LIKE '%\"instance\":{%'")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for (deployment, seq, step) in entries {
        let Ok(mut value) = serde_json::from_str::<serde_json::Value>(&step) else {
            continue;
        };
        let Some(instance) = value.get_mut("instance").and_then(|i| i.as_object_mut()) else {
            continue;
        };
        if instance.contains_key("origin") {
            continue;
        }
        let name = instance.get("name").and_then(|n| n.as_str()).unwrap_or("");
        let replica = instance
            .get("replica")
            .and_then(|r| r.as_i64())
            .unwrap_or(-1);
        let own = instance
            .get("deployment")
            .and_then(|d| d.as_i64())
            .unwrap_or(0);
        let origin = origin_in(name, replica).unwrap_or(own);
        instance.insert("origin".into(), origin.into());
        tx.execute(
            "UPDATE journal SET step = ?3 WHERE deployment = ?1 AND seq = ?2",
            (deployment, seq, value.to_string()),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables(conn: &Connection) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .unwrap();
        let names = stmt.query_map([], |row| row.get(0)).unwrap();
        names.collect::<Result<_, _>>().unwrap()
    }

    #[test]
    fn a_version_1_database_is_migrated_to_the_current_version() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(V1).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        assert!(!tables(&conn).iter().any(|t: &String| t == "controls"));
        migrate(&conn).unwrap();
        assert!(tables(&conn).iter().any(|t: &String| t == "controls"));
        let version: u32 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, CURRENT);
    }

    #[test]
    fn a_version_2_database_gets_each_instances_origin_from_its_name() {
        // Rows and journal entries written before instances recorded their origin: a
        // rollback (deployment 7) restarted an instance deployment 5 created.
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(V1).unwrap();
        conn.execute_batch(V2).unwrap();
        conn.pragma_update(None, "user_version", 2).unwrap();
        conn.execute_batch(
            "INSERT INTO deployments VALUES (7, 'web', 'rollback', 'blue-green', 'v2', 'v1',
                 'blue', 'me', 1, NULL, 'running', '');
             INSERT INTO instances VALUES ('c1', 'sy-my-db-blue-d5-r1', 'my-db', 'v1', 'blue',
                 7, 1, 4001, 'starting', 1);
             INSERT INTO journal VALUES (7, 1, 1, 'restart_instance',
                 '{\"step\":\"restart_instance\",\"instance\":{\"id\":\"c1\",\"name\":\"sy-my-db-blue-d5-r1\",\"service\":\"my-db\",\"version\":\"v1\",\"color\":\"blue\",\"deployment\":7,\"replica\":1,\"host_port\":4001}}');",
        )
        .unwrap();
        migrate(&conn).unwrap();
        let origin: i64 = conn
            .query_row("SELECT origin FROM instances WHERE id = 'c1'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(origin, 5);
        let step: String = conn
            .query_row("SELECT step FROM journal WHERE seq = 1", [], |r| r.get(0))
            .unwrap();
        let step: switchyard_engine::Step = serde_json::from_str(&step).unwrap();
        match step {
            switchyard_engine::Step::RestartInstance { instance } => {
                assert_eq!((instance.deployment, instance.origin), (7, 5))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_new_database_gets_every_table_and_the_current_version() {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        let version: u32 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, CURRENT);
        assert_eq!(
            tables(&conn),
            [
                "controls",
                "deployments",
                "evidence",
                "instances",
                "journal",
                "locks",
                "services",
                "sqlite_sequence"
            ]
        );
    }

    #[test]
    fn a_version_3_database_gets_the_evidence_table_and_keeps_its_rows() {
        let conn = Connection::open_in_memory().unwrap();
        for sql in [V1, V2, V3] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 3).unwrap();
        conn.execute_batch(
            "INSERT INTO deployments VALUES (1, 'web', 'deploy', 'blue-green', NULL, 'v1',
                 'blue', 'me', 1, 2, 'failed', 'unhealthy');",
        )
        .unwrap();
        assert!(!tables(&conn).iter().any(|t: &String| t == "evidence"));
        migrate(&conn).unwrap();
        assert!(tables(&conn).iter().any(|t: &String| t == "evidence"));
        conn.execute(
            "INSERT INTO evidence (deployment, failure, updated_ms) VALUES (1, '{}', 3)",
            [],
        )
        .unwrap();
        let outcome: String = conn
            .query_row("SELECT outcome FROM deployments WHERE id = 1", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(outcome, "failed");
        let version: u32 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, 4);
    }

    #[test]
    fn migrating_twice_changes_nothing() {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        conn.execute("INSERT INTO locks VALUES ('web', 1, 'h', NULL, 1, 1)", [])
            .unwrap();
        migrate(&conn).expect("a second migrate must not re-run CREATE TABLE");
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM locks", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows, 1);
    }
}
