//! The `instances` and `services` tables: each [`Instance`] with its [`InstanceState`], and
//! the [`ServiceRecord`] (active [`Slot`] and retained slots) built from them.
//!
//! Which slot is live is decided here, by `activate`, never by asking a runtime.

use rusqlite::params;
use switchyard_engine::{
    Color, DeploymentId, Instance, InstanceState, Name, ServiceRecord, Slot, StoreError, Version,
};

use crate::{SqliteStore, NOW_MS};

const COLUMNS: &str =
    "id, name, service, version, color, deployment, replica, host_port, state, origin";

/// An `instances` row as SQLite returns it, before its columns are checked.
struct Row {
    id: String,
    name: String,
    service: String,
    version: String,
    color: String,
    deployment: i64,
    replica: i64,
    host_port: i64,
    state: String,
    origin: i64,
}

pub(crate) fn put(
    store: &SqliteStore,
    instance: &Instance,
    state: InstanceState,
) -> Result<(), StoreError> {
    store
        .conn
        .execute(
            &format!(
                "INSERT INTO instances ({COLUMNS}, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, {NOW_MS})
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name,
                     service = excluded.service, version = excluded.version,
                     color = excluded.color, deployment = excluded.deployment,
                     replica = excluded.replica, host_port = excluded.host_port,
                     state = excluded.state, origin = excluded.origin,
                     updated_ms = excluded.updated_ms"
            ),
            params![
                instance.id,
                instance.name,
                instance.service.as_str(),
                instance.version.as_str(),
                instance.color.as_str(),
                instance.deployment,
                instance.replica,
                instance.host_port,
                state.as_str(),
                instance.origin,
            ],
        )
        .map_err(|e| store.error(format_args!("recording instance {}", instance.name), e))?;
    Ok(())
}

/// Marks a recorded instance; an id the store never saw is an error, not a silent no-op.
pub(crate) fn set_state(
    store: &SqliteStore,
    id: &str,
    state: InstanceState,
) -> Result<(), StoreError> {
    let doing = format!("marking instance {id} {}", state.as_str());
    let changed = store
        .conn
        .execute(
            &format!("UPDATE instances SET state = ?2, updated_ms = {NOW_MS} WHERE id = ?1"),
            params![id, state.as_str()],
        )
        .map_err(|e| store.error(&doing, e))?;
    if changed == 0 {
        return Err(store.error(&doing, "no such instance"));
    }
    Ok(())
}

pub(crate) fn service(store: &SqliteStore, service: &Name) -> Result<ServiceRecord, StoreError> {
    let rows = select(
        store,
        &format!("reading the slots of {service}"),
        &format!(
            "SELECT {COLUMNS} FROM instances WHERE service = ?1 AND state IN (?2, ?3)
             ORDER BY deployment DESC, replica"
        ),
        params![
            service.as_str(),
            InstanceState::Active.as_str(),
            InstanceState::Retained.as_str()
        ],
    )?;
    let (active, retained): (Vec<_>, Vec<_>) = rows
        .into_iter()
        .partition(|(_, state)| *state == InstanceState::Active);
    let strip = |rows: Vec<(Instance, InstanceState)>| rows.into_iter().map(|(i, _)| i);
    Ok(ServiceRecord {
        // At most one deployment is active; should a crash have left two, the newest wins.
        active: slots(strip(active)).into_iter().next(),
        retained: slots(strip(retained)),
    })
}

/// Groups instances, already sorted by deployment (newest first) then replica, into slots.
fn slots(instances: impl Iterator<Item = Instance>) -> Vec<Slot> {
    let mut slots: Vec<Slot> = Vec::new();
    for instance in instances {
        match slots.last_mut() {
            Some(slot) if slot.deployment == instance.deployment => slot.instances.push(instance),
            _ => slots.push(Slot {
                version: instance.version.clone(),
                color: instance.color,
                deployment: instance.deployment,
                instances: vec![instance],
            }),
        }
    }
    slots
}

pub(crate) fn activate(
    store: &SqliteStore,
    service: &Name,
    id: DeploymentId,
) -> Result<(), StoreError> {
    let doing = format!("activating deployment {id} of {service}");
    let fail = |e: rusqlite::Error| store.error(&doing, e);
    let tx = store.immediate(&doing)?;
    let (active, retained, starting) = (
        InstanceState::Active.as_str(),
        InstanceState::Retained.as_str(),
        InstanceState::Starting.as_str(),
    );
    tx.execute(
        &format!(
            "UPDATE instances SET state = ?2, updated_ms = {NOW_MS}
             WHERE service = ?1 AND state = ?3"
        ),
        params![service.as_str(), retained, active],
    )
    .map_err(fail)?;
    let promoted = tx
        .execute(
            &format!(
                "UPDATE instances SET state = ?3, updated_ms = {NOW_MS}
                 WHERE service = ?1 AND deployment = ?2 AND state IN (?4, ?5)"
            ),
            params![service.as_str(), id, active, starting, retained],
        )
        .map_err(fail)?;
    if promoted == 0 {
        // Committing would leave the service with no active slot at all.
        return Err(store.error(&doing, "it has no starting or retained instances"));
    }
    tx.execute(
        &format!(
            "INSERT INTO services (name, active_deployment, updated_ms) VALUES (?1, ?2, {NOW_MS})
             ON CONFLICT (name) DO UPDATE SET active_deployment = excluded.active_deployment,
                 updated_ms = excluded.updated_ms"
        ),
        params![service.as_str(), id],
    )
    .map_err(fail)?;
    tx.commit().map_err(fail)
}

