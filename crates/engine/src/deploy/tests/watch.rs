//! The post-cutover watch against fakes on paused time: a good version is watched for the
//! whole `watch` with the previous replicas still running, then they stop; a version that
//! starts failing after it took all traffic is routed back at the first failed check, in
//! one change to the replicas kept running (blue-green, canary) or by restarting the stopped
//! ones within the bounds (rolling); abort and promote reach a watch; a process killed while
//! watching is finished by the next deploy; checks without data end nothing.

use super::rolling::bounded;
use super::*;

const WATCH: Duration = Duration::from_secs(60);
const INTERVAL: Duration = Duration::from_secs(10);

impl World {
    async fn watched(
        &self,
        version: &str,
        metrics: &FakeMetrics,
    ) -> Result<DeployReport, DeployError> {
        self.deployer()
            .run(&self.spec, &v(version), self.spec.strategy, metrics)
            .await
    }

    /// Resolves once every backend nginx routes to runs `version`.
    async fn cutover_to(&self, version: &str) {
        while self.live_versions() != vec![version.to_owned(); usize::from(self.spec.replicas)] {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The journal's `analysis` verdicts at 100% (the watch's checks), in order.
    fn watch_checks(&self, id: DeploymentId) -> Vec<String> {
        let (_, journal) = self.store.deployment(id).unwrap().unwrap();
        journal
            .iter()
            .filter_map(|e| match &e.step {
                Step::Analysis {
                    weight_bp: 10_000,
                    verdict,
                    ..
                } => Some(verdict.clone()),
                _ => None,
            })
            .collect()
    }

    fn calls_since(&self, from: usize) -> Vec<String> {
        self.shared.calls()[from..].to_vec()
    }
}

/// v1 live on a `kind` service watched for [`WATCH`], judged every [`INTERVAL`].
async fn watched_world(kind: StrategyKind, metrics: &FakeMetrics) -> World {
    let mut w = bounded(kind, 2, 1, 0);
    w.spec.watch = WATCH;
    w.spec.canary.interval = INTERVAL;
    w.deploy("v1").await.unwrap();
    metrics.set("v1", 1000.0, 0.0);
    w
}

fn failed(err: &DeployError) -> (DeploymentId, Cause, String) {
    match err {
        DeployError::Failed {
            deployment,
            cause,
            message,
            ..
        } => (*deployment, *cause, message.clone()),
        other => panic!("expected a failed deploy, got {other}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_good_version_is_watched_with_the_old_replicas_running_then_they_stop() {
    let metrics = FakeMetrics::default();
    let w = watched_world(StrategyKind::BlueGreen, &metrics).await;
    metrics.set("v2", 1000.0, 0.0);
    let started = tokio::time::Instant::now();
    let deploy = w.watched("v2", &metrics);
    let look = async {
        w.cutover_to("v2").await;
        tokio::time::sleep(INTERVAL).await;
        // All traffic on v2, v1 still running beside it.
        w.runtime.running().len()
    };
    let (report, running_while_watched) = tokio::join!(deploy, look);
    let report = report.unwrap();
    assert_eq!(running_while_watched, 4, "v1 kept running during the watch");
    assert!(started.elapsed() >= WATCH, "{:?}", started.elapsed());
    assert_eq!(w.watch_checks(report.deployment), vec!["pass"; 6]);
    w.assert_consistent("v2");
    assert_eq!(
        w.retained_versions(),
        ["v1"],
        "v1 stopped and kept after the watch"
    );
}

#[tokio::test(start_paused = true)]
async fn a_version_failing_after_cutover_is_routed_back_at_the_first_failed_check() {
    let metrics = FakeMetrics::default();
    let w = watched_world(StrategyKind::BlueGreen, &metrics).await;
    metrics.set("v2", 1000.0, 0.0);
    let before = w.shared.calls().len();
    let deploy = w.watched("v2", &metrics);
    let breaks = async {
        w.cutover_to("v2").await;
        metrics.set("v2", 1000.0, 0.30);
        let broke = tokio::time::Instant::now();
        while w.live_versions() != ["v1", "v1"] {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        broke.elapsed()
    };
    let (result, back_after) = tokio::join!(deploy, breaks);
    let err = result.unwrap_err();
    let (id, cause, message) = failed(&err);
    assert_eq!(cause, Cause::Watch);
    assert!(err.to_string().contains("traffic stays on v1"), "{err}");
    assert!(message.contains("error rate 30.00%"), "{message}");
    assert!(message.contains("fast-track rollback"), "{message}");
    assert!(
        back_after <= INTERVAL + Duration::from_secs(1),
        "{back_after:?}"
    );
    assert_eq!(
        w.watch_checks(id),
        ["fail"],
        "no failure limit, no new analysis"
    );
    let calls = w.calls_since(before);
    let applies = calls
        .iter()
        .filter(|c| c.starts_with("router.apply"))
        .count();
    assert_eq!(applies, 2, "the flip and one change back: {calls:#?}");
    assert!(
        !calls.iter().any(|c| c.starts_with("runtime.restart")),
        "the kept replicas served at once, nothing restarted: {calls:#?}"
    );
    w.assert_consistent("v1");
    assert_eq!(w.runtime.existing().len(), 2, "v2's replicas removed");
    let last = &w.store.history(None, 1).unwrap()[0];
    assert_eq!(last.outcome, Outcome::Failed);
}

#[tokio::test(start_paused = true)]
async fn kept_replicas_that_stopped_answering_are_restored_in_moves() {
    let metrics = FakeMetrics::default();
    let w = watched_world(StrategyKind::BlueGreen, &metrics).await;
    metrics.set("v2", 1000.0, 0.0);
    let deploy = w.watched("v2", &metrics);
    let breaks = async {
        w.cutover_to("v2").await;
        // One kept v1 replica stops answering, then v2 fails.
        let v1 = w.store.service(&w.spec.name).unwrap().active.unwrap();
        w.runtime
            .unhealthy_names
            .borrow_mut()
            .insert(v1.instances[0].name.clone());
        metrics.set("v2", 1000.0, 0.30);
        tokio::time::sleep(INTERVAL * 2).await;
        w.runtime.unhealthy_names.borrow_mut().clear();
    };
    let before = w.shared.calls().len();
    let (result, ()) = tokio::join!(deploy, breaks);
    let (_, cause, _) = failed(&result.unwrap_err());
    assert_eq!(cause, Cause::Watch);
    let calls = w.calls_since(before);
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with("runtime.restart sy-web-blue")),
        "stopped and restarted rather than routed to a replica that does not answer: {calls:#?}"
    );
    w.assert_consistent("v1");
}

#[tokio::test(start_paused = true)]
async fn a_rolling_deploy_is_watched_and_restored_by_restarting_within_its_bounds() {
    let metrics = FakeMetrics::default();
    let w = watched_world(StrategyKind::Rolling, &metrics).await;
    metrics.set("v2", 1000.0, 0.0);
    let before = w.shared.calls().len();
    let deploy = w.watched("v2", &metrics);
    let breaks = async {
        w.cutover_to("v2").await;
        let running = w.runtime.running().len();
        metrics.set("v2", 1000.0, 0.30);
        running
    };
    let (result, running_at_cutover) = tokio::join!(deploy, breaks);
    assert_eq!(
        running_at_cutover, 2,
        "rolling stops the old replicas as it goes"
    );
    let (id, cause, message) = failed(&result.unwrap_err());
    assert_eq!(cause, Cause::Watch);
    assert!(message.contains("restored"), "{message}");
    assert_eq!(w.watch_checks(id), ["fail"]);
    let calls = w.calls_since(before);
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.starts_with("runtime.restart"))
            .count(),
        2,
        "v1's stopped replicas restarted: {calls:#?}"
    );
    w.assert_consistent("v1");
}

