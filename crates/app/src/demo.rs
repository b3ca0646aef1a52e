//! `switchyard demo`: the whole story on one machine, measured.
//!
//! A sandbox (managed nginx on free loopback ports, the demo-app as Docker containers or,
//! without Docker, local processes) gets v1; a load generator with many keep-alive
//! connections starts; switchyard deploys v2 blue-green under that load; the load stops and
//! [`DemoSummary`] reports every request: failures, which version answered, how long after
//! v2 was healthy the first v2 response and the last v1 response came, and latency in
//! steady state versus during the deploy. Then canaries (one good, one bad), two rolling
//! scenes (rolling, then in-place) and a bad version deployed blue-green under a post-cutover
//! watch, each under its own load.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use switchyard_docker::DockerRuntime;
use switchyard_engine::config::{RuntimeChoice, StrategyKind};

use crate::load::{Load, LoadConfig, LoadReport};
use crate::progress::Progress;
use crate::sandbox::{Sandbox, SandboxOptions};
use crate::AppError;

pub mod canary;
pub mod rolling;

pub struct DemoOptions {
    /// None: Docker when the daemon answers, else local processes.
    pub runtime: Option<RuntimeChoice>,
    pub app_binary: PathBuf,
    pub connections: usize,
    pub replicas: u16,
    pub latency_ms: u32,
}

#[derive(Debug, Serialize)]
pub struct DemoSummary {
    pub runtime: &'static str,
    pub requests: u64,
    pub failed: u64,
    /// GETs re-sent on a fresh connection after nginx closed the reused one unanswered.
    pub retried: u64,
    pub v1_responses: u64,
    pub v2_responses: u64,
    pub requests_per_second: f64,
    /// From v2 healthy to the first request answered by v2.
    pub first_v2_after_healthy_ms: Option<f64>,
    /// From v2 healthy to the last request answered by v1.
    pub last_v1_after_healthy_ms: Option<f64>,
    pub deploy_ms: u64,
    pub healthy_ms: u64,
    pub reload_confirm_ms: u64,
    pub drain_ms: u64,
    pub steady_p50_ms: Option<f64>,
    pub steady_p99_ms: Option<f64>,
    pub deploy_p50_ms: Option<f64>,
    pub deploy_p99_ms: Option<f64>,
    pub failures: Vec<String>,
    pub canaries: Vec<canary::CanaryScene>,
    pub rollouts: Vec<rolling::RollingScene>,
    /// A bad version deployed blue-green under a post-cutover watch.
    pub watched: Option<canary::CanaryScene>,
}

pub async fn choose_runtime() -> RuntimeChoice {
    match DockerRuntime::connect("probe").await {
        Ok(_) => RuntimeChoice::Docker,
        Err(e) => {
            eprintln!("docker unavailable ({e}); running the demo with local processes");
            RuntimeChoice::Process
        }
    }
}

pub async fn run(o: &DemoOptions) -> Result<DemoSummary, AppError> {
    let runtime = match o.runtime {
        Some(r) => r,
        None => choose_runtime().await,
    };
    let mut options = SandboxOptions::new(runtime, o.app_binary.clone())
        .replicas(o.replicas)
        .env("LATENCY_MS", &o.latency_ms.to_string())
        .env(
            "FAILING_VERSIONS",
            &format!("{},{}", canary::BAD_VERSION, canary::WATCHED_BAD_VERSION),
        )
        .env("FAIL_RATE", canary::BAD_FAIL_RATE);
    options.canary = canary::DEMO_CANARY.to_owned();
    let sandbox = Sandbox::start(&options).await?;
    let kind = if runtime == RuntimeChoice::Docker {
        "docker"
    } else {
        "process"
    };
    eprintln!(
        "switchyard demo: service `web` behind nginx at {} ({kind} runtime, {} replicas)",
        sandbox.url(),
        o.replicas
    );
    eprintln!("config: {}\n", sandbox.config_path.display());
    let result = demo_flow(&sandbox, o, kind).await;
    let cleanup = sandbox.shutdown().await;
    let summary = result?;
    cleanup?;
    Ok(summary)
}

async fn demo_flow(
    sandbox: &Sandbox,
    o: &DemoOptions,
    kind: &'static str,
) -> Result<DemoSummary, AppError> {
    sandbox.ensure_image("v1").await?;
    sandbox.ensure_image("v2").await?;
    let router = &sandbox.live().router;
    eprintln!(
        "routing: {}\n  {}",
        router.routing_note(),
        router.routing().client_view()
    );
    eprintln!("deploying v1 (nothing live yet):");
    sandbox.deploy("v1", &Progress::new(true)).await?;

    let mut load = LoadConfig::new(sandbox.url());
    load.connections = o.connections;
    load.max_requests = 5_000_000;
    load.max_duration = Duration::from_secs(120);
    eprintln!(
        "\nload: {} keep-alive connections that never re-send a request; 2 s of steady state, then v1 -> v2:",
        o.connections
    );
    let load = Load::start(load);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let progress = Progress::new(true);
    let deploy_start = Instant::now();
    let report = sandbox.deploy("v2", &progress).await;
    let deploy_end = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let traffic = load.stop().await;
    let report = report?;
    eprintln!("\ncanary v3 (a good version), under load:");
    let good = canary::scene(sandbox, "v3", o.connections).await?;
    eprintln!(
        "\ncanary {} (FAIL_RATE={}: that share of its requests fail), under load:",
        canary::BAD_VERSION,
        canary::BAD_FAIL_RATE
    );
    let bad = canary::scene(sandbox, canary::BAD_VERSION, o.connections).await?;
    eprintln!("\nrolling to v5, one surge replica at a time, under load:");
    let rolled = rolling::scene(sandbox, "v5", StrategyKind::Rolling, o.connections).await?;
    eprintln!("\nin-place to v6, no extra capacity (the freed ports reused), under load:");
    let in_place = rolling::scene(sandbox, "v6", StrategyKind::InPlace, o.connections).await?;
    eprintln!(
        "\nblue-green to {} with watch = \"{}s\" ({} fails {} of its requests once it has all traffic), under load:",
        canary::WATCHED_BAD_VERSION,
        canary::DEMO_WATCH.as_secs(),
        canary::WATCHED_BAD_VERSION,
        canary::BAD_FAIL_RATE
    );
    let watched = canary::judged_scene(
        sandbox,
        canary::WATCHED_BAD_VERSION,
        canary::Judged::Watched(canary::DEMO_WATCH),
        o.connections,
    )
    .await?;
    let healthy_at = progress
        .healthy_at
        .lock()
        .expect("progress lock")
        .unwrap_or(deploy_start);
    let mut summary = summarize(
        &traffic,
        kind,
        &report,
        healthy_at,
        (deploy_start, deploy_end),
    );
    summary.canaries = vec![good, bad];
    summary.watched = Some(watched);
    summary.rollouts = vec![rolled, in_place];
    Ok(summary)
}

