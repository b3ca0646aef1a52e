//! The deploy hooks against fakes on paused time: `pre_deploy` runs before anything starts
//! and its failure starts nothing; `pre_traffic` runs on each healthy batch before it gets
//! traffic and its failure removes the batch with no route change; a failed `post_deploy`
//! leaves the deploy done with a warning; `on_rollback` runs after explicit and automatic
//! rollbacks; every hook is journaled with its outcome.

use std::time::Duration;

use super::rolling::bounded;
use super::*;
use crate::config::{HookAction, HookSpec, HooksSpec, StrategyKind};

fn hook() -> Option<HookSpec> {
    Some(HookSpec {
        action: HookAction::Command(vec!["/bin/check".into()]),
        timeout: Duration::from_secs(5),
        at: (1, 1),
    })
}

fn all_hooks() -> HooksSpec {
    HooksSpec {
        pre_deploy: hook(),
        pre_traffic: hook(),
        post_deploy: hook(),
        on_rollback: hook(),
    }
}

/// v1 live with every hook configured, and the hook calls of that first deploy forgotten.
async fn hooked() -> World {
    let mut w = World::new();
    w.spec.hooks = all_hooks();
    w.deploy("v1").await.unwrap();
    w.hooks.calls.borrow_mut().clear();
    w
}

fn fail(w: &World, point: HookPoint) {
    w.hooks.failing.borrow_mut().insert(point);
}

fn failed(err: &DeployError) -> (DeploymentId, Cause) {
    match err {
        DeployError::Failed {
            deployment, cause, ..
        } => (*deployment, *cause),
        other => panic!("not a failed deployment: {other}"),
    }
}

/// The (point, ok) of every `hook_ran` step of deployment `id`.
fn hooks_journaled(w: &World, id: DeploymentId) -> Vec<(HookPoint, bool)> {
    let (_, journal) = w.store.deployment(id).unwrap().expect("the deployment");
    journal
        .iter()
        .filter_map(|e| match &e.step {
            Step::HookRan { hook, ok, .. } => Some((*hook, *ok)),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn hooks_run_in_order_around_a_deploy() {
    let w = hooked().await;
    let from = w.shared.calls().len();
    let report = w.deploy("v2").await.unwrap();
    let calls = &w.shared.calls()[from..];
    let pre_deploy = position(calls, "hooks.pre_deploy v2 []");
    let start = position(calls, "runtime.start");
    let healthy = position(calls, "journal healthy");
    let pre_traffic = position(calls, "hooks.pre_traffic v2");
    let apply = position(calls, "router.apply");
    let post_deploy = position(calls, "hooks.post_deploy v2");
    assert!(
        pre_deploy < start && healthy < pre_traffic && pre_traffic < apply && apply < post_deploy,
        "{calls:#?}"
    );
    let calls = w.hooks.calls.borrow();
    let smoke = &calls[1];
    assert_eq!(smoke.hook, HookPoint::PreTraffic);
    assert_eq!(smoke.previous.as_deref(), Some("v1"));
    assert_eq!(smoke.strategy, "blue-green");
    assert_eq!(smoke.deployment, report.deployment);
    assert_eq!(smoke.replicas.len(), 2, "both new replicas: {smoke:?}");
    for addr in &smoke.replicas {
        assert_eq!(w.runtime.version_at(*addr).as_deref(), Some("v2"));
    }
    assert_eq!(
        calls[2].replicas,
        w.router.backends("web"),
        "post_deploy is told what nginx serves"
    );
    assert_eq!(
        hooks_journaled(&w, report.deployment),
        [
            (HookPoint::PreDeploy, true),
            (HookPoint::PreTraffic, true),
            (HookPoint::PostDeploy, true)
        ]
    );
    w.assert_consistent("v2");
}

#[tokio::test(start_paused = true)]
async fn a_failing_pre_deploy_starts_nothing_and_leaves_traffic_alone() {
    let w = hooked().await;
    let (from, applies) = (w.shared.calls().len(), w.router.history.borrow().len());
    fail(&w, HookPoint::PreDeploy);
    let err = w.deploy("v2").await.unwrap_err();
    assert_eq!(err.exit_code(), 1, "{err}");
    let msg = err.to_string();
    assert!(msg.contains("traffic stays on v1"), "{msg}");
    assert!(
        msg.contains("pre_deploy hook failed: exit 1: pre_deploy broke"),
        "the hook's summary and last line: {msg}"
    );
    let calls = &w.shared.calls()[from..];
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("runtime.start") || c.starts_with("runtime.prepare")),
        "nothing started: {calls:#?}"
    );
    assert_eq!(w.router.history.borrow().len(), applies, "nginx untouched");
    let (id, cause) = failed(&err);
    assert_eq!(cause, Cause::Hook);
    assert_eq!(hooks_journaled(&w, id), [(HookPoint::PreDeploy, false)]);
    assert_eq!(w.hooks.points(), [HookPoint::PreDeploy], "no on_rollback");
    assert_eq!(
        w.store.history(None, 1).unwrap()[0].outcome,
        Outcome::Failed
    );
    w.assert_consistent("v1");
}

#[tokio::test(start_paused = true)]
async fn a_failing_pre_traffic_removes_the_new_replicas_without_a_route_change() {
    let w = hooked().await;
    let applies = w.router.history.borrow().len();
    fail(&w, HookPoint::PreTraffic);
    let err = w.deploy("v2").await.unwrap_err();
    assert_eq!(err.exit_code(), 1, "{err}");
    assert!(err.to_string().contains("traffic stays on v1"), "{err}");
    assert_eq!(w.router.history.borrow().len(), applies, "no route change");
    let (id, cause) = failed(&err);
    assert_eq!(cause, Cause::Hook);
    let smoked = w.hooks.calls.borrow()[1].replicas.clone();
    for addr in smoked {
        assert_eq!(w.runtime.version_at(addr), None, "{addr} removed");
    }
    assert_eq!(
        w.hooks.points(),
        [
            HookPoint::PreDeploy,
            HookPoint::PreTraffic,
            HookPoint::OnRollback
        ]
    );
    let on_rollback = w.hooks.calls.borrow()[2].clone();
    assert_eq!(
        (
            on_rollback.version.as_str(),
            on_rollback.previous.as_deref()
        ),
        ("v1", Some("v2")),
        "told as a rollback from v2 to v1"
    );
    assert_eq!(
        hooks_journaled(&w, id),
        [
            (HookPoint::PreDeploy, true),
            (HookPoint::PreTraffic, false),
            (HookPoint::OnRollback, true)
        ]
    );
    w.assert_consistent("v1");
}

#[tokio::test(start_paused = true)]
async fn a_failing_post_deploy_leaves_the_deploy_done_with_a_warning() {
    let w = hooked().await;
    fail(&w, HookPoint::PostDeploy);
    let report = w.deploy("v2").await.unwrap();
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("post_deploy hook failed: exit 1")),
        "{:?}",
        report.warnings
    );
    assert_eq!(
        w.store.history(None, 1).unwrap()[0].outcome,
        Outcome::Succeeded
    );
    assert_eq!(
        hooks_journaled(&w, report.deployment).last(),
        Some(&(HookPoint::PostDeploy, false))
    );
    w.assert_consistent("v2");
}

