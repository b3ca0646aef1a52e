//! `switchyard adopt` end to end: a container started with a plain `docker run -d -p
//! 127.0.0.1:<port>:8080` (no switchyard labels) is adopted through the binary as the live
//! version of the sandbox's service, nginx sends traffic to it, and the next deploy replaces
//! it under a load that never re-sends: 0 failed, traffic on v2, the adopted container
//! stopped (kept for rollback, not removed). And the refusals, each exit 2 with nothing
//! recorded. Every container a test runs carries the label `switchyard-test=adopt` and a
//! unique name, and is removed by that name when the test ends, also on failure.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use switchyard_app::live::HttpProber;
use switchyard_app::progress::Progress;
use switchyard_app::sandbox::{Sandbox, SERVICE};
use switchyard_docker::DockerRuntime;
use switchyard_engine::config::RuntimeChoice;
use switchyard_engine::{Name, Prober, ServiceRecord, Store};

use crate::support::{
    assert_exit, assert_no_failures, eventually, free_port, get, load, responses_from, text,
};

/// A container this test ran with `docker`; removed (`docker rm -f`) by name on drop.
struct HandRun {
    name: String,
}

impl HandRun {
    /// `docker <verb> --name <unique> --label switchyard-test=adopt <args> <image>`.
    fn new(verb: &str, args: &[&str], image: &str) -> HandRun {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "sy-adopt-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let run = HandRun { name };
        let mut cmd = Command::new("docker");
        cmd.arg(verb);
        if verb == "run" {
            cmd.arg("-d");
        }
        cmd.args(["--name", &run.name, "--label", "switchyard-test=adopt"])
            .args(args)
            .arg(image);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "docker {verb} {}: {}",
            run.name,
            text(&out.stderr)
        );
        run
    }
}

impl Drop for HandRun {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
    }
}

async fn sandbox() -> Option<Sandbox> {
    crate::e2e::sandbox(RuntimeChoice::Docker, |o| o.replicas(1)).await
}

fn switchyard(sandbox: &Sandbox, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--config")
        .arg(&sandbox.config_path)
        .args(args)
        .output()
        .unwrap()
}

/// The sandbox's demo image of `version`, built if needed.
async fn image(sandbox: &Sandbox, version: &str) -> String {
    sandbox.ensure_image(version).await.unwrap();
    format!("{}:{version}", switchyard_app::sandbox::IMAGE)
}

/// Waits until the app in a hand-run container answers its health path on `port` (Docker's
/// proxy accepts connections before the app listens).
async fn answers(port: u16) {
    let prober = HttpProber::default();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let timeout = Duration::from_secs(1);
    eventually(
        Duration::from_secs(10),
        "the hand-run container answers",
        || async { prober.probe(addr, "/health", timeout).await.ok },
    )
    .await;
}

