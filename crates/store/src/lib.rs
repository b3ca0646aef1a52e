//! switchyard's state store: [`SqliteStore`], the engine's [`Store`] seam on one SQLite file.
//!
//! Several switchyard processes share the file at once (two `deploy`s of different services,
//! a `status` during a deploy), so connections use WAL, a busy timeout and `BEGIN IMMEDIATE`
//! for every read-modify-write. The schema lives in [`schema`]; the tables' queries in
//! `locks`, `deployments`, `instances`, `controls` and `evidence` (kept by the app layer
//! beside a deployment, outside the engine's seam).

use std::fmt;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, Transaction, TransactionBehavior};
use switchyard_engine::{
    Control, DeploymentId, DeploymentRecord, Instance, InstanceState, JournalEntry, Lock, Name,
    NewDeployment, Outcome, ServiceRecord, Step, Store, StoreError,
};

#[cfg(test)]
mod contract;
mod controls;
mod deployments;
mod evidence;
#[cfg(test)]
mod fixtures;
mod instances;
mod locks;
pub mod schema;

pub use evidence::{LatestDisruption, StoredEvidence};

/// How long a statement waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// SQL for "now" in milliseconds, for the informational `updated_ms` columns: the trait's
/// `activate` and `set_instance_state` carry no timestamp.
const NOW_MS: &str = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";

