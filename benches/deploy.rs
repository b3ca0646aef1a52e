//! `cargo bench --bench deploy`: what one deploy costs under load, switchyard's cutover
//! protocol side by side with the naive order it replaces. BENCHMARKS.md defines every column.
//!
//! Two series run one after the other in the same process, each in its own [`Sandbox`]
//! (managed nginx, the demo-app as Docker containers answering after 20 ms, two replicas),
//! each under one continuous [`Load`] of 64 keep-alive connections:
//! - `switchyard`: [`DEPLOYS`] deploys through the engine, timed by a [`Timeline`] observer;
//! - `naive`: the seed script's order, done by hand in [`naive_flip`] (shared, in
//!   `common`): start the new replicas,
//!   wait until healthy, rewrite the upstream file, SIGHUP the nginx master, and stop and
//!   remove the old replicas at once.
//!
//! Every deploy gets a [`Row`]; [`print_table`] shows medians and spreads per flow, and all
//! rows go to `target/bench-deploy.json`. The demo-app binary must have been built with
//! `scripts/build-demo-app`.

mod common;
use common::*;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use switchyard_app::load::{Load, LoadConfig, LoadReport};
use switchyard_app::sandbox::{Sandbox, SandboxOptions, IMAGE};
use switchyard_engine::config::RuntimeChoice;
use switchyard_engine::{Event, Runtime};

/// Deploys per flow.
const DEPLOYS: usize = 20;
const CONNECTIONS: usize = 64;
const LATENCY_MS: u32 = 20;
const REPLICAS: u16 = 2;
/// Load before the first deploy of a series, so every connection is open and warm.
const WARMUP: Duration = Duration::from_secs(1);
/// Quiet time before each deploy; its latency is the steady state.
const SETTLE: Duration = Duration::from_secs(1);
/// Time after a deploy returns that still counts as its window: the naive order keeps
/// failing until nginx's old workers are gone.
const TAIL: Duration = Duration::from_secs(2);
/// Bounds on one series' load; a series that outlasts them is reported as an error.
const MAX_REQUESTS: u64 = 3_000_000;
const MAX_SERIES: Duration = Duration::from_secs(300);

fn main() -> anyhow::Result<()> {
    let binary = demo_app()?;
    block_on(run(binary))
}

async fn run(binary: PathBuf) -> anyhow::Result<()> {
    let options = SandboxOptions::new(RuntimeChoice::Docker, binary)
        .replicas(REPLICAS)
        .env("LATENCY_MS", &LATENCY_MS.to_string());
    let versions: Vec<String> = (1..=DEPLOYS + 1).map(|n| format!("bench-{n}")).collect();

    let both = async {
        let engine = Sandbox::start(&options)
            .await
            .context("starting a sandbox")?;
        eprintln!("building {} images ({IMAGE}:bench-N)", versions.len());
        for version in &versions {
            engine.ensure_image(version).await?;
        }
        let engine_series = in_sandbox(engine, Flow::Engine, &versions).await?;
        let naive = Sandbox::start(&options)
            .await
            .context("starting a sandbox")?;
        let naive_series = in_sandbox(naive, Flow::Naive, &versions).await?;
        anyhow::Ok((engine_series, naive_series))
    };
    let result = both.await;
    remove_images(&versions).await;
    let (engine_series, naive_series) = result?;

    let machine = Machine::read().await;
    println!("\n{}", machine.line());
    println!(
        "{DEPLOYS} deploys per flow, {CONNECTIONS} keep-alive connections, backend latency \
         {LATENCY_MS} ms, {REPLICAS} replicas, Docker runtime\n"
    );
    for series in [&engine_series, &naive_series] {
        print_table(series);
    }
    let path = json_path("bench-deploy.json");
    let json = serde_json::json!({
        "machine": machine,
        "deploys": DEPLOYS,
        "connections": CONNECTIONS,
        "latency_ms": LATENCY_MS,
        "replicas": REPLICAS,
        "series": [engine_series, naive_series],
    });
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("raw rows: {}", path.display());
    Ok(())
}

/// Runs one series and shuts the sandbox down whatever happened.
async fn in_sandbox(sandbox: Sandbox, flow: Flow, versions: &[String]) -> anyhow::Result<Series> {
    let result = series(&sandbox, flow, versions).await;
    let cleanup = sandbox.shutdown().await;
    let series = result?;
    cleanup.context("shutting the sandbox down")?;
    Ok(series)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Engine,
    Naive,
}

impl Flow {
    fn name(self) -> &'static str {
        match self {
            Flow::Engine => "switchyard",
            Flow::Naive => "naive",
        }
    }
}

