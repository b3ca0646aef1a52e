//! Promote and abort requests from the CLI to a running deployment: [`put`] and [`take`].
//! One row per deployment; a later request replaces an earlier one.

use rusqlite::{params, OptionalExtension};
use switchyard_engine::{Control, DeploymentId, StoreError};

use crate::SqliteStore;

pub(crate) fn put(
    store: &SqliteStore,
    id: DeploymentId,
    control: Control,
    at_ms: i64,
) -> Result<(), StoreError> {
    let doing = format!("asking deployment {id} to {}", control.as_str());
    store
        .conn
        .execute(
            "INSERT INTO controls (deployment, action, at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (deployment) DO UPDATE SET action = excluded.action, at_ms = excluded.at_ms",
            params![id, control.as_str(), at_ms],
        )
        .map_err(|e| store.error(&doing, e))?;
    Ok(())
}

pub(crate) fn take(store: &SqliteStore, id: DeploymentId) -> Result<Option<Control>, StoreError> {
    let doing = format!("reading requests for deployment {id}");
    let tx = store.immediate(&doing)?;
    let action: Option<String> = tx
        .query_row(
            "SELECT action FROM controls WHERE deployment = ?1",
            params![id],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| store.error(&doing, e))?;
    tx.execute("DELETE FROM controls WHERE deployment = ?1", params![id])
        .map_err(|e| store.error(&doing, e))?;
    tx.commit().map_err(|e| store.error(&doing, e))?;
    action
        .map(|a| {
            Control::parse(&a).ok_or_else(|| {
                store.error(
                    &doing,
                    format!("table controls, column action: unexpected value {a:?}"),
                )
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use switchyard_engine::{Color, DeployKind, Name, NewDeployment, Store, Version};

    use super::*;

    #[test]
    fn a_request_is_taken_once_and_a_later_one_replaces_it() {
        let store = SqliteStore::open_in_memory().unwrap();
        let id = store
            .begin(&NewDeployment {
                service: Name::parse("web").unwrap(),
                kind: DeployKind::Deploy,
                strategy: "canary".into(),
                from_version: None,
                to_version: Version::parse("v2").unwrap(),
                color: Color::Green,
                who: "t".into(),
                started_ms: 1,
            })
            .unwrap();
        assert_eq!(store.take_control(id).unwrap(), None);
        store.put_control(id, Control::Promote, 2).unwrap();
        store.put_control(id, Control::Abort, 3).unwrap();
        assert_eq!(store.take_control(id).unwrap(), Some(Control::Abort));
        assert_eq!(store.take_control(id).unwrap(), None, "taken once");
    }
}