/// The engine's [`Store`] on a SQLite database file. `Send`, not `Sync`: one per task.
pub struct SqliteStore {
    conn: Connection,
    /// For error messages: the file, or `:memory:`.
    path: String,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it to the current
    /// schema. The parent directory must exist.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let shown = path.display().to_string();
        let conn =
            Connection::open(path).map_err(|e| StoreError(format!("opening {shown}: {e}")))?;
        SqliteStore::setup(conn, shown)
    }

    /// A private in-memory database, for tests.
    pub fn open_in_memory() -> Result<SqliteStore, StoreError> {
        let conn = Connection::open_in_memory()
            .map_err(|e| StoreError(format!("opening :memory:: {e}")))?;
        SqliteStore::setup(conn, ":memory:".to_owned())
    }

    fn setup(conn: Connection, path: String) -> Result<SqliteStore, StoreError> {
        let store = SqliteStore { conn, path };
        store.configure().map_err(|e| store.error("opening", e))?;
        schema::migrate(&store.conn).map_err(|e| store.error("migrating", e))?;
        Ok(store)
    }

    fn configure(&self) -> rusqlite::Result<()> {
        // The timeout first: switching to WAL needs a lock another process may hold.
        self.conn.busy_timeout(BUSY_TIMEOUT)?;
        // In-memory databases answer "memory"; files answer "wal".
        let _mode: String =
            self.conn
                .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        // rusqlite and the bundled SQLite already default to the timeout and foreign keys;
        // setting both keeps them on if the crate is ever linked to a system SQLite.
        self.conn.pragma_update(None, "foreign_keys", true)?;
        Ok(())
    }

    /// The database file, or `:memory:`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The schema version recorded in the file (`PRAGMA user_version`).
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        self.conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|e| self.error("reading the schema version", e))
    }

    /// An error naming the database and what was being done, e.g.
    /// `taking the lock for web in /var/lib/switchyard/state.db: database is locked`.
    fn error(&self, doing: impl fmt::Display, e: impl fmt::Display) -> StoreError {
        StoreError(format!("{doing} in {}: {e}", self.path))
    }

    /// A `BEGIN IMMEDIATE` transaction: it takes the write lock up front, so two processes
    /// cannot both read a free lock row and then both write it.
    fn immediate(&self, doing: impl fmt::Display) -> Result<Transaction<'_>, StoreError> {
        Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
            .map_err(|e| self.error(doing, e))
    }

    /// Parses a column read back from a row; a value that does not parse names the table
    /// and column.
    fn decode<V: fmt::Debug, T>(
        &self,
        table: &str,
        column: &str,
        value: V,
        parse: impl FnOnce(&V) -> Option<T>,
    ) -> Result<T, StoreError> {
        parse(&value).ok_or_else(|| {
            StoreError(format!(
                "reading {}: table {table}, column {column}: unexpected value {value:?}",
                self.path
            ))
        })
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Store for SqliteStore {
    fn try_lock(
        &self,
        lock: &Lock,
        replace: Option<&Lock>,
    ) -> Result<Result<(), Lock>, StoreError> {
        locks::try_lock(self, lock, replace)
    }

    fn heartbeat(&self, service: &Name, pid: u32, now_ms: i64) -> Result<(), StoreError> {
        locks::heartbeat(self, service, pid, now_ms)
    }

    fn unlock(&self, service: &Name, pid: u32) -> Result<(), StoreError> {
        locks::unlock(self, service, pid)
    }

    fn lock(&self, service: &Name) -> Result<Option<Lock>, StoreError> {
        locks::get(self, service)
    }

    fn begin(&self, deployment: &NewDeployment) -> Result<DeploymentId, StoreError> {
        deployments::begin(self, deployment)
    }

    fn journal(&self, id: DeploymentId, at_ms: i64, step: &Step) -> Result<(), StoreError> {
        deployments::journal(self, id, at_ms, step)
    }

    fn finish(
        &self,
        id: DeploymentId,
        at_ms: i64,
        outcome: Outcome,
        message: &str,
    ) -> Result<(), StoreError> {
        deployments::finish(self, id, at_ms, outcome, message)
    }

    fn unfinished(
        &self,
        service: &Name,
    ) -> Result<Option<(DeploymentRecord, Vec<JournalEntry>)>, StoreError> {
        deployments::unfinished(self, service)
    }

    fn deployment(
        &self,
        id: DeploymentId,
    ) -> Result<Option<(DeploymentRecord, Vec<JournalEntry>)>, StoreError> {
        deployments::with_journal(self, id)
    }

    fn history(
        &self,
        service: Option<&Name>,
        limit: usize,
    ) -> Result<Vec<DeploymentRecord>, StoreError> {
        deployments::history(self, service, limit)
    }

    fn put_instance(&self, instance: &Instance, state: InstanceState) -> Result<(), StoreError> {
        instances::put(self, instance, state)
    }

    fn set_instance_state(&self, id: &str, state: InstanceState) -> Result<(), StoreError> {
        instances::set_state(self, id, state)
    }

    fn service(&self, service: &Name) -> Result<ServiceRecord, StoreError> {
        instances::service(self, service)
    }

    fn activate(&self, service: &Name, id: DeploymentId) -> Result<(), StoreError> {
        instances::activate(self, service, id)
    }

    fn put_control(
        &self,
        id: DeploymentId,
        control: Control,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        controls::put(self, id, control, at_ms)
    }

    fn take_control(&self, id: DeploymentId) -> Result<Option<Control>, StoreError> {
        controls::take(self, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_names_the_path_when_its_directory_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir").join("state.db");
        let err = SqliteStore::open(&path).unwrap_err();
        let expected = format!("opening {}: ", path.display());
        assert!(err.0.starts_with(&expected), "{err}");
        assert!(!err.0.ends_with('.'), "{err}");
    }

    #[test]
    fn files_use_wal_busy_timeout_and_foreign_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        let pragma = |name: &str| -> String {
            store
                .conn
                .pragma_query_value(None, name, |row| row.get::<_, rusqlite::types::Value>(0))
                .map(|v| format!("{v:?}"))
                .unwrap()
        };
        assert_eq!(pragma("journal_mode"), r#"Text("wal")"#);
        assert_eq!(pragma("busy_timeout"), "Integer(5000)");
        assert_eq!(pragma("foreign_keys"), "Integer(1)");
    }

    /// Two processes writing at once: the second must wait for the first's transaction, not
    /// fail with "database is locked".
    #[test]
    fn a_writer_waits_for_another_processs_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = SqliteStore::open(&path).unwrap();
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let holder = std::thread::spawn(move || {
            // Holds the write lock, not a wait for a condition: the store must outlast it.
            std::thread::sleep(Duration::from_millis(300));
            other.execute_batch("COMMIT").unwrap();
        });
        let taken = store.try_lock(&fixtures::lock("web", 1, 1), None);
        holder.join().unwrap();
        assert_eq!(taken, Ok(Ok(())));
    }

    #[test]
    fn migration_is_idempotent_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let first = SqliteStore::open(&path).unwrap();
        assert_eq!(first.schema_version().unwrap(), schema::CURRENT);
        let id = first.begin(&fixtures::deployment("web", "v1")).unwrap();
        drop(first);

        let second = SqliteStore::open(&path).unwrap();
        assert_eq!(second.schema_version().unwrap(), schema::CURRENT);
        let (record, _) = second
            .deployment(id)
            .unwrap()
            .expect("data survives a reopen");
        assert_eq!(record.to_version.as_str(), "v1");
    }

    #[test]
    fn a_database_from_a_newer_switchyard_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        drop(SqliteStore::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", schema::CURRENT + 1)
            .unwrap();
        drop(conn);
        let err = SqliteStore::open(&path).unwrap_err();
        assert!(err.0.contains("newer"), "{err}");
        assert!(err.0.contains(&path.display().to_string()), "{err}");
    }
}
