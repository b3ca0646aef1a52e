//! The contract of the deploy lock: `try_lock` (free, held, a stale holder replaced only
//! exactly), `heartbeat` and `unlock` by the holder's pid alone, `lock`, and `begin` filling
//! in the lock's deployment.

use switchyard_engine::Store;

use crate::fixtures::{deployment, lock, name};

contract!(
    a_free_lock_is_taken_and_read_back,
    a_held_lock_is_refused_with_its_holder,
    locks_of_different_services_are_independent,
    a_stale_holder_is_replaced_exactly_once,
    a_replace_that_does_not_match_the_holder_is_refused,
    a_replace_ignores_the_deployment_begin_filled_in,
    a_replace_of_a_free_lock_takes_it,
    heartbeat_renews_only_the_holders_lock,
    unlock_releases_only_the_holders_lock,
    begin_records_the_deployment_on_the_lock,
);

fn a_free_lock_is_taken_and_read_back(store: &impl Store) {
    assert_eq!(store.lock(&name("web")).unwrap(), None);
    let mine = lock("web", 100, 1_000);
    assert_eq!(store.try_lock(&mine, None).unwrap(), Ok(()));
    assert_eq!(store.lock(&name("web")).unwrap(), Some(mine));
}

fn a_held_lock_is_refused_with_its_holder(store: &impl Store) {
    let first = lock("web", 100, 1_000);
    store.try_lock(&first, None).unwrap().unwrap();
    let refused = store.try_lock(&lock("web", 200, 2_000), None).unwrap();
    assert_eq!(refused, Err(first.clone()));
    assert_eq!(store.lock(&name("web")).unwrap(), Some(first));
}

fn locks_of_different_services_are_independent(store: &impl Store) {
    let web = lock("web", 100, 1_000);
    store.try_lock(&web, None).unwrap().unwrap();
    let api = lock("api", 200, 1_000);
    assert_eq!(store.try_lock(&api, None).unwrap(), Ok(()));
    assert_eq!(store.lock(&name("web")).unwrap(), Some(web));
    assert_eq!(store.lock(&name("api")).unwrap(), Some(api));
}

fn a_stale_holder_is_replaced_exactly_once(store: &impl Store) {
    let stale = lock("web", 100, 1_000);
    store.try_lock(&stale, None).unwrap().unwrap();
    let mine = lock("web", 200, 2_000);
    assert_eq!(store.try_lock(&mine, Some(&stale)).unwrap(), Ok(()));
    assert_eq!(store.lock(&name("web")).unwrap(), Some(mine.clone()));

    // A second process that judged the same holder stale comes too late.
    let late = lock("web", 300, 2_001);
    assert_eq!(store.try_lock(&late, Some(&stale)).unwrap(), Err(mine));
}

fn a_replace_that_does_not_match_the_holder_is_refused(store: &impl Store) {
    let stale = lock("web", 100, 1_000);
    store.try_lock(&stale, None).unwrap().unwrap();
    let mine = lock("web", 200, 2_000);

    let other_pid = lock("web", 101, 1_000);
    let other_host = super::with(&stale, |l| l.host = "build-2".to_owned());
    let other_acquired = super::with(&stale, |l| l.acquired_ms = 999);
    for wrong in [other_pid, other_host, other_acquired] {
        let refused = store.try_lock(&mine, Some(&wrong)).unwrap();
        assert_eq!(refused, Err(stale.clone()), "replacing {wrong:?}");
    }

    // The holder heartbeat after we judged it stale: it is alive, so it keeps the lock.
    store.heartbeat(&name("web"), 100, 1_500).unwrap();
    let fresh = store.lock(&name("web")).unwrap().unwrap();
    assert_eq!(store.try_lock(&mine, Some(&stale)).unwrap(), Err(fresh));
}

/// Regression: MemStore compared the whole lock, `deployment` included, so a stale holder
/// seen before its `begin` could not be replaced after it; SQLite leaves the column out.
fn a_replace_ignores_the_deployment_begin_filled_in(store: &impl Store) {
    let stale = lock("web", 100, 1_000);
    store.try_lock(&stale, None).unwrap().unwrap();
    store.begin(&deployment("web", "v2")).unwrap();
    assert_ne!(store.lock(&name("web")).unwrap(), Some(stale.clone()));

    let mine = lock("web", 200, 2_000);
    assert_eq!(store.try_lock(&mine, Some(&stale)).unwrap(), Ok(()));
    assert_eq!(store.lock(&name("web")).unwrap(), Some(mine));
}

/// The stale holder unlocked meanwhile: the lock is free, so it is taken.
fn a_replace_of_a_free_lock_takes_it(store: &impl Store) {
    let stale = lock("web", 100, 1_000);
    let mine = lock("web", 200, 2_000);
    assert_eq!(store.try_lock(&mine, Some(&stale)).unwrap(), Ok(()));
    assert_eq!(store.lock(&name("web")).unwrap(), Some(mine));
}

fn heartbeat_renews_only_the_holders_lock(store: &impl Store) {
    let held = lock("web", 100, 1_000);
    store.try_lock(&held, None).unwrap().unwrap();
    store.heartbeat(&name("web"), 999, 5_000).unwrap();
    store.heartbeat(&name("api"), 100, 5_000).unwrap();
    assert_eq!(store.lock(&name("web")).unwrap(), Some(held.clone()));
    assert_eq!(store.lock(&name("api")).unwrap(), None);

    store.heartbeat(&name("web"), 100, 5_000).unwrap();
    let renewed = super::with(&held, |l| l.heartbeat_ms = 5_000);
    assert_eq!(store.lock(&name("web")).unwrap(), Some(renewed));
}

fn unlock_releases_only_the_holders_lock(store: &impl Store) {
    let held = lock("web", 100, 1_000);
    store.try_lock(&held, None).unwrap().unwrap();
    store.unlock(&name("web"), 999).unwrap();
    store.unlock(&name("api"), 100).unwrap();
    assert_eq!(store.lock(&name("web")).unwrap(), Some(held));

    store.unlock(&name("web"), 100).unwrap();
    assert_eq!(store.lock(&name("web")).unwrap(), None);
    let next = lock("web", 200, 2_000);
    assert_eq!(store.try_lock(&next, None).unwrap(), Ok(()));
}

fn begin_records_the_deployment_on_the_lock(store: &impl Store) {
    store.try_lock(&lock("web", 100, 1), None).unwrap().unwrap();
    let id = store.begin(&deployment("web", "v1")).unwrap();
    let held = store.lock(&name("web")).unwrap().unwrap();
    assert_eq!((held.pid, held.deployment), (100, Some(id)));
    // No lock row for api: begin must not create one.
    store.begin(&deployment("api", "v1")).unwrap();
    assert_eq!(store.lock(&name("api")).unwrap(), None);
}
