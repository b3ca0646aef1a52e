//! End to end for the rolling and in-place strategies: real nginx, real Docker containers of
//! the static demo-app (and once as local processes), the real SQLite store, and the load
//! generator running through the whole rollout. Every test asserts zero failed and zero
//! re-sent requests while traffic moves, counted by a client that never re-sends.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard_app::live::AnyRuntime;
use switchyard_app::load::Load;
use switchyard_app::sandbox::{Sandbox, SERVICE};
use switchyard_docker::image::{build_scratch_image, ScratchImage};
use switchyard_docker::DockerRuntime;
use switchyard_engine::config::{RuntimeChoice, StrategyKind};
use switchyard_engine::{Event, Instance, InstanceStatus, Name, Observer, Quiet, Runtime, Store};

use crate::e2e::{assert_no_failures, sandbox};
use crate::support::{eventually, require_demo_app};

const CONNECTIONS: usize = 32;
const SURGE_ONE: &str = "max_surge = 1\nmax_unavailable = 0";

fn load(sandbox: &Sandbox) -> Load {
    crate::support::load(sandbox.url(), CONNECTIONS)
}

fn service() -> Name {
    Name::parse(SERVICE).unwrap()
}

fn count_from(load: &Load, version: &str) -> u64 {
    load.snapshot()
        .by_version
        .get(version)
        .map_or(0, |v| v.count)
}

/// Waits until `load` has seen `n` more successful responses from `version` than now.
async fn more_responses_from(load: &Load, version: &str, n: u64) {
    let target = count_from(load, version) + n;
    eventually(
        Duration::from_secs(30),
        &format!("{n} more responses from {version}"),
        || async { count_from(load, version) >= target },
    )
    .await;
}

/// Every instance of the service the runtime has, with whether it is running.
async fn instances(sandbox: &Sandbox) -> Vec<(Instance, bool)> {
    let runtime = &sandbox.live().runtime;
    let mut out = Vec::new();
    for instance in runtime.list(&service()).await.unwrap() {
        let running = matches!(
            runtime.status(&instance).await.unwrap(),
            InstanceStatus::Running { .. }
        );
        out.push((instance, running));
    }
    out.sort_by_key(|(i, _)| (i.version.to_string(), i.replica));
    out
}

/// How many containers of the service are running, their states checked concurrently.
async fn running_now(docker: &Arc<DockerRuntime>) -> usize {
    let mut checks = tokio::task::JoinSet::new();
    for instance in docker.list(&service()).await.unwrap() {
        let docker = Arc::clone(docker);
        checks.spawn(async move { docker.status(&instance).await.unwrap() });
    }
    let mut running = 0;
    while let Some(status) = checks.join_next().await {
        if matches!(status.unwrap(), InstanceStatus::Running { .. }) {
            running += 1;
        }
    }
    running
}

/// Versions of the running instances, sorted.
async fn running_versions(sandbox: &Sandbox) -> Vec<String> {
    let mut versions: Vec<String> = instances(sandbox)
        .await
        .into_iter()
        .filter(|(_, running)| *running)
        .map(|(i, _)| i.version.to_string())
        .collect();
    versions.sort();
    versions
}

fn active_version(sandbox: &Sandbox) -> Option<String> {
    sandbox
        .live()
        .store
        .service(&service())
        .unwrap()
        .active
        .map(|s| s.version.to_string())
}

