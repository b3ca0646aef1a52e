//! The contract of instances and slots: `put_instance` (an upsert by id),
//! `set_instance_state`, `service` (the active slot and the retained ones newest first, one
//! per deployment, replicas in order) and `activate`.

use switchyard_engine::{Instance, InstanceState, ServiceRecord, Store};

use crate::fixtures::{deployment, instance, name};

use InstanceState::{Active, Removed, Retained, Starting};

contract!(
    put_instance_upserts_by_id,
    set_instance_state_moves_an_instance_between_slots,
    set_instance_state_on_an_unknown_id_is_an_error,
    service_groups_slots_by_deployment_newest_first_replicas_in_order,
    starting_and_removed_instances_are_not_slots,
    two_active_deployments_resolve_to_the_newest,
    a_slot_is_grouped_by_the_deployment_it_serves_in_not_its_origin,
    activate_retains_the_old_slot_and_activates_the_new,
    activate_brings_a_retained_slot_back_for_a_rollback,
    activate_leaves_removed_instances_removed,
    activate_with_nothing_to_activate_is_an_error_and_changes_nothing,
    activate_touches_only_its_own_service,
    activating_a_deployment_never_begun_is_an_error,
);

/// Deployment `v` of `service` begun, its `replicas` put in `state` in reverse replica order
/// and with ids sorting against it, so reads must sort by replica themselves.
fn deploy(
    store: &impl Store,
    service: &str,
    v: &str,
    replicas: u16,
    state: InstanceState,
) -> Vec<Instance> {
    let id = store.begin(&deployment(service, v)).unwrap();
    let instances: Vec<Instance> = (0..replicas)
        .map(|r| {
            instance(
                &format!("{service}-{v}-{}", 9 - r),
                service,
                v,
                id,
                r,
                4000 + r,
            )
        })
        .collect();
    for i in instances.iter().rev() {
        store.put_instance(i, state).unwrap();
    }
    instances
}

/// The active slot's instances and each retained slot's, as `service` reads them.
fn slots(store: &impl Store, service: &str) -> (Option<Vec<Instance>>, Vec<Vec<Instance>>) {
    let record = store.service(&name(service)).unwrap();
    let retained = record.retained.into_iter().map(|s| s.instances).collect();
    (record.active.map(|s| s.instances), retained)
}

fn put_instance_upserts_by_id(store: &impl Store) {
    let mut i = deploy(store, "web", "v1", 1, Active).remove(0);
    i.host_port = 5555;
    store.put_instance(&i, Active).unwrap();
    assert_eq!(slots(store, "web"), (Some(vec![i.clone()]), vec![]));
    store.put_instance(&i, Retained).unwrap();
    assert_eq!(slots(store, "web"), (None, vec![vec![i]]));
}

fn set_instance_state_moves_an_instance_between_slots(store: &impl Store) {
    let v1 = deploy(store, "web", "v1", 2, Active);
    store.set_instance_state(&v1[0].id, Retained).unwrap();
    assert_eq!(
        slots(store, "web"),
        (Some(vec![v1[1].clone()]), vec![vec![v1[0].clone()]])
    );
    store.set_instance_state(&v1[0].id, Removed).unwrap();
    assert_eq!(slots(store, "web"), (Some(vec![v1[1].clone()]), vec![]));
    store.set_instance_state(&v1[0].id, Active).unwrap();
    assert_eq!(slots(store, "web"), (Some(v1), vec![]));
}

/// Regression: MemStore ignored an id it never saw; SQLite says there is no such instance,
/// so an engine test marking a wrong id would pass on the fake only.
fn set_instance_state_on_an_unknown_id_is_an_error(store: &impl Store) {
    let v1 = deploy(store, "web", "v1", 1, Active);
    assert!(store.set_instance_state("nope", Removed).is_err());
    assert_eq!(slots(store, "web"), (Some(v1), vec![]));
}

fn service_groups_slots_by_deployment_newest_first_replicas_in_order(store: &impl Store) {
    assert_eq!(
        store.service(&name("web")).unwrap(),
        ServiceRecord::default()
    );
    let v1 = deploy(store, "web", "v1", 3, Retained);
    let v2 = deploy(store, "web", "v2", 2, Retained);
    let v3 = deploy(store, "web", "v3", 3, Active);
    let record = store.service(&name("web")).unwrap();
    let active = record.active.clone().expect("v3 active");
    assert_eq!(
        (active.version.as_str(), active.color, active.deployment),
        ("v3", v3[0].color, v3[0].deployment)
    );
    let retained: Vec<(&str, i64)> = record
        .retained
        .iter()
        .map(|s| (s.version.as_str(), s.deployment))
        .collect();
    assert_eq!(
        retained,
        [("v2", v2[0].deployment), ("v1", v1[0].deployment)]
    );
    assert_eq!(slots(store, "web"), (Some(v3), vec![v2, v1]));
}

fn starting_and_removed_instances_are_not_slots(store: &impl Store) {
    deploy(store, "web", "v1", 1, Removed);
    deploy(store, "web", "v2", 2, Starting);
    assert_eq!(
        store.service(&name("web")).unwrap(),
        ServiceRecord::default()
    );
}

