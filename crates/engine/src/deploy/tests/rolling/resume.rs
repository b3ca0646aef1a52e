//! Rollouts killed after any journal step, and the review findings around resume and
//! restore: drained before stopped, a first rollout kept or dropped as it served, the store
//! left exactly as nginx serves, stops that fail.

use super::*;

/// Journal writes in a clean v1 -> v2 rollout of `kind`.
async fn journal_writes(kind: StrategyKind, surge: u16, unavailable: u16) -> usize {
    let w = rolling_world(kind, 3, surge, unavailable).await;
    let before = w.journal_steps().len();
    w.roll("v2").await.unwrap();
    w.journal_steps().len() - before
}

#[tokio::test(start_paused = true)]
async fn a_rollout_killed_after_any_step_is_finished_by_deploy_or_restored_by_rollback() {
    for (kind, surge, unavailable) in [(StrategyKind::Rolling, 1, 0), (StrategyKind::InPlace, 0, 1)]
    {
        let steps = journal_writes(kind, surge, unavailable).await;
        assert!(steps >= 20, "{kind:?}: {steps}");
        for n in 1..=steps {
            for then_rollback in [false, true] {
                let w = rolling_world(kind, 3, surge, unavailable).await;
                w.killed_during(n, w.roll("v2")).await;
                let ctx = format!("{kind:?} step {n} rollback {then_rollback}");
                let reloads = w.reloads();
                if then_rollback {
                    w.roll_back().await.unwrap_or_else(|e| panic!("{ctx}: {e}"));
                    // Killed after the flip: rollback goes back to v1 from a finished v2.
                    w.assert_consistent("v1");
                } else {
                    w.roll("v2").await.unwrap_or_else(|e| panic!("{ctx}: {e}"));
                    w.assert_consistent("v2");
                }
                w.assert_floor(reloads, 2);
                assert!(
                    w.runtime.peak_running() <= 3 + usize::from(surge),
                    "{ctx}: peak {}",
                    w.runtime.peak_running()
                );
                let history = w.store.history(None, 10).unwrap();
                assert!(
                    history.iter().all(|d| d.outcome != Outcome::Running),
                    "{ctx}"
                );
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn redeploying_the_live_version_rolls_fresh_replicas() {
    let w = rolling_world(StrategyKind::Rolling, 3, 1, 0).await;
    let before = w.runtime.running();
    let report = w.roll("v1").await.unwrap();
    w.assert_consistent("v1");
    assert_eq!(report.rollout.unwrap().batches.len(), 3);
    assert!(
        w.runtime.running().is_disjoint(&before),
        "every replica was replaced"
    );
}

/// Journal write number (1-based) of the first `step` in a clean v1 -> v2 rollout.
async fn nth_journal(step: &str) -> usize {
    let w = rolling_world(StrategyKind::Rolling, 3, 1, 0).await;
    let before = w.journal_steps().len();
    w.roll("v2").await.unwrap();
    w.step_number(before, step)
}

#[tokio::test(start_paused = true)]
async fn after_a_restore_the_store_is_what_nginx_serves() {
    // Review finding: a restore left stopped replicas `active`, and the next deploy kept
    // routing to them. Fewer replicas than the live slot, then a failed batch:
    let mut w = rolling_world(StrategyKind::Rolling, 4, 1, 0).await;
    w.spec.replicas = 3;
    w.fail_health("sy-web-green-d2-r1");
    w.roll("v2").await.unwrap_err();
    w.assert_consistent("v1");
    w.runtime.unhealthy_names.borrow_mut().clear();
    let reloads = w.reloads();
    w.roll("v3").await.unwrap();
    w.assert_consistent("v3");
    w.assert_floor(reloads, 3);

    // A redeploy of the live version that fails: the stopped old replica comes back.
    w.fail_health("sy-web-blue-d4-r1");
    w.roll("v3").await.unwrap_err();
    w.assert_consistent("v3");
    w.runtime.unhealthy_names.borrow_mut().clear();
    let reloads = w.reloads();
    w.roll("v4").await.unwrap();
    w.assert_consistent("v4");
    w.assert_floor(reloads, 3);
}

#[tokio::test(start_paused = true)]
async fn a_resumed_rollout_drains_before_it_stops_what_left_the_upstream() {
    // Review finding: killed right after `routed`, the resume stopped the replica the reload
    // took out without waiting for the workers that still routed to it.
    let n = nth_journal("routed").await;
    let w = rolling_world(StrategyKind::Rolling, 3, 1, 0).await;
    w.killed_during(n, w.roll("v2")).await;
    let from = w.shared.calls().len();
    w.roll("v2").await.unwrap();
    let calls = w.shared.calls()[from..].to_vec();
    let stop = calls
        .iter()
        .position(|c| c.starts_with("runtime.stop"))
        .unwrap();
    assert!(
        calls[..stop]
            .iter()
            .any(|c| c.starts_with("router.wait_drained")),
        "{calls:#?}"
    );
    w.assert_consistent("v2");
}

#[tokio::test(start_paused = true)]
async fn a_first_rollout_killed_after_traffic_moved_is_finished_not_torn_down() {
    // Review finding: with nothing to go back to, the resume removed the live replicas.
    let mut w = World::new();
    w.spec.strategy = StrategyKind::Rolling;
    let n = {
        let mut p = World::new();
        p.spec.strategy = StrategyKind::Rolling;
        p.roll("v1").await.unwrap();
        p.step_number(0, "routed")
    };
    w.killed_during(n, w.roll("v1")).await;
    let err = w.roll_back().await.unwrap_err();
    assert_eq!(err.exit_code(), 2, "nothing to roll back to: {err}");
    w.assert_consistent("v1");
}

#[tokio::test(start_paused = true)]
async fn rollback_after_in_place_swaps_the_shared_ports_whatever_the_strategy_now() {
    // Review finding: a blue-green or surging rollback restarted v1 on ports v2 held.
    for strategy in [StrategyKind::BlueGreen, StrategyKind::Rolling] {
        let mut w = rolling_world(StrategyKind::InPlace, 3, 0, 1).await;
        let ports = w.live_ports();
        w.roll("v2").await.unwrap();
        w.spec.strategy = strategy;
        w.spec.rolling.max_surge = 1;
        w.spec.rolling.max_unavailable = 0;
        let report = w
            .roll_back()
            .await
            .unwrap_or_else(|e| panic!("{strategy:?}: {e}"));
        assert_eq!(report.to.as_str(), "v1");
        w.assert_consistent("v1");
        assert_eq!(w.live_ports(), ports, "{strategy:?}");
    }
}

/// Kills a first rolling deploy of v1 (3 replicas) after its first `step` journal write.
async fn first_deploy_killed_after(step: &str) -> World {
    let first_deploy = || {
        let mut w = World::new();
        w.spec.replicas = 3;
        w.spec.strategy = StrategyKind::Rolling;
        w
    };
    let p = first_deploy();
    p.roll("v1").await.unwrap();
    let w = first_deploy();
    w.killed_during(p.step_number(0, step), w.roll("v1")).await;
    w
}

#[tokio::test(start_paused = true)]
async fn a_first_rollout_killed_before_traffic_moved_is_dropped_for_the_next_version() {
    // Second review: the forced finish re-ran a first deploy that never served.
    let w = first_deploy_killed_after("wait_healthy").await;
    w.runtime.unhealthy.borrow_mut().insert("v1".into());
    let from = w.shared.calls().len();
    w.roll("v2").await.unwrap();
    w.assert_consistent("v2");
    let restarted_v1 = w.shared.calls()[from..]
        .iter()
        .any(|c| c.starts_with("runtime.start sy-web-blue-d1"));
    assert!(!restarted_v1, "v1 never served: it is dropped, not retried");
}

#[tokio::test(start_paused = true)]
async fn a_live_first_rollout_whose_replica_fails_on_resume_keeps_what_serves() {
    // Second review: finishing it failed a batch and restore(None) removed the live replica.
    let w = first_deploy_killed_after("routed").await;
    w.fail_health("sy-web-blue-d1-r1");
    let err = w.roll("v1").await.unwrap_err();
    assert_eq!(err.exit_code(), 1, "{err}");
    let live = w.live_versions();
    assert!(
        !live.is_empty() && live.iter().all(|v| v == "v1"),
        "{live:?}"
    );
    let active = w.store.service(&w.spec.name).unwrap().active.unwrap();
    let ids: std::collections::BTreeSet<String> =
        active.instances.iter().map(|i| i.id.clone()).collect();
    assert_eq!(
        w.runtime.running(),
        ids,
        "the store's active slot is what runs"
    );
    assert!(w.store.unfinished(&w.spec.name).unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_will_not_stop_is_a_warning_not_an_endless_deployment() {
    // Second review: restore's cleanup stopped it again and returned before finishing.
    let mut w = rolling_world(StrategyKind::Rolling, 4, 1, 0).await;
    w.spec.replicas = 3;
    w.runtime
        .unstoppable
        .borrow_mut()
        .insert("sy-web-blue-d1-r3".into());
    w.fail_health("sy-web-green-d2-r1");
    let err = w.roll("v2").await.unwrap_err();
    assert_eq!(err.exit_code(), 1, "{err}");
    assert!(
        err.to_string()
            .contains("warning: stopping sy-web-blue-d1-r3: sy-web-blue-d1-r3: did not stop"),
        "{err}"
    );
    assert!(w.store.unfinished(&w.spec.name).unwrap().is_none());
    w.runtime.unhealthy_names.borrow_mut().clear();
    w.roll("v3").await.unwrap();
    assert_eq!(w.live_versions(), ["v3"; 3]);
    let active = w.store.service(&w.spec.name).unwrap().active.unwrap();
    assert_eq!(active.instances.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_stray_that_will_not_stop_goes_back_to_its_slot_not_into_the_new_one() {
    // Second review: a restarted retained replica that would not stop was promoted by
    // `activate` beside its replacement.
    let w = rolling_world(StrategyKind::Rolling, 3, 1, 0).await;
    w.roll("v2").await.unwrap();
    let n = {
        let p = rolling_world(StrategyKind::Rolling, 3, 1, 0).await;
        p.roll("v2").await.unwrap();
        let before = p.journal_steps().len();
        p.roll_back().await.unwrap();
        p.step_number(before, "instance_started")
    };
    w.killed_during(n, w.roll_back()).await;
    w.runtime
        .unstoppable
        .borrow_mut()
        .insert("sy-web-blue-d1-r0".into());
    // Deploying v3 restores v2 first (the stray v1 replica will not stop), then rolls.
    w.roll("v3").await.unwrap();
    let active = w.store.service(&w.spec.name).unwrap().active.unwrap();
    assert_eq!(active.instances.len(), 3, "{:?}", active.instances);
    assert_eq!(w.live_versions(), ["v3"; 3]);
}