/// One flow's deploys and its load over the whole series.
#[derive(Debug, Serialize)]
struct Series {
    flow: &'static str,
    rows: Vec<Row>,
    requests: u64,
    failed: u64,
    /// Failures between one deploy's window and the next (during a settle period).
    failed_outside_windows: u64,
    retried: u64,
    requests_per_second: f64,
    /// The first few failures, as the load generator describes them.
    failure_examples: Vec<String>,
}

/// One deploy. Times are milliseconds; `None` where the flow has no such phase.
#[derive(Debug, Serialize)]
struct Row {
    from: String,
    to: String,
    /// Requests completed from the deploy's start to [`TAIL`] after it returned.
    requests: u64,
    failed: u64,
    retried: u64,
    first_new_after_healthy_ms: Option<f64>,
    last_old_after_healthy_ms: Option<f64>,
    old_stopped_after_healthy_ms: Option<f64>,
    wall_ms: f64,
    docker_ms: f64,
    health_ms: f64,
    app_start_ms: f64,
    overhead_ms: f64,
    route_ms: f64,
    drain_ms: Option<f64>,
    stop_old_ms: f64,
    p99_steady_ms: Option<f64>,
    p99_during_ms: Option<f64>,
}

/// Per-deploy bookkeeping taken while the load runs; turned into a [`Row`] at the end.
struct Window {
    from: String,
    to: String,
    phases: Phases,
    before: Counts,
    after: Counts,
}

#[derive(Debug, Clone, Copy)]
struct Counts {
    total: u64,
    failed: u64,
    retried: u64,
}

impl Counts {
    fn of(report: &LoadReport) -> Counts {
        Counts {
            total: report.total,
            failed: report.failed,
            retried: report.retried,
        }
    }
}

async fn series(sandbox: &Sandbox, flow: Flow, versions: &[String]) -> anyhow::Result<Series> {
    eprintln!("\n{}: deploying {} (no load yet)", flow.name(), versions[0]);
    sandbox.deploy(&versions[0], &Timeline::default()).await?;
    let mut live_now = sandbox.live().runtime.list(&sandbox.spec().name).await?;
    let load = Load::start(LoadConfig {
        connections: CONNECTIONS,
        max_requests: MAX_REQUESTS,
        max_duration: MAX_SERIES,
        ..LoadConfig::new(sandbox.url())
    });
    tokio::time::sleep(WARMUP).await;
    let mut windows = Vec::new();
    for (n, pair) in versions.windows(2).enumerate() {
        tokio::time::sleep(SETTLE).await;
        if load.is_finished() {
            bail!("the load stopped before deploy {n} (MAX_REQUESTS or MAX_SERIES spent)");
        }
        let before = Counts::of(&load.snapshot());
        let phases = match flow {
            Flow::Engine => engine_flip(sandbox, &pair[1]).await?,
            Flow::Naive => naive_flip(sandbox, &mut live_now, &pair[1], n).await?,
        };
        tokio::time::sleep(TAIL).await;
        let after = Counts::of(&load.snapshot());
        eprintln!(
            "{} {:>2}/{DEPLOYS} {} -> {}: {:>5.0} ms, {} failed, {} retried",
            flow.name(),
            n + 1,
            pair[0],
            pair[1],
            ms(phases.returned - phases.called),
            after.failed - before.failed,
            after.retried - before.retried,
        );
        windows.push(Window {
            from: pair[0].clone(),
            to: pair[1].clone(),
            phases,
            before,
            after,
        });
    }
    let report = load.stop().await;
    let rows: Vec<Row> = windows.iter().map(|w| row(w, &report)).collect();
    let in_windows: u64 = rows.iter().map(|r| r.failed).sum();
    Ok(Series {
        flow: flow.name(),
        requests: report.total,
        failed: report.failed,
        failed_outside_windows: report.failed - in_windows,
        retried: report.retried,
        requests_per_second: report.requests_per_second(),
        failure_examples: report
            .failures
            .iter()
            .take(5)
            .map(|f| f.to_string())
            .collect(),
        rows,
    })
}

