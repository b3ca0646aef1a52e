//! Rolling and in-place deploys against fakes on paused time: the bounds hold at every
//! reload, old replicas stop only after they left the upstream and drained, a failed middle
//! batch restores the old version (or pauses), rollbacks roll, the in-place gap is refused
//! unless allowed, and a rollout killed after any journal step is finished or restored.

use std::net::SocketAddr;

use super::*;
use crate::config::{OnFailure, RollingSpec};

/// v1 live on `replicas` replicas of a `kind` service.
async fn rolling_world(kind: StrategyKind, replicas: u16, surge: u16, unavailable: u16) -> World {
    let mut w = World::new();
    w.spec.replicas = replicas;
    w.spec.strategy = kind;
    w.spec.rolling = RollingSpec {
        max_surge: surge,
        max_unavailable: unavailable,
        on_failure: OnFailure::Rollback,
        allow_downtime: false,
    };
    w.roll("v1").await.unwrap();
    w
}

impl World {
    async fn roll(&self, version: &str) -> Result<DeployReport, DeployError> {
        self.deployer()
            .roll(&self.spec, &v(version), self.spec.strategy)
            .await
    }

    async fn roll_back(&self) -> Result<DeployReport, DeployError> {
        self.deployer().rollback(&self.spec).await
    }

    fn applied_since(&self, from: usize) -> Vec<Vec<SocketAddr>> {
        self.router.history.borrow()[from..].to_vec()
    }

    fn reloads(&self) -> usize {
        self.router.history.borrow().len()
    }

    /// Every backend of every applied set was a running, healthy instance when applied is
    /// hard to see afterwards; what can be checked is that each set met the floor.
    fn assert_floor(&self, from: usize, floor: usize) {
        for (i, set) in self.applied_since(from).iter().enumerate() {
            assert!(
                set.len() >= floor,
                "reload {i} had {} backends, floor {floor}: {:?}",
                set.len(),
                self.applied_since(from)
            );
        }
    }

    /// Each stopped instance had left the upstream, and its workers drained, before the stop.
    fn assert_stopped_after_drain(&self, from_call: usize) {
        let calls = self.shared.calls()[from_call..].to_vec();
        for (i, call) in calls.iter().enumerate() {
            let Some(name) = call.strip_prefix("runtime.stop ") else {
                continue;
            };
            let last_apply = calls[..i]
                .iter()
                .rposition(|c| c.starts_with("router.apply"))
                .unwrap_or_else(|| panic!("{name} stopped before any reload: {calls:#?}"));
            let drained = calls[last_apply..i]
                .iter()
                .any(|c| c.starts_with("router.wait_drained"));
            assert!(drained, "{name} stopped before a drain: {calls:#?}");
        }
    }

    fn live_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .router
            .backends("web")
            .iter()
            .map(|a| a.port())
            .collect();
        ports.sort();
        ports
    }
}

