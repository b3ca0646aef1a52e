//! `switchyard serve` end to end: the daemon runs in-process on `127.0.0.1:0` beside a
//! sandbox (real nginx, the demo-app as local processes, the real SQLite store), with its
//! own store connection, so the deployment metrics it reads are written by another "process".
//! Tests scrape `/metrics` and match a name, labels and value; a real Prometheus scrapes it
//! and the canary judge's `PromSource` reads the result back. The binary's `serve` command
//! is run once for its listen check and its SIGTERM handling. Every test with traffic asserts
//! zero failed requests.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use switchyard_app::live::Live;
use switchyard_app::load::{Load, LoadConfig};
use switchyard_app::progress::Progress;
use switchyard_app::sandbox::{Sandbox, SandboxOptions, SERVICE};
use switchyard_app::serve::{self, ServeOptions, Server};
use switchyard_app::settings;
use switchyard_engine::config::RuntimeChoice;
use switchyard_engine::judge::{judge, Track, TrackWindow, Verdict};
use switchyard_engine::{Control, Host, MetricSource, Name, Store, Version};
use switchyard_prometheus::testing::start_or_skip;
use switchyard_prometheus::{PromSource, QueryTemplates};

use crate::support::ServeChild;
use crate::support::{assert_no_failures, eventually, free_port, get, require_e2e};

const REQUESTS: &str = "switchyard_proxy_requests_total";
const LATENCY_COUNT: &str = "switchyard_proxy_request_duration_seconds_count";
const LATENCY_BUCKET: &str = "switchyard_proxy_request_duration_seconds_bucket";
const WEIGHT: &str = "switchyard_traffic_weight";
const DEPLOYMENTS: &str = "switchyard_deployments_total";
const DURATIONS: &str = "switchyard_deployment_duration_seconds_count";
const ROLLBACKS: &str = "switchyard_rollbacks_total";
const RELOADS: &str = "switchyard_reload_duration_seconds_count";