fn row(w: &Window, report: &LoadReport) -> Row {
    let p = &w.phases;
    // Signed: a negative figure would mean the event came before the new slot was healthy.
    let after_healthy = |at: Instant| match at.checked_duration_since(p.healthy) {
        Some(after) => ms(after),
        None => -ms(p.healthy - at),
    };
    let p99 = |from: Instant, to: Instant| report.percentile(99.0, Some((from, to))).map(ms);
    let wall = ms(p.returned - p.called);
    let docker = ms(p.last_started - p.begun);
    let health = ms(p.healthy - p.last_started);
    let stop_from = p.drained.unwrap_or(p.reloaded);
    Row {
        from: w.from.clone(),
        to: w.to.clone(),
        requests: w.after.total - w.before.total,
        failed: w.after.failed - w.before.failed,
        retried: w.after.retried - w.before.retried,
        first_new_after_healthy_ms: report.by_version.get(&w.to).map(|v| after_healthy(v.first)),
        last_old_after_healthy_ms: report
            .by_version
            .get(&w.from)
            .map(|v| after_healthy(v.last)),
        old_stopped_after_healthy_ms: p.old_stopped.map(after_healthy),
        wall_ms: wall,
        docker_ms: docker,
        health_ms: health,
        app_start_ms: ms(p.healthy - p.first_started),
        overhead_ms: wall - docker - health,
        route_ms: ms(p.reloaded - p.healthy),
        drain_ms: p.drained.map(|d| ms(d - p.reloaded)),
        stop_old_ms: ms(p.returned - stop_from),
        p99_steady_ms: p99(p.called - SETTLE, p.called),
        p99_during_ms: p99(p.called, p.returned),
    }
}

impl Timeline {
    fn first(&self, matches: fn(&Event) -> bool) -> Option<Instant> {
        let events = self.0.lock().expect("timeline lock");
        events.iter().find(|(_, e)| matches(e)).map(|(at, _)| *at)
    }

    fn last(&self, matches: fn(&Event) -> bool) -> Option<Instant> {
        let events = self.0.lock().expect("timeline lock");
        events.iter().rfind(|(_, e)| matches(e)).map(|(at, _)| *at)
    }
}

async fn engine_flip(sandbox: &Sandbox, to: &str) -> anyhow::Result<Phases> {
    let timeline = Timeline::default();
    let called = Instant::now();
    sandbox.deploy(to, &timeline).await?;
    let returned = Instant::now();
    let missing = |what: &str| anyhow::anyhow!("the deploy to {to} reported no {what} event");
    let started = |e: &Event| matches!(e, Event::Started { .. });
    Ok(Phases {
        called,
        begun: timeline
            .first(|e| matches!(e, Event::Begin { .. }))
            .ok_or_else(|| missing("Begin"))?,
        first_started: timeline.first(started).ok_or_else(|| missing("Started"))?,
        last_started: timeline.last(started).ok_or_else(|| missing("Started"))?,
        healthy: timeline
            .first(|e| matches!(e, Event::Healthy { .. }))
            .ok_or_else(|| missing("Healthy"))?,
        reloaded: timeline
            .first(|e| matches!(e, Event::Reloaded { .. }))
            .ok_or_else(|| missing("Reloaded"))?,
        drained: timeline.first(|e| matches!(e, Event::Drained { .. })),
        old_stopped: timeline.last(|e| matches!(e, Event::Stopped { .. })),
        returned,
    })
}

const METRICS: [&str; 16] = [
    "failed requests",
    "retried (idle keep-alive closed)",
    "requests in window",
    "healthy → first new-version response, ms",
    "healthy → last old-version response, ms",
    "healthy → old replicas stopped, ms",
    "deploy wall time, ms",
    "docker create + start, ms",
    "health wait, ms",
    "app start (1st started → healthy), ms",
    "**engine overhead**, ms",
    "· route (healthy → reloaded), ms",
    "· drain wait, ms",
    "· stop old + finish, ms",
    "p99 latency, steady, ms",
    "p99 latency, during deploy, ms",
];

impl Row {
    /// The row's value for each of [`METRICS`].
    fn metrics(&self) -> [Option<f64>; 16] {
        [
            Some(self.failed as f64),
            Some(self.retried as f64),
            Some(self.requests as f64),
            self.first_new_after_healthy_ms,
            self.last_old_after_healthy_ms,
            self.old_stopped_after_healthy_ms,
            Some(self.wall_ms),
            Some(self.docker_ms),
            Some(self.health_ms),
            Some(self.app_start_ms),
            Some(self.overhead_ms),
            Some(self.route_ms),
            self.drain_ms,
            Some(self.stop_old_ms),
            self.p99_steady_ms,
            self.p99_during_ms,
        ]
    }
}

/// A Markdown table, so the output pastes into BENCHMARKS.md as it is.
fn print_table(series: &Series) {
    println!(
        "{}: {} requests at {:.0} req/s, {} failed ({} outside deploy windows), {} retried\n",
        series.flow,
        series.requests,
        series.requests_per_second,
        series.failed,
        series.failed_outside_windows,
        series.retried
    );
    let rows: Vec<[Option<f64>; 16]> = series.rows.iter().map(Row::metrics).collect();
    let metrics: Vec<(&str, Vec<f64>)> = METRICS
        .iter()
        .enumerate()
        .map(|(i, name)| (*name, rows.iter().filter_map(|r| r[i]).collect()))
        .collect();
    print_metrics(42, &metrics);
}