#[tokio::test(start_paused = true)]
async fn a_promoted_canary_is_watched_and_routed_back_to_the_stable_replicas() {
    let metrics = FakeMetrics::default();
    let mut w = watched_world(StrategyKind::Canary, &metrics).await;
    w.spec.canary.hold = INTERVAL;
    w.spec.canary.window = INTERVAL;
    metrics.set("v2", 1000.0, 0.0);
    let deploy = w.watched("v2", &metrics);
    let breaks = async {
        w.cutover_to("v2").await;
        metrics.set("v2", 1000.0, 0.30);
    };
    let (result, ()) = tokio::join!(deploy, breaks);
    let err = result.unwrap_err();
    let (id, cause, message) = failed(&err);
    assert_eq!(cause, Cause::Watch);
    assert!(message.contains("fast-track rollback"), "{message}");
    assert_eq!(w.watch_checks(id), ["fail"]);
    w.assert_consistent("v1");
    assert_eq!(w.canary_weight(), None);
}

#[tokio::test(start_paused = true)]
async fn abort_rolls_a_watch_back_and_promote_ends_it() {
    let metrics = FakeMetrics::default();
    let w = watched_world(StrategyKind::BlueGreen, &metrics).await;
    metrics.set("v2", 1000.0, 0.0);
    metrics.set("v3", 1000.0, 0.0);
    let (result, ()) = tokio::join!(w.watched("v2", &metrics), w.operator("v2", Control::Abort));
    let (_, cause, _) = failed(&result.unwrap_err());
    assert_eq!(cause, Cause::Aborted);
    w.assert_consistent("v1");

    let started = tokio::time::Instant::now();
    let (result, ()) = tokio::join!(
        w.watched("v3", &metrics),
        w.operator("v3", Control::Promote)
    );
    result.unwrap();
    assert!(
        started.elapsed() < WATCH,
        "promote ended the watch: {:?}",
        started.elapsed()
    );
    w.assert_consistent("v3");
}