/// A scene's own load: `connections` keep-alive connections, warm for a second.
async fn scene_load(sandbox: &Sandbox, connections: usize) -> Load {
    let mut config = LoadConfig::new(sandbox.url());
    config.connections = connections;
    config.max_requests = 5_000_000;
    config.max_duration = Duration::from_secs(120);
    let load = Load::start(config);
    tokio::time::sleep(Duration::from_secs(1)).await;
    load
}

fn summarize(
    t: &LoadReport,
    runtime: &'static str,
    r: &switchyard_engine::deploy::DeployReport,
    healthy_at: Instant,
    deploy: (Instant, Instant),
) -> DemoSummary {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let signed_ms = |at: Instant| {
        if at >= healthy_at {
            ms(at - healthy_at)
        } else {
            -ms(healthy_at - at)
        }
    };
    let v1 = t.by_version.get("v1");
    let v2 = t.by_version.get("v2");
    let steady = (t.started, deploy.0);
    DemoSummary {
        runtime,
        requests: t.total,
        failed: t.failed,
        retried: t.retried,
        v1_responses: v1.map_or(0, |v| v.count),
        v2_responses: v2.map_or(0, |v| v.count),
        requests_per_second: t.requests_per_second(),
        first_v2_after_healthy_ms: v2.map(|v| signed_ms(v.first)),
        last_v1_after_healthy_ms: v1.map(|v| signed_ms(v.last)),
        deploy_ms: (deploy.1 - deploy.0).as_millis() as u64,
        healthy_ms: r.healthy_ms,
        reload_confirm_ms: r.reload.confirm_ms,
        drain_ms: r.drained.waited_ms,
        steady_p50_ms: t.percentile(50.0, Some(steady)).map(ms),
        steady_p99_ms: t.percentile(99.0, Some(steady)).map(ms),
        deploy_p50_ms: t.percentile(50.0, Some(deploy)).map(ms),
        deploy_p99_ms: t.percentile(99.0, Some(deploy)).map(ms),
        failures: t.failures.iter().map(|f| format!("{f:?}")).collect(),
        canaries: Vec::new(),
        rollouts: Vec::new(),
        watched: None,
    }
}

impl DemoSummary {
    /// The table the demo ends with.
    pub fn table(&self) -> String {
        let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1} ms"));
        let rows = [
            ("requests sent", self.requests.to_string()),
            ("failed requests", self.failed.to_string()),
            (
                "re-sent after an idle keep-alive close",
                self.retried.to_string(),
            ),
            (
                "answered by v1 / v2",
                format!("{} / {}", self.v1_responses, self.v2_responses),
            ),
            (
                "throughput",
                format!("{:.0} req/s", self.requests_per_second),
            ),
            ("v2 healthy after", format!("{} ms", self.healthy_ms)),
            (
                "first v2 response after healthy",
                opt(self.first_v2_after_healthy_ms),
            ),
            (
                "last v1 response after healthy",
                opt(self.last_v1_after_healthy_ms),
            ),
            (
                "route change confirmed in",
                format!("{} ms", self.reload_confirm_ms),
            ),
            (
                "old nginx workers gone after",
                format!("{} ms", self.drain_ms),
            ),
            ("deploy wall time", format!("{} ms", self.deploy_ms)),
            (
                "latency p50 / p99, steady",
                format!("{} / {}", opt(self.steady_p50_ms), opt(self.steady_p99_ms)),
            ),
            (
                "latency p50 / p99, during deploy",
                format!("{} / {}", opt(self.deploy_p50_ms), opt(self.deploy_p99_ms)),
            ),
        ];
        let mut text = format!("\nswitchyard demo summary ({} runtime)\n", self.runtime);
        for (k, v) in rows {
            text.push_str(&format!("  {k:<34} {v}\n"));
        }
        for f in self.failures.iter().take(5) {
            text.push_str(&format!("  failure: {f}\n"));
        }
        for c in &self.canaries {
            text.push_str(&c.table());
        }
        for r in &self.rollouts {
            text.push_str(&r.table());
        }
        if let Some(w) = &self.watched {
            text.push_str(&w.table());
        }
        text
    }
}