#[tokio::test(start_paused = true)]
async fn an_explicit_rollback_runs_on_rollback_and_no_deploy_hook() {
    let w = hooked().await;
    w.deploy("v2").await.unwrap();
    w.hooks.calls.borrow_mut().clear();
    let report = w.deployer().rollback(&w.spec).await.unwrap();
    assert_eq!(w.hooks.points(), [HookPoint::OnRollback]);
    let call = w.hooks.calls.borrow()[0].clone();
    assert_eq!(
        (call.version.as_str(), call.previous.as_deref()),
        ("v1", Some("v2"))
    );
    assert_eq!(call.deployment, report.deployment);
    w.assert_consistent("v1");
}

#[tokio::test(start_paused = true)]
async fn an_unhealthy_version_runs_on_rollback_but_never_pre_traffic() {
    let w = hooked().await;
    w.runtime.unhealthy.borrow_mut().insert("v2".into());
    w.deploy("v2").await.unwrap_err();
    assert_eq!(
        w.hooks.points(),
        [HookPoint::PreDeploy, HookPoint::OnRollback]
    );
    w.assert_consistent("v1");
}

#[tokio::test(start_paused = true)]
async fn rolling_runs_pre_traffic_once_per_batch_with_that_batch() {
    let mut w = bounded(StrategyKind::Rolling, 2, 1, 0);
    w.spec.hooks = all_hooks();
    w.deployer()
        .roll(&w.spec, &v("v1"), StrategyKind::Rolling)
        .await
        .unwrap();
    w.hooks.calls.borrow_mut().clear();
    let from = w.shared.calls().len();
    w.deployer()
        .roll(&w.spec, &v("v2"), StrategyKind::Rolling)
        .await
        .unwrap();
    let calls = &w.shared.calls()[from..];
    let smokes: Vec<usize> = calls
        .iter()
        .enumerate()
        .filter(|(_, c)| c.starts_with("hooks.pre_traffic"))
        .map(|(i, _)| i)
        .collect();
    let applies: Vec<usize> = calls
        .iter()
        .enumerate()
        .filter(|(_, c)| c.starts_with("router.apply"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(smokes.len(), 2, "one per batch: {calls:#?}");
    assert!(
        smokes[0] < applies[0] && applies[0] < smokes[1] && smokes[1] < applies[1],
        "each batch smoke-tested before its route change: {calls:#?}"
    );
    let hooks = w.hooks.calls.borrow();
    let batches: Vec<usize> = hooks
        .iter()
        .filter(|c| c.hook == HookPoint::PreTraffic)
        .map(|c| c.replicas.len())
        .collect();
    assert_eq!(batches, [1, 1], "each with its own batch");
    w.assert_consistent("v2");
}

#[tokio::test(start_paused = true)]
async fn a_canary_whose_pre_traffic_fails_never_shifts() {
    let metrics = FakeMetrics::default();
    let w = hooked().await;
    metrics.set("v1", 1000.0, 0.0);
    metrics.set("v2", 1000.0, 0.0);
    let applies = w.router.history.borrow().len();
    fail(&w, HookPoint::PreTraffic);
    let err = w
        .deployer()
        .canary(&w.spec, &v("v2"), &metrics)
        .await
        .unwrap_err();
    assert_eq!(failed(&err).1, Cause::Hook);
    assert_eq!(w.router.history.borrow().len(), applies, "no step taken");
    assert_eq!(
        w.hooks.points(),
        [
            HookPoint::PreDeploy,
            HookPoint::PreTraffic,
            HookPoint::OnRollback
        ]
    );
    assert_eq!(w.hooks.calls.borrow()[1].strategy, "canary");
    w.assert_consistent("v1");
}

#[tokio::test(start_paused = true)]
async fn a_hooked_deploy_killed_after_any_step_is_settled_by_the_next_deploy() {
    let steps = {
        let w = hooked().await;
        let before = w.journal_steps().len();
        w.deploy("v2").await.unwrap();
        w.journal_steps().len() - before
    };
    for n in 1..=steps {
        for persist in [true, false] {
            let w = hooked().await;
            w.shared.kill_after_journal(n, persist);
            let _ = tokio::time::timeout(Duration::from_secs(3600), w.deploy("v2")).await;
            assert!(w.shared.is_dead(), "step {n}: the kill switch fired");
            w.shared.revive();
            w.host.restart();
            w.deploy("v2")
                .await
                .unwrap_or_else(|e| panic!("step {n}: {e}"));
            w.assert_consistent("v2");
            let history = w.store.history(None, 10).unwrap();
            assert!(
                history.iter().all(|d| d.outcome != Outcome::Running),
                "step {n}: {history:#?}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_deploy_killed_before_its_pre_deploy_ran_runs_it_on_resume_before_any_start() {
    let w = hooked().await;
    // Journal write 1 is the pre_deploy intent: killed before the hook ran.
    w.killed_during(1, w.deploy("v2")).await;
    assert!(w.hooks.points().is_empty(), "{:?}", w.hooks.points());
    let from = w.shared.calls().len();
    let report = w.deploy("v2").await.unwrap();
    let calls = &w.shared.calls()[from..];
    assert!(
        position(calls, "hooks.pre_deploy v2") < position(calls, "runtime.start"),
        "{calls:#?}"
    );
    assert_eq!(
        w.hooks.points(),
        [
            HookPoint::PreDeploy,
            HookPoint::PreTraffic,
            HookPoint::PostDeploy
        ],
        "the resumed deploy runs every hook once"
    );
    assert_eq!(
        hooks_journaled(&w, report.deployment),
        [
            (HookPoint::PreDeploy, true),
            (HookPoint::PreTraffic, true),
            (HookPoint::PostDeploy, true)
        ]
    );
    w.assert_consistent("v2");
}

#[tokio::test(start_paused = true)]
async fn a_deploy_killed_after_its_pre_deploy_passed_does_not_run_it_again() {
    let w = hooked().await;
    // Writes 1 and 2 are the pre_deploy intent and outcome.
    w.killed_during(2, w.deploy("v2")).await;
    assert_eq!(w.hooks.points(), [HookPoint::PreDeploy]);
    w.deploy("v2").await.unwrap();
    assert_eq!(
        w.hooks.points(),
        [
            HookPoint::PreDeploy,
            HookPoint::PreTraffic,
            HookPoint::PostDeploy
        ]
    );
    w.assert_consistent("v2");
}

#[tokio::test(start_paused = true)]
async fn a_deploy_killed_mid_way_and_undone_by_rollback_runs_on_rollback() {
    let w = hooked().await;
    // Killed after pre_deploy passed, then `rollback` undoes the deploy.
    w.killed_during(2, w.deploy("v2")).await;
    w.hooks.calls.borrow_mut().clear();
    w.deployer().rollback(&w.spec).await.unwrap();
    assert_eq!(w.hooks.points(), [HookPoint::OnRollback]);
    let call = w.hooks.calls.borrow()[0].clone();
    assert_eq!(
        (call.version.as_str(), call.previous.as_deref()),
        ("v1", Some("v2"))
    );
    w.assert_consistent("v1");
}