async fn scrape(addr: SocketAddr) -> String {
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn status_json(addr: SocketAddr) -> Value {
    let (status, body) = get(addr, "/api/status").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The value of the series `name` whose labels are exactly `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let wanted: BTreeMap<&str, &str> = labels.iter().copied().collect();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, rest) = series.split_once('{').unwrap_or((series, "}"));
            if series_name != name {
                return None;
            }
            let found: BTreeMap<&str, &str> = rest
                .strip_suffix('}')?
                .split(',')
                .filter(|pair| !pair.is_empty())
                .filter_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    Some((k, v.trim_matches('"')))
                })
                .collect();
            (found == wanted).then(|| value.parse().ok())?
        })
}

#[track_caller]
fn expect(text: &str, name: &str, labels: &[(&str, &str)], value: f64) {
    let found = sample(text, name, labels);
    assert_eq!(found, Some(value), "{name}{labels:?} in:\n{text}");
}

/// The labels of a `switchyard_proxy_requests_total` series of `web`.
fn req<'a>(track: &'a str, version: &'a str, code: &'a str) -> [(&'static str, &'a str); 4] {
    [
        ("service", SERVICE),
        ("track", track),
        ("version", version),
        ("code", code),
    ]
}

/// The labels of a per-track series of `web` (the weight, the latency histogram).
fn on<'a>(track: &'a str, version: &'a str) -> [(&'static str, &'a str); 3] {
    [("service", SERVICE), ("track", track), ("version", version)]
}

/// The labels of a `switchyard_deployments_total` series of `web`.
fn ended<'a>(strategy: &'a str, outcome: &'a str) -> [(&'static str, &'a str); 3] {
    [
        ("service", SERVICE),
        ("strategy", strategy),
        ("outcome", outcome),
    ]
}

fn why(reason: &str) -> [(&'static str, &str); 2] {
    [("service", SERVICE), ("reason", reason)]
}

fn step(step: &str) -> [(&'static str, &str); 2] {
    [("service", SERVICE), ("step", step)]
}

/// `canary`: the lines of the `[service.canary]` table.
async fn sandbox(canary: &str) -> Option<Sandbox> {
    let app = require_e2e(RuntimeChoice::Process).await?;
    let mut options = SandboxOptions::new(RuntimeChoice::Process, app)
        .replicas(2)
        .env("LATENCY_MS", "2");
    options.canary = canary.to_owned();
    let sandbox = Sandbox::start(&options).await.expect("sandbox starts");
    crate::support::require_dynamic(&sandbox.live().router).then_some(sandbox)
}

/// serve for `config` with its own live clients (its own store connection), as
/// `switchyard serve` would run beside the deploying process.
async fn serve_for(config: &std::path::Path) -> Server {
    let live = Live::open(settings::load(config).unwrap()).await.unwrap();
    let options = ServeOptions {
        health_every: Duration::from_millis(200),
        ..ServeOptions::new("127.0.0.1:0".parse().unwrap())
    };
    serve::start_with(live, options)
        .await
        .expect("serve starts")
}

fn load(sandbox: &Sandbox, max_requests: u64) -> Load {
    let mut config = LoadConfig::new(sandbox.url());
    config.connections = 4;
    config.max_requests = max_requests;
    config.max_duration = Duration::from_secs(60);
    Load::start(config)
}

/// Scrapes until `version`'s stable 2xx count is `n`, checking on every scrape that it never
/// went down and that no 5xx was counted.
async fn stable_count_reaches(addr: SocketAddr, version: &str, n: u64) {
    let last = Cell::new(0.0);
    let last = &last;
    eventually(
        Duration::from_secs(15),
        &format!("{REQUESTS}{{track=\"stable\",version=\"{version}\",code=\"2xx\"}} == {n}"),
        move || async move {
            let text = scrape(addr).await;
            let count = sample(&text, REQUESTS, &req("stable", version, "2xx"));
            let count = count.expect("the series exists");
            assert!(
                count >= last.get(),
                "the counter went down: {count} after {}",
                last.get()
            );
            assert!(
                count <= n as f64,
                "counted more than was sent: {count} > {n}"
            );
            expect(&text, REQUESTS, &req("stable", version, "5xx"), 0.0);
            last.set(count);
            count == n as f64
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_nginx_traffic_per_version_and_read_deployments_from_the_store() {
    let Some(sandbox) = sandbox("").await else {
        return;
    };
    let server = serve_for(&sandbox.config_path).await;
    let addr = server.addr();
    let quiet = Progress::new(false);

    // Nothing deployed: every series is there, at 0.
    let empty = scrape(addr).await;
    expect(&empty, REQUESTS, &req("stable", "none", "5xx"), 0.0);
    expect(&empty, REQUESTS, &req("canary", "none", "2xx"), 0.0);
    expect(&empty, DEPLOYMENTS, &ended("blue-green", "succeeded"), 0.0);
    expect(&empty, ROLLBACKS, &why("manual"), 0.0);

    sandbox.deploy("v1", &quiet).await.expect("v1 deploys");
    // v1's series exist at 0 before its first request: Prometheus sees every increment.
    let deployed = scrape(addr).await;
    for code in ["2xx", "3xx", "4xx", "5xx"] {
        expect(&deployed, REQUESTS, &req("stable", "v1", code), 0.0);
        expect(&deployed, REQUESTS, &req("canary", "none", code), 0.0);
    }
    expect(&deployed, LATENCY_COUNT, &on("stable", "v1"), 0.0);
    expect(&deployed, WEIGHT, &on("stable", "v1"), 1.0);
    expect(&deployed, WEIGHT, &on("canary", "none"), 0.0);
    expect(
        &deployed,
        DEPLOYMENTS,
        &ended("blue-green", "succeeded"),
        1.0,
    );
    expect(&deployed, DURATIONS, &ended("blue-green", "succeeded"), 1.0);
    expect(&deployed, RELOADS, &step("route"), 1.0);

    let report = load(&sandbox, 300).wait().await;
    assert_no_failures(&report);
    let n = report.ok;
    stable_count_reaches(addr, "v1", n).await;
    let counted = scrape(addr).await;
    expect(&counted, LATENCY_COUNT, &on("stable", "v1"), n as f64);
    let inf = [on("stable", "v1").as_slice(), &[("le", "+Inf")]].concat();
    expect(&counted, LATENCY_BUCKET, &inf, n as f64);

    // serve probes the active instances itself.
    let name = Name::parse(SERVICE).unwrap();
    let active = sandbox.live().store.service(&name).unwrap().active.unwrap();
    for instance in &active.instances {
        let labels = [("service", SERVICE), ("instance", instance.name.as_str())];
        eventually(Duration::from_secs(10), "a health probe", || async {
            sample(&scrape(addr).await, "switchyard_instance_healthy", &labels) == Some(1.0)
        })
        .await;
    }
    let probed = scrape(addr).await;
    let probes = "switchyard_health_check_duration_seconds_count";
    let rounds = sample(&probed, probes, &[("service", SERVICE)]);
    assert!(rounds.is_some_and(|n| n >= 2.0), "{probed}");

    // A new version starts at 0 and the old one keeps its count.
    sandbox.deploy("v2", &quiet).await.expect("v2 deploys");
    let v2_report = load(&sandbox, 200).wait().await;
    assert_no_failures(&v2_report);
    stable_count_reaches(addr, "v2", v2_report.ok).await;
    let after = scrape(addr).await;
    expect(&after, REQUESTS, &req("stable", "v1", "2xx"), n as f64);
    expect(&after, WEIGHT, &on("stable", "v2"), 1.0);

    sandbox.rollback(&quiet).await.expect("rollback to v1");
    let rolled_back = scrape(addr).await;
    expect(&rolled_back, ROLLBACKS, &why("manual"), 1.0);
    expect(
        &rolled_back,
        DEPLOYMENTS,
        &ended("blue-green", "succeeded"),
        3.0,
    );
    expect(&rolled_back, WEIGHT, &on("stable", "v1"), 1.0);
    expect(&rolled_back, RELOADS, &step("route"), 3.0);

    server.shutdown().await.unwrap();
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_serve_and_the_judge_measures_the_stable_track() {
    let Some(sandbox) = sandbox("").await else {
        return;
    };
    let server = serve_for(&sandbox.config_path).await;
    let Some(prometheus) = start_or_skip(server.addr(), Duration::from_secs(1)).await else {
        return;
    };
    sandbox
        .deploy("v1", &Progress::new(false))
        .await
        .expect("v1 deploys");
    prometheus
        .wait_scraped(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", prometheus.log()));
    let traffic = load(&sandbox, 1_000_000);
    let source = PromSource {
        client: prometheus.client(Duration::from_secs(5)),
        templates: QueryTemplates::default(),
    };
    let window = |track| TrackWindow {
        service: Name::parse(SERVICE).unwrap(),
        track,
        version: Version::parse("v1").unwrap(),
        window: Duration::from_secs(10),
    };
    // nginx's log → tailer → /metrics → Prometheus → the judge's PromQL.
    eventually(
        Duration::from_secs(40),
        "prometheus to measure v1's traffic",
        || async {
            source
                .measure(&window(Track::Stable))
                .await
                .is_ok_and(|m| m.requests.is_some_and(|r| r > 0.0) && m.errors == Some(0.0))
        },
    )
    .await;
    let stable = source.measure(&window(Track::Stable)).await.unwrap();
    assert!(stable.p99_latency.is_some_and(f64::is_finite), "{stable:?}");
    // The canary track got nothing (and carries no v1 series: queries select the version):
    // no data or zero requests, and neither ever passes a gate.
    let canary = source.measure(&window(Track::Canary)).await.unwrap();
    assert!(canary.requests.is_none_or(|r| r == 0.0), "{canary:?}");
    let spec = sandbox.spec();
    let verdict = judge(&canary, None, &spec.canary.policy);
    assert!(
        matches!(verdict, Verdict::NoData(_) | Verdict::Inconclusive(_)),
        "{verdict:?}"
    );
    let report = traffic.stop().await;
    assert_no_failures(&report);
    drop(prometheus);
    server.shutdown().await.unwrap();
    sandbox.shutdown().await.unwrap();
}

/// A canary that pauses after its 50 % step, judged by the embedded metrics.
const PAUSING_CANARY: &str = r#"
steps = [50, 100]
pause = [50]
hold = "1s"
interval = "500ms"
window = "5s"
min_requests = 5
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_canary_shows_in_status_and_metrics_and_an_abort_counts_as_a_rollback() {
    let Some(sandbox) = sandbox(PAUSING_CANARY).await else {
        return;
    };
    let quiet = Progress::new(false);
    sandbox.deploy("v1", &quiet).await.expect("v1 deploys");
    // serve has its own store connection: the canary is run as if by another process.
    let server = serve_for(&sandbox.config_path).await;
    let addr = server.addr();
    let traffic = load(&sandbox, 1_000_000);

    let canary = sandbox.deploy_canary("v2", &quiet);
    let checks = async {
        eventually(
            Duration::from_secs(30),
            "the canary to pause at 50%",
            || async { status_json(addr).await["services"][0]["deployment"]["paused"] == true },
        )
        .await;
        let status = status_json(addr).await;
        let web = &status["services"][0];
        assert_eq!(web["service"], SERVICE, "{status:#}");
        assert_eq!(web["active"]["version"], "v1", "{status:#}");
        assert_eq!(web["active"]["color"], "blue", "{status:#}");
        assert_eq!(web["active"]["instances"].as_array().unwrap().len(), 2);
        let running = &web["deployment"];
        assert_eq!(running["strategy"], "canary", "{status:#}");
        assert_eq!(running["to_version"], "v2", "{status:#}");
        assert_eq!(running["step"], "paused", "{status:#}");
        assert_eq!(running["weight_bp"], 5000, "{status:#}");
        assert_eq!(running["canary_weight"], 0.5, "{status:#}");
        assert_eq!(running["analysis"]["weight_bp"], 5000, "{status:#}");
        assert_eq!(running["analysis"]["verdict"], "pass", "{status:#}");
        assert_eq!(web["lock"]["deployment"], running["id"], "{status:#}");
        assert_eq!(web["lock"]["stale"], false, "{status:#}");

        let paused = scrape(addr).await;
        expect(&paused, WEIGHT, &on("stable", "v1"), 0.5);
        expect(&paused, WEIGHT, &on("canary", "v2"), 0.5);
        eventually(
            Duration::from_secs(10),
            "canary traffic under v2",
            || async {
                let text = scrape(addr).await;
                sample(&text, REQUESTS, &req("canary", "v2", "2xx")).is_some_and(|n| n > 0.0)
            },
        )
        .await;
        let id = running["id"].as_i64().unwrap();
        let store = &sandbox.live().store;
        let now = sandbox.live().host.now_ms();
        store.put_control(id, Control::Abort, now).unwrap();
    };
    let (result, ()) = tokio::join!(canary, checks);
    let err = result.expect_err("an aborted canary fails");
    assert_eq!(err.code, 1, "{err}");
    assert!(
        err.message.contains("aborted by `switchyard abort`"),
        "{err}"
    );
    let report = traffic.stop().await;
    assert_no_failures(&report);

    let after = scrape(addr).await;
    expect(&after, ROLLBACKS, &why("aborted"), 1.0);
    expect(&after, DEPLOYMENTS, &ended("canary", "failed"), 1.0);
    expect(&after, WEIGHT, &on("stable", "v1"), 1.0);
    // The canary track keeps its last version, with no traffic.
    expect(&after, WEIGHT, &on("canary", "v2"), 0.0);
    expect(&after, RELOADS, &step("shift"), 1.0);
    assert!(status_json(addr).await["services"][0]["deployment"].is_null());
    server.shutdown().await.unwrap();
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serve_command_refuses_a_remote_listen_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.path().join("switchyard.toml");
    let text = format!(
        "[proxy]\nprefix = \"nginx\"\ncontrol = \"127.0.0.1:{}\"\n[state]\npath = \"state/switchyard.db\"\n\
         [runtime]\nkind = \"process\"\n[serve]\nlisten = \"{listen}\"\n[[service]]\nname = \"web\"\n\
         listen = \"127.0.0.1:{}\"\ncommand = [\"/bin/true\"]\n",
        free_port(),
        free_port()
    );
    std::fs::write(&config, text).unwrap();
    // serve starts the managed nginx, which outlives it.
    let _nginx = crate::proxy::StopsNginx(dir.path().join("nginx/logs/nginx.pid"));
    let switchyard = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        cmd.arg("--config").arg(&config).arg("serve");
        cmd
    };

    let refused = switchyard()
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0"),
        "{stderr}"
    );
    assert!(stderr.contains("set [serve] cert and key"), "{stderr}");
    let live = Live::open(settings::load(&config).unwrap()).await.unwrap();
    let err = serve::start(live, "0.0.0.0:0".parse().unwrap())
        .await
        .err()
        .expect("the library refuses too");
    assert_eq!(err.code, 2, "{}", err.message);

    // No --listen: `[serve] listen` from the config.
    let mut child = ServeChild(switchyard().stderr(Stdio::piped()).spawn().unwrap());
    eventually(
        Duration::from_secs(10),
        "serve to answer /healthz",
        || async {
            tokio::net::TcpStream::connect(listen).await.is_ok()
                && get(listen, "/healthz").await.0 == 200
        },
    )
    .await;
    assert_eq!(get(listen, "/healthz").await.1, "ok\n");
    // Regression: a SIGTERM right after /healthz first answered used to kill serve, whose
    // handler was installed only after it started serving.
    let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut exited = None;
    eventually(Duration::from_secs(10), "serve to exit on SIGTERM", || {
        exited = child.0.try_wait().unwrap();
        let done = exited.is_some();
        async move { done }
    })
    .await;
    let mut stderr = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(exited.unwrap().code(), Some(0), "{stderr}");
    assert!(stderr.contains("switchyard serve: stopping"), "{stderr}");
}