impl World {
    /// Sends `control` to the running deployment once `version` took all traffic.
    async fn operator(&self, version: &str, control: Control) {
        self.cutover_to(version).await;
        let (d, _) = self.store.unfinished(&self.spec.name).unwrap().unwrap();
        self.store.put_control(d.id, control, 0).unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn checks_without_data_end_nothing() {
    let metrics = FakeMetrics::default();
    let w = watched_world(StrategyKind::BlueGreen, &metrics).await;
    // v2 has no entry: every check is "no data".
    let report = w.watched("v2", &metrics).await.unwrap();
    assert_eq!(w.watch_checks(report.deployment), vec!["no_data"; 6]);
    w.assert_consistent("v2");
}

#[tokio::test(start_paused = true)]
async fn a_process_killed_while_watching_is_finished_by_the_next_deploy() {
    let metrics = FakeMetrics::default();
    let w = watched_world(StrategyKind::BlueGreen, &metrics).await;
    metrics.set("v2", 1000.0, 0.0);
    // Find the `watching` step's number on a dry run of the journal: kill right after it.
    let dry = watched_world(StrategyKind::BlueGreen, &metrics).await;
    let dry_from = dry.journal_steps().len();
    dry.watched("v2", &metrics).await.unwrap();
    let n = dry.step_number(dry_from, "watching");
    w.killed_during(n, w.watched("v2", &metrics)).await;
    assert_eq!(w.runtime.running().len(), 4, "killed with v1 kept running");
    w.watched("v2", &metrics).await.unwrap();
    w.assert_consistent("v2");
    assert_eq!(w.retained_versions(), ["v1"]);
}

#[tokio::test(start_paused = true)]
async fn killed_on_the_way_back_a_failed_version_is_never_finished_forward() {
    let metrics = FakeMetrics::default();
    // Where `failing` is written when the watch fails v2: counted on a dry run.
    let dry = watched_world(StrategyKind::BlueGreen, &metrics).await;
    metrics.set("v2", 1000.0, 0.30);
    let dry_from = dry.journal_steps().len();
    dry.watched("v2", &metrics).await.unwrap_err();
    let failing = dry.step_number(dry_from, "failing");
    let total = dry.journal_steps().len() - dry_from;
    for n in failing..total {
        let w = watched_world(StrategyKind::BlueGreen, &metrics).await;
        w.killed_during(n, w.watched("v2", &metrics)).await;
        // The same deploy again: the interrupted one goes back to v1, then v2 is deployed
        // afresh, watched, and fails again: v2 is never activated unwatched.
        let err = w.watched("v2", &metrics).await.unwrap_err();
        assert_eq!(
            failed(&err).1,
            Cause::Watch,
            "killed after write {n}: {err}"
        );
        w.assert_consistent("v1");
    }
}

#[tokio::test(start_paused = true)]
async fn an_abort_acts_within_a_poll_and_routes_back_even_with_on_failure_pause() {
    let metrics = FakeMetrics::default();
    let mut w = watched_world(StrategyKind::Rolling, &metrics).await;
    w.spec.rolling.on_failure = crate::config::OnFailure::Pause;
    metrics.set("v2", 1000.0, 0.0);
    let aborted = async {
        w.operator("v2", Control::Abort).await;
        tokio::time::Instant::now()
    };
    let (result, sent) = tokio::join!(w.watched("v2", &metrics), aborted);
    let (id, cause, _) = failed(&result.unwrap_err());
    assert_eq!(cause, Cause::Aborted);
    assert!(
        w.watch_checks(id).is_empty(),
        "acted before the first check"
    );
    // Rolled back (restarts and health waits included) well before the first check was due.
    assert!(
        sent.elapsed() < INTERVAL,
        "{:?} after the abort",
        sent.elapsed()
    );
    w.assert_consistent("v1");
}