fn record(sandbox: &Sandbox) -> ServiceRecord {
    let name = Name::parse(SERVICE).unwrap();
    sandbox.live().store.service(&name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopted_container_serves_and_the_next_deploy_replaces_it_without_a_failed_request() {
    let Some(sandbox) = sandbox().await else {
        return;
    };
    let v1 = image(&sandbox, "v1").await;
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:8080");
    let container = HandRun::new(
        "run",
        &["-p", &publish, "-e", "APP_VERSION=v1", "-e", "LATENCY_MS=5"],
        &v1,
    );
    answers(port).await;

    let out = switchyard(
        &sandbox,
        &["adopt", SERVICE, "--container", &container.name],
    );
    assert_exit(&out, 0);
    let said = text(&out.stdout);
    assert!(
        said.contains(&format!("web v1 is live: container {}", container.name)),
        "{said}"
    );
    let (status, body) = get(sandbox.listen, "/").await;
    assert_eq!((status, body.trim()), (200, r#"{"version":"v1"}"#));
    let active = record(&sandbox).active.expect("an active slot");
    assert_eq!(active.version.as_str(), "v1");
    assert_eq!(active.instances.len(), 1);
    assert_eq!(active.instances[0].name, container.name);
    assert_eq!(active.instances[0].host_port, port);
    let out = switchyard(&sandbox, &["--output", "json", "history", SERVICE]);
    assert_exit(&out, 0);
    assert!(text(&out.stdout).contains(r#""strategy": "adopt""#));

    let load = load(sandbox.url(), 16);
    responses_from(&load, "v1", 200).await;
    sandbox
        .deploy("v2", &Progress::new(false))
        .await
        .expect("v2 replaces the adopted container");
    responses_from(&load, "v2", 200).await;
    let report = load.stop().await;
    assert_no_failures(&report);
    assert!(report.by_version["v1"].count > 0 && report.by_version["v2"].count > 0);

    let record = record(&sandbox);
    assert_eq!(record.active.expect("v2 active").version.as_str(), "v2");
    assert_eq!(
        record.retained[0].version.as_str(),
        "v1",
        "kept for rollback"
    );
    let docker = DockerRuntime::connect("probe").await.unwrap();
    let adopted = docker.inspect(&container.name).await.unwrap();
    let adopted = adopted.expect("stopped, not removed");
    assert!(!adopted.running, "the adopted container was stopped");
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_be_adopted_is_refused_with_exit_2_and_nothing_recorded() {
    let Some(sandbox) = sandbox().await else {
        return;
    };
    let v1 = image(&sandbox, "v1").await;
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:8080");
    let healthy = HandRun::new("run", &["-p", &publish], &v1);
    let created = HandRun::new(
        "create",
        &["-p", &format!("127.0.0.1:{}:8080", free_port())],
        &v1,
    );
    let unpublished = HandRun::new("run", &[], &v1);
    let elsewhere = HandRun::new(
        "run",
        &["-p", &format!("127.0.0.1:{}:9090", free_port())],
        &v1,
    );
    let failing_health = HandRun::new(
        "run",
        &[
            "-p",
            &format!("127.0.0.1:{}:8080", free_port()),
            "-e",
            "HEALTH_FAIL=1",
        ],
        &v1,
    );
    let missing = format!("sy-adopt-test-{}-no-such", std::process::id());
    let cases: [(&[&str], &str); 7] = [
        (
            &["adopt", "nosuch", "--container", &healthy.name],
            "no service \"nosuch\"",
        ),
        (
            &["adopt", SERVICE, "--container", &missing],
            "no container named",
        ),
        (
            &["adopt", SERVICE, "--container", &created.name],
            "is created, not running",
        ),
        (
            &["adopt", SERVICE, "--container", &unpublished.name],
            "does not publish port 8080/tcp",
        ),
        (
            &["adopt", SERVICE, "--container", &elsewhere.name],
            "it publishes 9090/tcp on 127.0.0.1:",
        ),
        (
            &["adopt", SERVICE, "--container", &failing_health.name],
            "GET /health on 127.0.0.1:",
        ),
        (
            &[
                "adopt",
                SERVICE,
                "--container",
                &healthy.name,
                "--version",
                "v 1",
            ],
            "--version: invalid version",
        ),
    ];
    for (args, expected) in cases {
        let out = switchyard(&sandbox, args);
        assert_exit(&out, 2);
        let err = text(&out.stderr);
        assert!(
            err.contains(expected),
            "{args:?}: expected {expected:?} in:\n{err}"
        );
    }
    let name = Name::parse(SERVICE).unwrap();
    assert!(sandbox.live().store.history(None, 10).unwrap().is_empty());
    assert_eq!(record(&sandbox), ServiceRecord::default());
    assert!(sandbox.live().store.lock(&name).unwrap().is_none());

    // Once adopted, the service is switchyard's: a second adoption is refused too.
    answers(port).await;
    let out = switchyard(&sandbox, &["adopt", SERVICE, "--container", &healthy.name]);
    assert_exit(&out, 0);
    let out = switchyard(&sandbox, &["adopt", SERVICE, "--container", &healthy.name]);
    assert_exit(&out, 2);
    assert!(
        text(&out.stderr).contains("already runs v1"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(sandbox.live().store.history(None, 10).unwrap().len(), 1);
    sandbox.shutdown().await.unwrap();
}
