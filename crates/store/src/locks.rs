//! The `locks` table: one row per service being deployed, holding its [`Lock`].
//!
//! Taking a lock is a compare-and-swap inside `BEGIN IMMEDIATE`: the row is inserted if
//! absent, or overwritten only if it still equals the stale lock the caller judged dead.

use rusqlite::{params, Connection, OptionalExtension};
use switchyard_engine::{Lock, Name, StoreError};

use crate::SqliteStore;

const COLUMNS: &str = "service, pid, host, deployment, acquired_ms, heartbeat_ms";

/// A `locks` row as SQLite returns it, before its columns are checked.
struct Row {
    service: String,
    pid: i64,
    host: String,
    deployment: Option<i64>,
    acquired_ms: i64,
    heartbeat_ms: i64,
}

pub(crate) fn try_lock(
    store: &SqliteStore,
    lock: &Lock,
    replace: Option<&Lock>,
) -> Result<Result<(), Lock>, StoreError> {
    let doing = format!("taking the lock for {}", lock.service);
    let tx = store.immediate(&doing)?;
    let current = select(store, &tx, &lock.service, &doing)?;
    let write = match current {
        None => {
            "INSERT INTO locks (service, pid, host, deployment, acquired_ms, heartbeat_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
        }
        Some(held) if replace.is_some_and(|stale| same_holder(stale, &held)) => {
            "UPDATE locks SET pid = ?2, host = ?3, deployment = ?4, acquired_ms = ?5,
                 heartbeat_ms = ?6
             WHERE service = ?1"
        }
        // Dropping `tx` rolls back; nothing was written.
        Some(held) => return Ok(Err(held)),
    };
    tx.execute(
        write,
        params![
            lock.service.as_str(),
            lock.pid,
            lock.host,
            lock.deployment,
            lock.acquired_ms,
            lock.heartbeat_ms
        ],
    )
    .map_err(|e| store.error(&doing, e))?;
    tx.commit().map_err(|e| store.error(&doing, e))?;
    Ok(Ok(()))
}

/// Whether `held` is still exactly the lock the caller saw and judged stale. The
/// `deployment` column is left out: `begin` fills it in after the lock is taken.
fn same_holder(stale: &Lock, held: &Lock) -> bool {
    stale.service == held.service
        && stale.pid == held.pid
        && stale.host == held.host
        && stale.acquired_ms == held.acquired_ms
        && stale.heartbeat_ms == held.heartbeat_ms
}

pub(crate) fn heartbeat(
    store: &SqliteStore,
    service: &Name,
    pid: u32,
    now_ms: i64,
) -> Result<(), StoreError> {
    store
        .conn
        .execute(
            "UPDATE locks SET heartbeat_ms = ?3 WHERE service = ?1 AND pid = ?2",
            params![service.as_str(), pid, now_ms],
        )
        .map_err(|e| store.error(format_args!("renewing the lock for {service}"), e))?;
    Ok(())
}

pub(crate) fn unlock(store: &SqliteStore, service: &Name, pid: u32) -> Result<(), StoreError> {
    store
        .conn
        .execute(
            "DELETE FROM locks WHERE service = ?1 AND pid = ?2",
            params![service.as_str(), pid],
        )
        .map_err(|e| store.error(format_args!("releasing the lock for {service}"), e))?;
    Ok(())
}

pub(crate) fn get(store: &SqliteStore, service: &Name) -> Result<Option<Lock>, StoreError> {
    select(
        store,
        &store.conn,
        service,
        &format!("reading the lock for {service}"),
    )
}

fn select(
    store: &SqliteStore,
    conn: &Connection,
    service: &Name,
    doing: &str,
) -> Result<Option<Lock>, StoreError> {
    let row = conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM locks WHERE service = ?1"),
            [service.as_str()],
            |row| {
                Ok(Row {
                    service: row.get(0)?,
                    pid: row.get(1)?,
                    host: row.get(2)?,
                    deployment: row.get(3)?,
                    acquired_ms: row.get(4)?,
                    heartbeat_ms: row.get(5)?,
                })
            },
        )
        .optional()
        .map_err(|e| store.error(doing, e))?;
    row.map(|row| decode(store, row)).transpose()
}

fn decode(store: &SqliteStore, row: Row) -> Result<Lock, StoreError> {
    Ok(Lock {
        service: store.decode("locks", "service", row.service, |s| Name::parse(s).ok())?,
        pid: store.decode("locks", "pid", row.pid, |n| u32::try_from(*n).ok())?,
        host: row.host,
        deployment: row.deployment,
        acquired_ms: row.acquired_ms,
        heartbeat_ms: row.heartbeat_ms,
    })
}