async fn rolling_four_replicas(runtime: RuntimeChoice) {
    let Some(sandbox) = sandbox(runtime, |o| o.replicas(4).strategy("rolling", SURGE_ONE)).await
    else {
        return;
    };
    sandbox
        .deploy_with("v1", StrategyKind::Rolling, &Quiet)
        .await
        .expect("v1 deploys");
    assert_eq!(running_versions(&sandbox).await, ["v1"; 4]);
    let load = load(&sandbox);
    more_responses_from(&load, "v1", 200).await;
    let started = Instant::now();
    let report = sandbox
        .deploy_with("v2", StrategyKind::Rolling, &Quiet)
        .await
        .expect("v2 rolls out");
    let deployed = Instant::now();
    more_responses_from(&load, "v2", 500).await;
    let traffic = load.stop().await;
    eprintln!(
        "{runtime:?} rolling 4 replicas: deploy {:?}\n{traffic}\nretried: {}",
        deployed - started,
        traffic.retried
    );
    assert_no_failures(&traffic);

    let rollout = report
        .rollout
        .as_ref()
        .expect("a rolling deploy reports its rollout");
    assert_eq!(rollout.strategy, "rolling");
    assert_eq!((rollout.max_surge, rollout.max_unavailable), (1, 0));
    assert_eq!(
        rollout.batches.len(),
        4,
        "one replica per batch: {rollout:#?}"
    );
    for batch in &rollout.batches {
        assert_eq!(
            (batch.added.len(), batch.removed.len()),
            (1, 1),
            "{rollout:#?}"
        );
    }
    assert_eq!(rollout.reloads, 4, "{rollout:#?}");
    assert!(
        rollout.peak_running <= 5,
        "replicas + max_surge: {rollout:#?}"
    );
    assert_eq!(rollout.gap_ms, None, "{rollout:#?}");

    let (v1, v2) = (&traffic.by_version["v1"], &traffic.by_version["v2"]);
    assert!(
        v1.last <= deployed,
        "no request sent after the rollout returned was answered by v1"
    );
    assert!(
        v2.first < v1.last,
        "v1 and v2 served side by side while the rollout moved (a rolling update, not a flip)"
    );

    let record = sandbox.live().store.service(&service()).unwrap();
    assert_eq!(active_version(&sandbox).as_deref(), Some("v2"));
    assert_eq!(record.active.as_ref().unwrap().instances.len(), 4);
    assert!(
        record.retained.iter().any(|s| s.version.as_str() == "v1"),
        "v1 retained for rollback: {:?}",
        record.retained
    );
    // v1 is kept, stopped; only v2 runs.
    let all = instances(&sandbox).await;
    let summary: Vec<(String, bool)> = all
        .iter()
        .map(|(i, running)| (i.version.to_string(), *running))
        .collect();
    let expected: Vec<(String, bool)> = [("v1", false); 4]
        .into_iter()
        .chain([("v2", true); 4])
        .map(|(v, r)| (v.to_owned(), r))
        .collect();
    assert_eq!(summary, expected, "{all:#?}");
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_rolling_four_replicas_fails_no_request() {
    rolling_four_replicas(RuntimeChoice::Docker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_rolling_four_replicas_fails_no_request() {
    rolling_four_replicas(RuntimeChoice::Process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_in_place_three_replicas_never_runs_more_than_three() {
    // The preset's max_surge = 0, max_unavailable = 1.
    let Some(sandbox) = sandbox(RuntimeChoice::Docker, |o| {
        o.replicas(3).strategy("in-place", "")
    })
    .await
    else {
        return;
    };
    sandbox
        .deploy_with("v1", StrategyKind::InPlace, &Quiet)
        .await
        .expect("v1 deploys");
    let before = instances(&sandbox).await;
    assert!(before
        .iter()
        .all(|(i, running)| *running && i.version.as_str() == "v1"));
    assert_eq!(before.len(), 3);
    let v1_ports: BTreeSet<u16> = before.iter().map(|(i, _)| i.host_port).collect();
    assert_eq!(v1_ports.len(), 3, "{before:#?}");

    let load = load(&sandbox);
    more_responses_from(&load, "v1", 200).await;
    let done = AtomicBool::new(false);
    let started = Instant::now();
    let deploy = async {
        let report = sandbox
            .deploy_with("v2", StrategyKind::InPlace, &Quiet)
            .await;
        done.store(true, Ordering::SeqCst);
        report
    };
    // Running containers of this sandbox's service, every ~50 ms while the deploy runs: a
    // client of our own in the sandbox's scope, so the status checks of one poll run at once.
    let AnyRuntime::Docker(docker) = &sandbox.live().runtime else {
        unreachable!("a docker sandbox");
    };
    let docker = Arc::new(DockerRuntime::connect(docker.scope()).await.unwrap());
    let watch = async {
        let (mut max, mut polls) = (0, 0);
        while !done.load(Ordering::SeqCst) {
            max = max.max(running_now(&docker).await);
            polls += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (max, polls)
    };
    let (report, (max_running, polls)) = tokio::join!(deploy, watch);
    let report = report.expect("v2 deploys in place");
    let deployed = Instant::now();
    more_responses_from(&load, "v2", 500).await;
    let traffic = load.stop().await;
    let rollout = report
        .rollout
        .as_ref()
        .expect("an in-place deploy reports its rollout");
    eprintln!(
        "docker in-place 3 replicas: deploy {:?}, {polls} polls, max running {max_running}, {} batches\n{traffic}\nretried: {}",
        deployed - started,
        rollout.batches.len(),
        traffic.retried
    );
    assert_no_failures(&traffic);
    assert!(polls >= 5, "the watcher polled through the deploy: {polls}");
    assert!(
        max_running <= 3,
        "in-place never runs more than replicas: saw {max_running} running"
    );
    assert_eq!(rollout.strategy, "in-place");
    assert_eq!((rollout.max_surge, rollout.max_unavailable), (0, 1));
    assert!(rollout.peak_running <= 3, "{rollout:#?}");
    assert_eq!(
        rollout.gap_ms, None,
        "never without a replica in the upstream"
    );
    assert!(
        traffic.by_version["v1"].last <= deployed,
        "no request sent after the deploy returned was answered by v1"
    );

    let after = instances(&sandbox).await;
    let v2: Vec<&Instance> = after
        .iter()
        .filter(|(i, running)| *running && i.version.as_str() == "v2")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(v2.len(), 3, "{after:#?}");
    assert!(
        after
            .iter()
            .all(|(i, running)| !running || i.version.as_str() == "v2"),
        "only v2 runs: {after:#?}"
    );
    let v2_ports: BTreeSet<u16> = v2.iter().map(|i| i.host_port).collect();
    assert_eq!(
        v2_ports, v1_ports,
        "the new replicas took over the old ones' host ports"
    );
    assert_eq!(active_version(&sandbox).as_deref(), Some("v2"));
    sandbox.shutdown().await.unwrap();
}

/// The version whose image tag is rebuilt, broken, once batch 1 is healthy. Its own tag, so no
/// other test (they run in parallel, sharing `switchyard-demo:v2`) can start a broken image.
const BAD: &str = "v2-bad-after-batch-1";

/// An observer that, the first time a batch's replicas are healthy, rebuilds the image tag of
/// [`BAD`] from the same demo-app binary with `HEALTH_FAIL=1` baked in. Containers created
/// before keep their (healthy) image; every replica started afterwards answers /health 503.
/// The demo-app's knobs are per version, and a container does not know its replica, so this
/// is how one version can pass in batch 1 and fail in batch 2. It blocks the deploy while it
/// builds (the deploy runs on the test's thread; load and nginx do not wait for it).
struct BreakImageAfterFirstBatch {
    binary: PathBuf,
    fired: AtomicBool,
    error: Mutex<Option<String>>,
}

impl Observer for BreakImageAfterFirstBatch {
    fn event(&self, event: &Event) {
        if !matches!(event, Event::Healthy { .. }) || self.fired.swap(true, Ordering::SeqCst) {
            return;
        }
        let binary = self.binary.clone();
        let built = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let docker = DockerRuntime::connect("rolling-test-image")
                    .await
                    .map_err(|e| e.to_string())?;
                let tag = format!("{}:{BAD}", switchyard_app::sandbox::IMAGE);
                let image = ScratchImage {
                    tag: &tag,
                    binary: &binary,
                    env: &[("HEALTH_FAIL", "1")],
                    healthcheck: None,
                };
                build_scratch_image(&docker, &image)
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .join()
        .unwrap_or_else(|_| Err("the image build thread panicked".into()));
        if let Err(e) = built {
            *self.error.lock().unwrap() = Some(e);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_bad_version_fails_in_batch_two_and_service_ends_on_old() {
    let Some(sandbox) = sandbox(RuntimeChoice::Docker, |mut o| {
        o.health =
            r#"path = "/health", interval = "100ms", healthy_after = 2, deadline = "8s""#.into();
        o.replicas(4).strategy("rolling", SURGE_ONE)
    })
    .await
    else {
        return;
    };
    let Some(binary) = require_demo_app() else {
        return;
    };
    sandbox
        .deploy_with("v1", StrategyKind::Rolling, &Quiet)
        .await
        .expect("v1 deploys");
    let v1_ids: BTreeSet<String> = instances(&sandbox)
        .await
        .into_iter()
        .map(|(i, _)| i.id)
        .collect();
    let load = load(&sandbox);
    more_responses_from(&load, "v1", 200).await;
    let breaker = BreakImageAfterFirstBatch {
        binary,
        fired: AtomicBool::new(false),
        error: Mutex::new(None),
    };
    let started = Instant::now();
    // deploy_with builds the good image for BAD first (this process has not built it yet).
    let err = sandbox
        .deploy_with(BAD, StrategyKind::Rolling, &breaker)
        .await
        .expect_err("batch 2's replica never becomes healthy");
    let failed = Instant::now();
    assert_eq!(
        *breaker.error.lock().unwrap(),
        None,
        "rebuilding the image broken"
    );
    assert!(
        breaker.fired.load(Ordering::SeqCst),
        "batch 1 became healthy"
    );
    more_responses_from(&load, "v1", 500).await;
    let traffic = load.stop().await;
    eprintln!(
        "docker rolling, bad in batch 2: failed after {:?}: {err}\n{traffic}\nretried: {}",
        failed - started,
        traffic.retried
    );
    assert_eq!(err.code, 1, "{err}");
    assert!(err.message.contains("batch 2"), "{err}");
    assert!(
        err.message
            .contains("last health response: 503 unhealthy: HEALTH_FAIL is set"),
        "{err}"
    );
    assert_no_failures(&traffic);
    let bad = traffic
        .by_version
        .get(BAD)
        .unwrap_or_else(|| panic!("batch 1's replica served: {traffic}"));
    assert!(
        bad.last <= failed,
        "no request sent after the deploy failed was answered by {BAD}"
    );

    assert_eq!(active_version(&sandbox).as_deref(), Some("v1"));
    let after = instances(&sandbox).await;
    assert!(
        after.iter().all(|(i, _)| i.version.as_str() == "v1"),
        "no {BAD} container is left, running or not: {after:#?}"
    );
    let running_v1: Vec<&Instance> = after
        .iter()
        .filter(|(_, running)| *running)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(running_v1.len(), 4, "all four v1 replicas run: {after:#?}");
    let after_ids: BTreeSet<String> = running_v1.iter().map(|i| i.id.clone()).collect();
    assert_eq!(
        after_ids, v1_ids,
        "the replaced v1 replica was restarted, not recreated"
    );
    sandbox.shutdown().await.unwrap();
}
