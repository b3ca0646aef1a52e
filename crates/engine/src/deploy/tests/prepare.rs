//! The prepare step (Docker: the image pull) against fakes on paused time: it runs once per
//! deploy, before the first replica starts; when it fails, nothing starts, traffic stays where
//! it was, and the failure is journaled with its own cause; a rollback that only restarts
//! retained replicas and a restore never prepare; a resumed rollout prepares again.

use super::rolling::bounded;
use super::*;

/// The `runtime.prepare` and `runtime.start` calls from `from` on.
fn prepares_and_starts(w: &World, from: usize) -> Vec<String> {
    w.shared.calls()[from..]
        .iter()
        .filter(|c| c.starts_with("runtime.prepare") || c.starts_with("runtime.start"))
        .cloned()
        .collect()
}

fn cannot_pull(w: &World, version: &str) {
    w.runtime.unpreparable.borrow_mut().insert(version.into());
}

/// The cause journaled in `failing` by deployment `id`.
fn failing_cause(w: &World, id: DeploymentId) -> Option<Cause> {
    let (_, journal) = w.store.deployment(id).unwrap().expect("the deployment");
    journal.iter().find_map(|e| match &e.step {
        Step::Failing { cause, .. } => Some(*cause),
        _ => None,
    })
}

fn failed_id(err: &DeployError) -> DeploymentId {
    match err {
        DeployError::Failed { deployment, .. } => *deployment,
        other => panic!("not a failed deployment: {other}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_deploy_prepares_once_before_its_first_replica_starts() {
    let w = World::new();
    w.deploy("v1").await.unwrap();
    let from = w.shared.calls().len();
    w.deploy("v2").await.unwrap();
    let calls = prepares_and_starts(&w, from);
    assert_eq!(
        calls,
        [
            "runtime.prepare web v2",
            "runtime.start sy-web-green-d2-r0",
            "runtime.start sy-web-green-d2-r1",
        ],
        "one prepare, before both starts"
    );
    w.assert_consistent("v2");
}

#[tokio::test(start_paused = true)]
async fn a_failed_pull_starts_nothing_and_leaves_traffic_on_the_old_version() {
    let w = World::new();
    w.deploy("v1").await.unwrap();
    let (from, applies) = (w.shared.calls().len(), w.router.history.borrow().len());
    cannot_pull(&w, "v2");
    let err = w.deploy("v2").await.unwrap_err();
    assert_eq!(err.exit_code(), 1, "{err}");
    let msg = err.to_string();
    assert!(msg.contains("traffic stays on v1"), "{msg}");
    assert!(
        msg.contains("pulling image web:v2: unauthorized: authentication required"),
        "the runtime's words: {msg}"
    );
    assert_eq!(prepares_and_starts(&w, from), ["runtime.prepare web v2"]);
    assert_eq!(
        w.router.history.borrow().len(),
        applies,
        "nginx was not touched"
    );
    assert_eq!(failing_cause(&w, failed_id(&err)), Some(Cause::Prepare));
    assert_eq!(
        w.store.history(None, 1).unwrap()[0].outcome,
        Outcome::Failed
    );
    w.assert_consistent("v1");
    assert_eq!(w.runtime.existing().len(), 2, "only v1's replicas exist");
}

#[tokio::test(start_paused = true)]
async fn a_first_deploy_whose_pull_fails_starts_nothing() {
    let w = World::new();
    cannot_pull(&w, "v1");
    let err = w.deploy("v1").await.unwrap_err();
    assert_eq!(err.exit_code(), 1, "{err}");
    assert!(
        err.to_string().contains("traffic stays on no version"),
        "{err}"
    );
    assert_eq!(prepares_and_starts(&w, 0), ["runtime.prepare web v1"]);
    assert!(w.router.history.borrow().is_empty(), "nothing routed");
    assert!(w.runtime.existing().is_empty());
    assert!(w.store.service(&w.spec.name).unwrap().active.is_none());
    assert!(w.store.unfinished(&w.spec.name).unwrap().is_none());
    assert!(
        w.store.lock(&w.spec.name).unwrap().is_none(),
        "lock released"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rolling_deploy_prepares_once_and_a_failed_pull_moves_no_batch() {
    let w = bounded(StrategyKind::Rolling, 4, 1, 0);
    let roll = |version: &'static str| async {
        w.deployer()
            .roll(&w.spec, &v(version), StrategyKind::Rolling)
            .await
    };
    roll("v1").await.unwrap();
    let from = w.shared.calls().len();
    roll("v2").await.unwrap();
    let prepares = prepares_and_starts(&w, from)
        .into_iter()
        .filter(|c| c.starts_with("runtime.prepare"))
        .count();
    assert_eq!(prepares, 1, "one prepare for four batches");
    let (from, applies) = (w.shared.calls().len(), w.router.history.borrow().len());
    cannot_pull(&w, "v3");
    let err = roll("v3").await.unwrap_err();
    assert_eq!(err.exit_code(), 1, "{err}");
    assert_eq!(prepares_and_starts(&w, from), ["runtime.prepare web v3"]);
    assert_eq!(w.router.history.borrow().len(), applies, "no batch moved");
    assert_eq!(failing_cause(&w, failed_id(&err)), Some(Cause::Prepare));
    w.assert_consistent("v2");
}

#[tokio::test(start_paused = true)]
async fn a_canary_whose_pull_fails_never_reaches_the_canary_track() {
    let w = World::new();
    w.deploy("v1").await.unwrap();
    let metrics = FakeMetrics::default();
    metrics.set("v1", 1000.0, 0.0);
    let (from, applies) = (w.shared.calls().len(), w.router.history.borrow().len());
    cannot_pull(&w, "v2");
    let err = w
        .deployer()
        .canary(&w.spec, &v("v2"), &metrics)
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 1, "{err}");
    assert_eq!(prepares_and_starts(&w, from), ["runtime.prepare web v2"]);
    assert_eq!(w.router.history.borrow().len(), applies, "no canary step");
    assert_eq!(failing_cause(&w, failed_id(&err)), Some(Cause::Prepare));
    w.assert_consistent("v1");
}

#[tokio::test(start_paused = true)]
async fn a_rollback_that_restarts_retained_replicas_prepares_nothing() {
    let w = World::new();
    w.deploy("v1").await.unwrap();
    w.deploy("v2").await.unwrap();
    // The registry is gone: a rollback needs none, its replicas are on the host.
    cannot_pull(&w, "v1");
    let from = w.shared.calls().len();
    w.deployer().rollback(&w.spec).await.unwrap();
    assert!(prepares_and_starts(&w, from).is_empty());
    w.assert_consistent("v1");
}

#[tokio::test(start_paused = true)]
async fn a_restore_after_a_failed_batch_does_not_pull_the_old_version() {
    let mut w = bounded(StrategyKind::Rolling, 2, 1, 0);
    w.deployer()
        .roll(&w.spec, &v("v1"), StrategyKind::Rolling)
        .await
        .unwrap();
    // One replica more: restoring v1 starts a fresh replica of it beside the two retained.
    w.spec.replicas = 3;
    // v2's second replica never becomes healthy; v1 cannot be pulled any more.
    w.runtime
        .unhealthy_names
        .borrow_mut()
        .insert("sy-web-green-d2-r0".into());
    cannot_pull(&w, "v1");
    let from = w.shared.calls().len();
    let err = w
        .deployer()
        .roll(&w.spec, &v("v2"), StrategyKind::Rolling)
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 1, "restored: {err}");
    let calls = prepares_and_starts(&w, from);
    let prepares: Vec<&String> = calls
        .iter()
        .filter(|c| c.starts_with("runtime.prepare"))
        .collect();
    assert_eq!(prepares, ["runtime.prepare web v2"], "{calls:#?}");
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with("runtime.start sy-web-blue")),
        "the restore started a fresh v1 replica: {calls:#?}"
    );
    assert_eq!(failing_cause(&w, failed_id(&err)), Some(Cause::Unhealthy));
    w.assert_consistent("v1");
}

