//! Rolling and in-place deploys against fakes on paused time: the bounds hold at every
//! reload, old replicas stop only after they left the upstream and drained, a failed middle
//! batch restores the old version (or pauses), rollbacks roll, the in-place gap is refused
//! unless allowed; `resume` holds the kill-at-every-step and resume/restore cases.

use std::net::SocketAddr;

use super::*;
use crate::config::{OnFailure, RollingSpec};

/// A `kind` service of `replicas` replicas within these bounds, nothing deployed.
pub(super) fn bounded(kind: StrategyKind, replicas: u16, surge: u16, unavailable: u16) -> World {
    let mut w = World::new();
    w.spec.replicas = replicas;
    w.spec.strategy = kind;
    w.spec.rolling = RollingSpec {
        max_surge: surge,
        max_unavailable: unavailable,
        on_failure: OnFailure::Rollback,
        allow_downtime: false,
    };
    w
}

/// v1 live on `replicas` replicas of a `kind` service.
async fn rolling_world(kind: StrategyKind, replicas: u16, surge: u16, unavailable: u16) -> World {
    let w = bounded(kind, replicas, surge, unavailable);
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

    /// The instance named `name` never passes a health probe.
    fn fail_health(&self, name: &str) {
        self.runtime
            .unhealthy_names
            .borrow_mut()
            .insert(name.into());
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
    w.fail_health("sy-web-green-d2-r1");
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
    w.fail_health("sy-web-green-d2-r1");
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
    w.fail_health("sy-web-green-d2-r1");
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
    w.fail_health("sy-web-blue-d3-r2");
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

mod resume;