#[cfg(test)]
mod tests {
    use switchyard_engine::Store;

    use crate::fixtures::{lock, name};
    use crate::SqliteStore;

    #[test]
    fn a_free_lock_is_taken_and_read_back() {
        let store = SqliteStore::open_in_memory().unwrap();
        assert_eq!(store.lock(&name("web")).unwrap(), None);
        let mine = lock("web", 100, 1_000);
        assert_eq!(store.try_lock(&mine, None).unwrap(), Ok(()));
        assert_eq!(store.lock(&name("web")).unwrap(), Some(mine));
    }

    #[test]
    fn a_held_lock_is_refused_with_its_holder() {
        let store = SqliteStore::open_in_memory().unwrap();
        let first = lock("web", 100, 1_000);
        store.try_lock(&first, None).unwrap().unwrap();
        let refused = store.try_lock(&lock("web", 200, 2_000), None).unwrap();
        assert_eq!(refused, Err(first.clone()));
        assert_eq!(store.lock(&name("web")).unwrap(), Some(first));
    }

    #[test]
    fn locks_of_different_services_are_independent() {
        let store = SqliteStore::open_in_memory().unwrap();
        store
            .try_lock(&lock("web", 100, 1_000), None)
            .unwrap()
            .unwrap();
        assert_eq!(
            store.try_lock(&lock("api", 200, 1_000), None).unwrap(),
            Ok(())
        );
    }

    #[test]
    fn a_stale_lock_is_replaced_only_if_unchanged() {
        let store = SqliteStore::open_in_memory().unwrap();
        let stale = lock("web", 100, 1_000);
        store.try_lock(&stale, None).unwrap().unwrap();

        // The holder heartbeat after we judged it stale: it is alive, so we must not take it.
        store.heartbeat(&name("web"), 100, 1_500).unwrap();
        let fresh = store.lock(&name("web")).unwrap().unwrap();
        let refused = store
            .try_lock(&lock("web", 200, 2_000), Some(&stale))
            .unwrap();
        assert_eq!(refused, Err(fresh.clone()));

        let mine = lock("web", 200, 2_000);
        assert_eq!(store.try_lock(&mine, Some(&fresh)).unwrap(), Ok(()));
        assert_eq!(store.lock(&name("web")).unwrap(), Some(mine));
    }

    #[test]
    fn heartbeat_and_unlock_by_another_pid_change_nothing() {
        let store = SqliteStore::open_in_memory().unwrap();
        let held = lock("web", 100, 1_000);
        store.try_lock(&held, None).unwrap().unwrap();

        store.heartbeat(&name("web"), 999, 5_000).unwrap();
        store.unlock(&name("web"), 999).unwrap();
        assert_eq!(store.lock(&name("web")).unwrap(), Some(held));

        store.heartbeat(&name("web"), 100, 5_000).unwrap();
        assert_eq!(
            store.lock(&name("web")).unwrap().unwrap().heartbeat_ms,
            5_000
        );
        store.unlock(&name("web"), 100).unwrap();
        assert_eq!(store.lock(&name("web")).unwrap(), None);
    }

    /// Two `deploy` processes on one state file: each has its own connection.
    #[test]
    fn a_second_connection_to_the_same_file_sees_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let first = SqliteStore::open(&path).unwrap();
        let second = SqliteStore::open(&path).unwrap();

        let held = lock("web", 100, 1_000);
        first.try_lock(&held, None).unwrap().unwrap();
        let refused = second.try_lock(&lock("web", 200, 1_001), None).unwrap();
        assert_eq!(refused, Err(held));

        first.unlock(&name("web"), 100).unwrap();
        assert_eq!(
            second.try_lock(&lock("web", 200, 1_002), None).unwrap(),
            Ok(())
        );
        assert_eq!(first.lock(&name("web")).unwrap().unwrap().pid, 200);
    }

    #[test]
    fn a_corrupt_row_is_an_error_naming_table_and_column() {
        let store = SqliteStore::open_in_memory().unwrap();
        store
            .conn
            .execute("INSERT INTO locks VALUES ('web', -1, 'h', NULL, 1, 1)", [])
            .unwrap();
        let err = store.lock(&name("web")).unwrap_err();
        assert!(err.0.contains("table locks, column pid"), "{err}");
    }
}