fn select(
    store: &SqliteStore,
    doing: &str,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<(Instance, InstanceState)>, StoreError> {
    let mut stmt = store.conn.prepare(sql).map_err(|e| store.error(doing, e))?;
    let rows = stmt
        .query_map(params, |row| {
            Ok(Row {
                id: row.get(0)?,
                name: row.get(1)?,
                service: row.get(2)?,
                version: row.get(3)?,
                color: row.get(4)?,
                deployment: row.get(5)?,
                replica: row.get(6)?,
                host_port: row.get(7)?,
                state: row.get(8)?,
                origin: row.get(9)?,
            })
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(|e| store.error(doing, e))?;
    rows.into_iter().map(|row| decode(store, row)).collect()
}

fn decode(store: &SqliteStore, row: Row) -> Result<(Instance, InstanceState), StoreError> {
    let table = "instances";
    let instance = Instance {
        id: row.id,
        name: row.name,
        service: store.decode(table, "service", row.service, |s| Name::parse(s).ok())?,
        version: store.decode(table, "version", row.version, |s| Version::parse(s).ok())?,
        color: store.decode(table, "color", row.color, |s| Color::parse(s))?,
        deployment: row.deployment,
        origin: row.origin,
        replica: store.decode(table, "replica", row.replica, |n| u16::try_from(*n).ok())?,
        host_port: store.decode(table, "host_port", row.host_port, |n| {
            u16::try_from(*n).ok()
        })?,
    };
    let state = store.decode(table, "state", row.state, |s| InstanceState::parse(s))?;
    Ok((instance, state))
}

#[cfg(test)]
mod tests {
    use switchyard_engine::Store;

    use super::*;
    use crate::fixtures::{deployment, instance, name};

    /// The instances of deployment `id` in state `Starting`, by replica.
    fn starting(store: &SqliteStore, id: DeploymentId) -> Result<Vec<Instance>, StoreError> {
        let rows = select(
            store,
            &format!("reading the starting instances of deployment {id}"),
            &format!(
                "SELECT {COLUMNS} FROM instances WHERE deployment = ?1 AND state = ?2 ORDER BY replica"
            ),
            params![id, InstanceState::Starting.as_str()],
        )?;
        Ok(rows.into_iter().map(|(instance, _)| instance).collect())
    }

    /// A store with deployment `d` of web at version `v`, its replicas put in `state`.
    fn deploy(store: &SqliteStore, v: &str, replicas: u16, state: InstanceState) -> Vec<Instance> {
        let id = store.begin(&deployment("web", v)).unwrap();
        let mut instances: Vec<Instance> = (0..replicas)
            .map(|r| instance(&format!("{v}-r{r}"), "web", v, id, r, 4000 + r))
            .collect();
        // Put in reverse replica order, so the tests see that reads sort by replica.
        for i in instances.iter().rev() {
            store.put_instance(i, state).unwrap();
        }
        instances.sort_by_key(|i| i.replica);
        instances
    }

    #[test]
    fn put_instance_upserts_by_id() {
        let store = SqliteStore::open_in_memory().unwrap();
        let mut i = deploy(&store, "v1", 1, InstanceState::Starting).remove(0);
        assert_eq!(starting(&store, i.deployment).unwrap(), [i.clone()]);
        i.host_port = 5555;
        store.put_instance(&i, InstanceState::Starting).unwrap();
        assert_eq!(starting(&store, i.deployment).unwrap(), [i.clone()]);
        store.put_instance(&i, InstanceState::Active).unwrap();
        assert!(starting(&store, i.deployment).unwrap().is_empty());
    }

    #[test]
    fn starting_lists_only_that_deployments_starting_instances_by_replica() {
        let store = SqliteStore::open_in_memory().unwrap();
        let v1 = deploy(&store, "v1", 2, InstanceState::Starting);
        let v2 = deploy(&store, "v2", 3, InstanceState::Starting);
        store
            .set_instance_state(&v2[1].id, InstanceState::Removed)
            .unwrap();
        assert_eq!(starting(&store, v1[0].deployment).unwrap(), v1);
        assert_eq!(
            starting(&store, v2[0].deployment).unwrap(),
            [v2[0].clone(), v2[2].clone()]
        );
    }

    #[test]
    fn set_instance_state_on_an_unknown_id_is_an_error() {
        let store = SqliteStore::open_in_memory().unwrap();
        let err = store
            .set_instance_state("nope", InstanceState::Removed)
            .unwrap_err();
        assert_eq!(
            err.0,
            "marking instance nope removed in :memory:: no such instance"
        );
    }

    #[test]
    fn activate_retains_the_old_slot_and_activates_the_new() {
        let store = SqliteStore::open_in_memory().unwrap();
        assert_eq!(
            store.service(&name("web")).unwrap(),
            ServiceRecord::default()
        );

        let v1 = deploy(&store, "v1", 2, InstanceState::Starting);
        store.activate(&name("web"), v1[0].deployment).unwrap();
        let record = store.service(&name("web")).unwrap();
        let active = record.active.expect("v1 active");
        assert_eq!(
            (active.version.as_str(), active.deployment),
            ("v1", v1[0].deployment)
        );
        assert_eq!(active.color, v1[0].color);
        assert_eq!(active.instances, v1);
        assert!(record.retained.is_empty());
        assert!(starting(&store, v1[0].deployment).unwrap().is_empty());

        let v2 = deploy(&store, "v2", 2, InstanceState::Starting);
        store.activate(&name("web"), v2[0].deployment).unwrap();
        let v3 = deploy(&store, "v3", 1, InstanceState::Starting);
        store.activate(&name("web"), v3[0].deployment).unwrap();

        let record = store.service(&name("web")).unwrap();
        assert_eq!(record.active.unwrap().instances, v3);
        let retained: Vec<(&str, &Vec<Instance>)> = record
            .retained
            .iter()
            .map(|s| (s.version.as_str(), &s.instances))
            .collect();
        assert_eq!(retained, [("v2", &v2), ("v1", &v1)], "newest first");
    }

    #[test]
    fn activate_brings_a_retained_slot_back_for_a_rollback() {
        let store = SqliteStore::open_in_memory().unwrap();
        let v1 = deploy(&store, "v1", 1, InstanceState::Starting);
        store.activate(&name("web"), v1[0].deployment).unwrap();
        let v2 = deploy(&store, "v2", 1, InstanceState::Starting);
        store.activate(&name("web"), v2[0].deployment).unwrap();

        store.activate(&name("web"), v1[0].deployment).unwrap();
        let record = store.service(&name("web")).unwrap();
        assert_eq!(record.active.unwrap().instances, v1);
        assert_eq!(record.retained.len(), 1);
        assert_eq!(record.retained[0].instances, v2);
    }

    #[test]
    fn activate_with_nothing_to_activate_changes_nothing() {
        let store = SqliteStore::open_in_memory().unwrap();
        let v1 = deploy(&store, "v1", 1, InstanceState::Starting);
        store.activate(&name("web"), v1[0].deployment).unwrap();
        let empty = store.begin(&deployment("web", "v2")).unwrap();
        let err = store.activate(&name("web"), empty).unwrap_err();
        assert!(err.0.contains("no starting or retained instances"), "{err}");
        let record = store.service(&name("web")).unwrap();
        assert_eq!(record.active.unwrap().instances, v1, "rolled back");
    }

    #[test]
    fn activate_touches_only_its_own_service() {
        let store = SqliteStore::open_in_memory().unwrap();
        let api = store.begin(&deployment("api", "v1")).unwrap();
        let api_instance = instance("api-r0", "api", "v1", api, 0, 4100);
        store
            .put_instance(&api_instance, InstanceState::Active)
            .unwrap();
        let v1 = deploy(&store, "v1", 1, InstanceState::Starting);
        store.activate(&name("web"), v1[0].deployment).unwrap();
        let api_record = store.service(&name("api")).unwrap();
        assert_eq!(api_record.active.unwrap().instances, [api_instance]);
    }

    #[test]
    fn removed_and_starting_instances_are_not_slots() {
        let store = SqliteStore::open_in_memory().unwrap();
        deploy(&store, "v1", 1, InstanceState::Removed);
        deploy(&store, "v2", 1, InstanceState::Starting);
        assert_eq!(
            store.service(&name("web")).unwrap(),
            ServiceRecord::default()
        );
    }

    #[test]
    fn two_active_deployments_resolve_to_the_newest() {
        let store = SqliteStore::open_in_memory().unwrap();
        deploy(&store, "v1", 1, InstanceState::Active);
        let v2 = deploy(&store, "v2", 1, InstanceState::Active);
        let record = store.service(&name("web")).unwrap();
        assert_eq!(record.active.unwrap().instances, v2);
        assert!(record.retained.is_empty());
    }

    #[test]
    fn a_corrupt_row_is_an_error_naming_table_and_column() {
        let store = SqliteStore::open_in_memory().unwrap();
        let v1 = deploy(&store, "v1", 1, InstanceState::Starting);
        store
            .conn
            .execute("UPDATE instances SET host_port = 70000", [])
            .unwrap();
        let err = starting(&store, v1[0].deployment).unwrap_err();
        assert!(err.0.contains("table instances, column host_port"), "{err}");
    }
}