fn two_active_deployments_resolve_to_the_newest(store: &impl Store) {
    deploy(store, "web", "v1", 1, Active);
    let v2 = deploy(store, "web", "v2", 1, Active);
    assert_eq!(slots(store, "web"), (Some(v2), vec![]));
}

/// A rollback restarts an instance in a new deployment: it serves there, created elsewhere.
fn a_slot_is_grouped_by_the_deployment_it_serves_in_not_its_origin(store: &impl Store) {
    let v1 = deploy(store, "web", "v1", 2, Retained);
    let back = store.begin(&deployment("web", "v1")).unwrap();
    let restarted: Vec<Instance> = v1
        .iter()
        .map(|i| Instance {
            deployment: back,
            ..i.clone()
        })
        .collect();
    store.put_instance(&restarted[1], Active).unwrap();
    store.put_instance(&restarted[0], Active).unwrap();
    let active = store.service(&name("web")).unwrap().active.unwrap();
    assert_eq!((active.deployment, &active.instances), (back, &restarted));
    assert!(active
        .instances
        .iter()
        .all(|i| i.origin == v1[0].deployment));
}

fn activate_retains_the_old_slot_and_activates_the_new(store: &impl Store) {
    let v1 = deploy(store, "web", "v1", 2, Starting);
    store.activate(&name("web"), v1[0].deployment).unwrap();
    assert_eq!(slots(store, "web"), (Some(v1.clone()), vec![]));

    let v2 = deploy(store, "web", "v2", 2, Starting);
    store.activate(&name("web"), v2[0].deployment).unwrap();
    let v3 = deploy(store, "web", "v3", 1, Starting);
    store.activate(&name("web"), v3[0].deployment).unwrap();
    assert_eq!(
        slots(store, "web"),
        (Some(v3.clone()), vec![v2.clone(), v1.clone()])
    );

    // Activating the active deployment again changes nothing.
    store.activate(&name("web"), v3[0].deployment).unwrap();
    assert_eq!(slots(store, "web"), (Some(v3), vec![v2, v1]));
}

fn activate_brings_a_retained_slot_back_for_a_rollback(store: &impl Store) {
    let v1 = deploy(store, "web", "v1", 1, Starting);
    store.activate(&name("web"), v1[0].deployment).unwrap();
    let v2 = deploy(store, "web", "v2", 1, Starting);
    store.activate(&name("web"), v2[0].deployment).unwrap();
    store.activate(&name("web"), v1[0].deployment).unwrap();
    assert_eq!(slots(store, "web"), (Some(v1), vec![v2]));
}

/// Removed instances stay removed, whether the activated deployment's or the old slot's.
fn activate_leaves_removed_instances_removed(store: &impl Store) {
    let v1 = deploy(store, "web", "v1", 2, Active);
    store.set_instance_state(&v1[1].id, Removed).unwrap();
    let v2 = deploy(store, "web", "v2", 2, Starting);
    store.set_instance_state(&v2[0].id, Removed).unwrap();
    store.activate(&name("web"), v2[0].deployment).unwrap();
    assert_eq!(
        slots(store, "web"),
        (Some(vec![v2[1].clone()]), vec![vec![v1[0].clone()]])
    );
}

/// Regression: MemStore retained the active slot and returned Ok, leaving the service with
/// no active slot; SQLite refuses and rolls back.
fn activate_with_nothing_to_activate_is_an_error_and_changes_nothing(store: &impl Store) {
    let v1 = deploy(store, "web", "v1", 1, Starting);
    store.activate(&name("web"), v1[0].deployment).unwrap();
    let removed = deploy(store, "web", "v2", 1, Removed);
    let empty = store.begin(&deployment("web", "v3")).unwrap();
    let api = deploy(store, "api", "v1", 1, Starting);
    for id in [removed[0].deployment, empty, api[0].deployment] {
        assert!(store.activate(&name("web"), id).is_err(), "deployment {id}");
        assert_eq!(
            slots(store, "web"),
            (Some(v1.clone()), vec![]),
            "deployment {id}"
        );
    }
}

fn activate_touches_only_its_own_service(store: &impl Store) {
    let api = deploy(store, "api", "v1", 1, Active);
    let web = deploy(store, "web", "v1", 1, Starting);
    store.activate(&name("web"), web[0].deployment).unwrap();
    assert_eq!(slots(store, "api"), (Some(api), vec![]));
    assert_eq!(slots(store, "web"), (Some(web), vec![]));
}

/// Regression: MemStore activated instances under a deployment id it never gave out;
/// SQLite's foreign key from `services` to `deployments` refuses to make it the active one.
fn activating_a_deployment_never_begun_is_an_error(store: &impl Store) {
    let v1 = deploy(store, "web", "v1", 1, Active);
    let stray = instance("stray", "web", "v2", v1[0].deployment + 1, 0, 4100);
    store.put_instance(&stray, Starting).unwrap();
    assert!(store.activate(&name("web"), stray.deployment).is_err());
    assert_eq!(slots(store, "web"), (Some(v1), vec![]));
}
