//! The post-cutover watch end to end: real nginx, Docker replicas of the demo-app, the
//! embedded judge reading nginx's access log, and a non-retrying load throughout. A version
//! that fails once it has all the traffic (blue-green: nothing judged it before) is routed
//! back to the replicas kept running at the first failed check; the only failed requests are
//! that version's own 500s, none from the switch. A good version is watched for the whole
//! `watch` and only then are the previous replicas stopped.

use std::time::Instant;

use switchyard_app::load::FailureKind;
use switchyard_app::progress::Progress;
use switchyard_app::sandbox::{Sandbox, SERVICE};
use switchyard_engine::config::{RuntimeChoice, StrategyKind};
use switchyard_engine::{DeploymentId, InstanceStatus, Name, Runtime, Step, Store};

use crate::canary::FAST;
use crate::support::{assert_no_failures, responses_from};

async fn sandbox(watch: &str, env: &[(&str, &str)]) -> Option<Sandbox> {
    crate::e2e::sandbox(RuntimeChoice::Docker, |mut o| {
        o.canary = FAST.to_owned();
        let o = o.service_keys(&format!("watch = {watch:?}"));
        env.iter().fold(o, |o, (k, v)| o.env(k, v))
    })
    .await
}

/// The verdicts of the watch's checks (`analysis` at 100%), and the replicas it kept.
fn watch_journal(sandbox: &Sandbox, id: DeploymentId) -> (Vec<String>, usize) {
    let (_, journal) = sandbox.live().store.deployment(id).unwrap().unwrap();
    let checks = journal
        .iter()
        .filter_map(|e| match &e.step {
            Step::Analysis {
                weight_bp: 10_000,
                verdict,
                ..
            } => Some(verdict.clone()),
            _ => None,
        })
        .collect();
    let kept = journal
        .iter()
        .find_map(|e| match &e.step {
            Step::Watching { kept, .. } => Some(kept.len()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no watching step: {journal:#?}"));
    (checks, kept)
}

/// The versions of the service's containers Docker runs now.
async fn running_versions(sandbox: &Sandbox) -> Vec<String> {
    let runtime = &sandbox.live().runtime;
    let mut versions = Vec::new();
    for i in runtime.list(&Name::parse(SERVICE).unwrap()).await.unwrap() {
        if matches!(
            runtime.status(&i).await.unwrap(),
            InstanceStatus::Running { .. }
        ) {
            versions.push(i.version.to_string());
        }
    }
    versions.sort();
    versions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_failing_after_cutover_is_routed_back_and_the_switch_fails_nothing() {
    let env = [("FAIL_RATE", "0.5"), ("FAILING_VERSIONS", "v2")];
    let Some(sandbox) = sandbox("30s", &env).await else {
        return;
    };
    sandbox
        .deploy("v1", &Progress::new(false))
        .await
        .expect("v1 deploys");
    let load = crate::support::load(sandbox.url(), 32);
    responses_from(&load, "v1", 200).await;
    let err = sandbox
        .deploy_with("v2", StrategyKind::BlueGreen, &Progress::new(false))
        .await
        .expect_err("the watch fails v2");
    let routed_back = Instant::now();
    assert_eq!(err.code, 1, "{err}");
    assert!(err.message.contains("traffic stays on v1"), "{err}");
    assert!(
        err.message
            .contains("watching v2 after it took all traffic, check 1"),
        "{err}"
    );
    assert!(err.message.contains("fast-track rollback"), "{err}");
    responses_from(&load, "v1", load.snapshot().by_version["v1"].count + 300).await;
    let traffic = load.stop().await;
    assert_eq!(traffic.retried, 0, "nothing was re-sent: {traffic}");
    assert!(traffic.failed > 0, "v2 really failed requests: {traffic}");
    assert_eq!(
        traffic.failed_by_version.get("v2"),
        Some(&traffic.failed),
        "every failure, beyond the ones kept in detail, is v2's own: {traffic}"
    );
    for failure in &traffic.failures {
        match &failure.kind {
            FailureKind::Status {
                code: 500,
                version: Some(v),
            } if v == "v2" => {}
            other => panic!(
                "only v2's own 500s may fail, none from the switch, not {other:?}:\n{traffic}"
            ),
        }
    }
    let last_v2 = traffic.by_version.get("v2").map(|v| v.last);
    assert!(
        last_v2.is_some_and(|t| t <= routed_back),
        "v2 served, and nothing after the way back: {traffic}"
    );
    let history = sandbox.live().store.history(None, 1).unwrap();
    let (checks, kept) = watch_journal(&sandbox, history[0].id);
    assert_eq!(
        checks,
        ["fail"],
        "routed back at the first check, no further analysis"
    );
    assert_eq!(kept, 2, "both v1 replicas kept running for the watch");
    assert_eq!(running_versions(&sandbox).await, ["v1", "v1"], "v2 removed");
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_version_is_watched_then_the_previous_replicas_stop() {
    let Some(sandbox) = sandbox("4s", &[]).await else {
        return;
    };
    sandbox
        .deploy("v1", &Progress::new(false))
        .await
        .expect("v1 deploys");
    let load = crate::support::load(sandbox.url(), 32);
    responses_from(&load, "v1", 200).await;
    let started = Instant::now();
    let quiet = Progress::new(false);
    let deploy = sandbox.deploy_with("v2", StrategyKind::BlueGreen, &quiet);
    let watch = async {
        // Once v2 has all the traffic, v1's replicas still run beside it.
        responses_from(&load, "v2", 100).await;
        running_versions(&sandbox).await
    };
    let (report, during) = tokio::join!(deploy, watch);
    let report = report.expect("v2 passes its watch");
    assert_eq!(
        during,
        ["v1", "v1", "v2", "v2"],
        "v1 kept running while watched"
    );
    assert!(
        started.elapsed().as_secs() >= 4,
        "the whole watch: {:?}",
        started.elapsed()
    );
    responses_from(&load, "v2", load.snapshot().by_version["v2"].count + 200).await;
    let traffic = load.stop().await;
    assert_no_failures(&traffic);
    let (checks, _) = watch_journal(&sandbox, report.deployment);
    assert!(
        !checks.is_empty() && checks.iter().all(|c| c == "pass"),
        "judged on real traffic: {checks:?}"
    );
    assert_eq!(
        running_versions(&sandbox).await,
        ["v2", "v2"],
        "v1 stopped after the watch"
    );
    sandbox.shutdown().await.unwrap();
}