#[tokio::test(start_paused = true)]
async fn a_resumed_rollout_prepares_again_and_a_failed_pull_then_goes_back() {
    async fn roll(w: &World, version: &str) -> Result<DeployReport, DeployError> {
        w.deployer()
            .roll(&w.spec, &v(version), StrategyKind::Rolling)
            .await
    }
    // Where the first batch of v1 -> v2 is routed, counted on a deploy that is not killed.
    let probe = bounded(StrategyKind::Rolling, 2, 1, 0);
    roll(&probe, "v1").await.unwrap();
    let before = probe.journal_steps().len();
    roll(&probe, "v2").await.unwrap();
    let routed = probe.step_number(before, "routed");
    let w = bounded(StrategyKind::Rolling, 2, 1, 0);
    roll(&w, "v1").await.unwrap();
    // Killed right after the first batch was routed: v2 serves beside v1.
    w.killed_during(routed, roll(&w, "v2")).await;
    cannot_pull(&w, "v2");
    let from = w.shared.calls().len();
    let err = roll(&w, "v2").await.unwrap_err();
    assert_eq!(err.exit_code(), 1, "{err}");
    let prepares: Vec<String> = prepares_and_starts(&w, from)
        .into_iter()
        .filter(|c| c.starts_with("runtime.prepare"))
        .collect();
    assert_eq!(
        prepares,
        ["runtime.prepare web v2"],
        "the resume pulls again"
    );
    assert!(err.to_string().contains("unauthorized"), "{err}");
    w.assert_consistent("v1");
}