#[tokio::test(start_paused = true)]
async fn four_replicas_roll_one_at_a_time_within_the_surge() {
    let w = rolling_world(StrategyKind::Rolling, 4, 1, 0).await;
    let (reloads, calls) = (w.reloads(), w.shared.calls().len());
    let report = w.roll("v2").await.unwrap();
    w.assert_consistent("v2");
    assert_eq!(w.retained_versions(), ["v1"]);
    let rollout = report.rollout.expect("a rollout report");
    assert_eq!(rollout.batches.len(), 4);
    assert_eq!(rollout.reloads, 4);
    assert!(rollout.peak_running <= 5, "{rollout:?}");
    assert!(w.runtime.peak_running() <= 5);
    w.assert_floor(reloads, 4);
    w.assert_stopped_after_drain(calls);
    // Each batch: one new replica in, one old out.
    for batch in &rollout.batches {
        assert_eq!(
            (batch.added.len(), batch.removed.len()),
            (1, 1),
            "{batch:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn in_place_reuses_the_ports_and_never_runs_more_than_the_replicas() {
    let w = rolling_world(StrategyKind::InPlace, 3, 0, 1).await;
    let ports = w.live_ports();
    let (reloads, calls) = (w.reloads(), w.shared.calls().len());
    let report = w.roll("v2").await.unwrap();
    w.assert_consistent("v2");
    assert_eq!(w.live_ports(), ports, "replacements took the freed ports");
    assert_eq!(w.runtime.peak_running(), 3);
    w.assert_floor(reloads, 2);
    w.assert_stopped_after_drain(calls);
    let rollout = report.rollout.unwrap();
    assert_eq!(rollout.batches.len(), 4, "{rollout:?}");
    assert_eq!(rollout.gap_ms, None);
}

#[tokio::test(start_paused = true)]
async fn a_bad_version_failing_in_batch_two_restores_the_old_one() {
    let w = rolling_world(StrategyKind::Rolling, 4, 1, 0).await;
    let v1_ids = w.runtime.running();
    let reloads = w.reloads();
    // The second batch's replica (r1 of deployment 2) never passes its health check.
    w.runtime
        .unhealthy_names
        .borrow_mut()
        .insert("sy-web-green-d2-r1".into());
    let err = w.roll("v2").await.unwrap_err();
    assert_eq!(err.exit_code(), 1, "{err}");
    let text = err.to_string();
    assert!(text.contains("batch 2"), "{text}");
    assert!(text.contains("traffic stays on v1"), "{text}");
    w.assert_consistent("v1");
    assert_eq!(
        w.runtime.running(),
        v1_ids,
        "the replaced v1 replica came back"
    );
    w.assert_floor(reloads, 4);
    assert!(
        w.retained_versions().is_empty(),
        "{:?}",
        w.retained_versions()
    );
    let history = w.store.history(None, 1).unwrap();
    assert_eq!(history[0].outcome, Outcome::Failed);
}

#[tokio::test(start_paused = true)]
async fn in_place_failure_restores_on_the_same_ports() {
    let w = rolling_world(StrategyKind::InPlace, 3, 0, 1).await;
    let ports = w.live_ports();
    w.runtime
        .unhealthy_names
        .borrow_mut()
        .insert("sy-web-green-d2-r1".into());
    let err = w.roll("v2").await.unwrap_err();
    assert_eq!(err.exit_code(), 1, "{err}");
    w.assert_consistent("v1");
    assert_eq!(w.live_ports(), ports);
    assert_eq!(w.runtime.peak_running(), 3);
}

#[tokio::test(start_paused = true)]
async fn on_failure_pause_leaves_the_mix_for_deploy_to_finish() {
    let mut w = rolling_world(StrategyKind::Rolling, 4, 1, 0).await;
    w.spec.rolling.on_failure = OnFailure::Pause;
    w.runtime
        .unhealthy_names
        .borrow_mut()
        .insert("sy-web-green-d2-r1".into());
    let err = w.roll("v2").await.unwrap_err();
    assert_eq!(err.exit_code(), 1);
    assert!(err.to_string().contains("paused"), "{err}");
    let mut live = w.live_versions();
    live.sort();
    assert_eq!(live, ["v1", "v1", "v1", "v2"]);
    assert!(w.store.unfinished(&w.spec.name).unwrap().is_some());
    assert!(
        w.store.lock(&w.spec.name).unwrap().is_none(),
        "lock released"
    );
    // Fixed (say the replica's dependency came back): deploy finishes what was started.
    w.runtime.unhealthy_names.borrow_mut().clear();
    let report = w.roll("v2").await.unwrap();
    w.assert_consistent("v2");
    assert_eq!(
        report.rollout.unwrap().batches.len(),
        3,
        "only what was left"
    );
    assert_eq!(w.retained_versions(), ["v1"]);
}

#[tokio::test(start_paused = true)]
async fn on_failure_pause_then_rollback_restores_and_goes_no_further() {
    let mut w = rolling_world(StrategyKind::Rolling, 4, 1, 0).await;
    w.roll("v2").await.unwrap();
    w.spec.rolling.on_failure = OnFailure::Pause;
    w.runtime
        .unhealthy_names
        .borrow_mut()
        .insert("sy-web-blue-d3-r2".into());
    w.roll("v3").await.unwrap_err();
    let report = w.roll_back().await.unwrap();
    assert_eq!(report.to.as_str(), "v2");
    w.assert_consistent("v2");
    assert_eq!(w.retained_versions(), ["v1"]);
}

#[tokio::test(start_paused = true)]
async fn rollback_of_a_rolling_service_restarts_the_retained_replicas_in_batches() {
    for kind in [StrategyKind::Rolling, StrategyKind::InPlace] {
        let (surge, unavailable) = if kind == StrategyKind::InPlace {
            (0, 1)
        } else {
            (1, 0)
        };
        let w = rolling_world(kind, 3, surge, unavailable).await;
        let v1_ids = w.runtime.running();
        w.roll("v2").await.unwrap();
        let reloads = w.reloads();
        let report = w.roll_back().await.unwrap();
        assert_eq!(report.to.as_str(), "v1");
        w.assert_consistent("v1");
        assert_eq!(w.runtime.running(), v1_ids, "{kind:?}: the same containers");
        assert_eq!(w.retained_versions(), ["v2"], "{kind:?}");
        w.assert_floor(reloads, 2);
        assert!(
            w.runtime.peak_running() <= 3 + usize::from(surge),
            "{kind:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn one_replica_in_place_is_refused_unless_downtime_is_allowed() {
    let mut w = World::new();
    w.spec.replicas = 1;
    w.spec.strategy = StrategyKind::InPlace;
    w.spec.rolling = RollingSpec {
        max_surge: 0,
        max_unavailable: 1,
        on_failure: OnFailure::Rollback,
        allow_downtime: false,
    };
    // The first deploy has nothing to take down.
    w.roll("v1").await.unwrap();
    let calls = w.shared.calls().len();
    let err = w.roll("v2").await.unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
    assert!(err.to_string().contains("allow_downtime"), "{err}");
    assert!(
        !w.shared.calls()[calls..]
            .iter()
            .any(|c| c.starts_with("runtime.") || c.starts_with("router.")),
        "nothing changed"
    );
    w.assert_consistent("v1");

    w.spec.rolling.allow_downtime = true;
    let ports = w.live_ports();
    let report = w.roll("v2").await.unwrap();
    w.assert_consistent("v2");
    assert_eq!(w.live_ports(), ports);
    let rollout = report.rollout.unwrap();
    assert!(rollout.gap_ms.is_some(), "{rollout:?}");
    assert_eq!(rollout.reloads, 1, "the gap batch needs no reload");
}

#[tokio::test(start_paused = true)]
async fn a_first_rolling_deploy_that_fails_leaves_nothing_running() {
    let mut w = World::new();
    w.spec.strategy = StrategyKind::Rolling;
    w.runtime.unhealthy.borrow_mut().insert("v1".into());
    let err = w.roll("v1").await.unwrap_err();
    assert_eq!(err.exit_code(), 1, "{err}");
    assert!(w.runtime.running().is_empty());
    assert!(w.store.unfinished(&w.spec.name).unwrap().is_none());
    w.spec.replicas = 2;
}

/// Journal writes in a clean v1 -> v2 rollout of `kind`.
async fn journal_writes(kind: StrategyKind, surge: u16, unavailable: u16) -> usize {
    let w = rolling_world(kind, 3, surge, unavailable).await;
    let before = w
        .shared
        .calls()
        .iter()
        .filter(|c| c.starts_with("journal"))
        .count();
    w.roll("v2").await.unwrap();
    w.shared
        .calls()
        .iter()
        .filter(|c| c.starts_with("journal"))
        .count()
        - before
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
                w.shared.kill_after_journal(n, true);
                let _ = tokio::time::timeout(Duration::from_secs(3600), w.roll("v2")).await;
                assert!(w.shared.is_dead(), "{kind:?} step {n}");
                w.shared.revive();
                w.host.restart();
                let ctx = format!("{kind:?} step {n} rollback {then_rollback}");
                let reloads = w.reloads();
                let finished = w
                    .store
                    .service(&w.spec.name)
                    .unwrap()
                    .active
                    .unwrap()
                    .version;
                if then_rollback {
                    w.roll_back().await.unwrap_or_else(|e| panic!("{ctx}: {e}"));
                    // Killed after the flip: rollback goes back to v1 from a finished v2.
                    w.assert_consistent("v1");
                } else {
                    w.roll("v2").await.unwrap_or_else(|e| panic!("{ctx}: {e}"));
                    w.assert_consistent("v2");
                }
                let _ = finished;
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
    let before = w
        .shared
        .calls()
        .iter()
        .filter(|c| c.starts_with("journal"))
        .count();
    w.roll("v2").await.unwrap();
    let journal: Vec<String> = w
        .shared
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("journal"))
        .collect();
    journal[before..]
        .iter()
        .position(|c| c == &format!("journal {step}"))
        .unwrap()
        + 1
}

#[tokio::test(start_paused = true)]
async fn after_a_restore_the_store_is_what_nginx_serves() {
    // Review finding: a restore left stopped replicas `active`, and the next deploy kept
    // routing to them. Fewer replicas than the live slot, then a failed batch:
    let mut w = rolling_world(StrategyKind::Rolling, 4, 1, 0).await;
    w.spec.replicas = 3;
    w.runtime
        .unhealthy_names
        .borrow_mut()
        .insert("sy-web-green-d2-r1".into());
    w.roll("v2").await.unwrap_err();
    w.assert_consistent("v1");
    w.runtime.unhealthy_names.borrow_mut().clear();
    let reloads = w.reloads();
    w.roll("v3").await.unwrap();
    w.assert_consistent("v3");
    w.assert_floor(reloads, 3);

    // A redeploy of the live version that fails: the stopped old replica comes back.
    w.runtime
        .unhealthy_names
        .borrow_mut()
        .insert("sy-web-blue-d4-r1".into());
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
    w.shared.kill_after_journal(n, true);
    let _ = tokio::time::timeout(Duration::from_secs(3600), w.roll("v2")).await;
    assert!(w.shared.is_dead());
    w.shared.revive();
    w.host.restart();
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
        let journal: Vec<String> = p
            .shared
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("journal"))
            .collect();
        journal.iter().position(|c| c == "journal routed").unwrap() + 1
    };
    w.shared.kill_after_journal(n, true);
    let _ = tokio::time::timeout(Duration::from_secs(3600), w.roll("v1")).await;
    assert!(w.shared.is_dead());
    w.shared.revive();
    w.host.restart();
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
    let journal = {
        let mut p = World::new();
        p.spec.replicas = 3;
        p.spec.strategy = StrategyKind::Rolling;
        p.roll("v1").await.unwrap();
        let calls = p.shared.calls();
        calls
            .into_iter()
            .filter(|c| c.starts_with("journal"))
            .collect::<Vec<_>>()
    };
    let n = journal
        .iter()
        .position(|c| c == &format!("journal {step}"))
        .unwrap()
        + 1;
    let mut w = World::new();
    w.spec.replicas = 3;
    w.spec.strategy = StrategyKind::Rolling;
    w.shared.kill_after_journal(n, true);
    let _ = tokio::time::timeout(Duration::from_secs(3600), w.roll("v1")).await;
    assert!(w.shared.is_dead());
    w.shared.revive();
    w.host.restart();
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
    w.runtime
        .unhealthy_names
        .borrow_mut()
        .insert("sy-web-blue-d1-r1".into());
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
    w.runtime
        .unhealthy_names
        .borrow_mut()
        .insert("sy-web-green-d2-r1".into());
    let err = w.roll("v2").await.unwrap_err();
    assert_eq!(err.exit_code(), 1, "{err}");
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
        let before = p
            .shared
            .calls()
            .iter()
            .filter(|c| c.starts_with("journal"))
            .count();
        p.roll_back().await.unwrap();
        let journal: Vec<String> = p
            .shared
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("journal"))
            .collect();
        journal[before..]
            .iter()
            .position(|c| c == "journal instance_started")
            .unwrap()
            + 1
    };
    w.shared.kill_after_journal(n, true);
    let _ = tokio::time::timeout(Duration::from_secs(3600), w.roll_back()).await;
    assert!(w.shared.is_dead());
    w.shared.revive();
    w.host.restart();
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
