//! `cargo bench --bench watch`: the post-cutover watch's fast-track rollback (issue 12) under
//! load, at two check intervals side by side.
//!
//! Two [`Sandbox`]es (managed nginx with dynamic routing, [`REPLICAS`] replicas of the demo-app
//! as local processes), `watch = "30s"`, the embedded judge reading nginx's access log:
//! lane `1s` judges every 1 s over a 3 s window, lane `2s` every 2 s over 4 s. A good version
//! is live; each round deploys a bad one blue-green (it answers half its `/` requests 500 —
//! `FAILING_VERSIONS` — and nothing judged it before it took all traffic), which the watch
//! routes back. Rounds alternate lanes so the shared machine's slow phases spread over both.
//!
//! Two clients run through each round, both never re-sending: switchyard's own
//! ([`CONNECTIONS`] keep-alive connections, which tells each response's version) and `wrk -t1
//! -c16` (a client we did not write; its socket errors are what a switch would cost, its
//! non-2xx are the bad version's own 500s). A row: how long the bad version answered (first
//! to last response from it), its 500s, any other failure (the switch's: must be 0), wrk's
//! socket errors and non-2xx, and the deploy's wall time from call to its error.
//!
//! Knobs: `SWITCHYARD_BENCH_ROUNDS` (default 10 per lane). Rows go to
//! `target/bench-watch.json`. Needs nginx with its Lua module, `/usr/bin/wrk` and the
//! demo-app (`scripts/build-demo-app`).
//!
//! [`Sandbox`]: switchyard_app::sandbox::Sandbox

mod common;

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use switchyard_app::load::{FailureKind, Load, LoadConfig};
use switchyard_app::progress::Progress;
use switchyard_app::sandbox::{Sandbox, SandboxOptions};
use switchyard_engine::config::{RuntimeChoice, StrategyKind};

use common::*;

const REPLICAS: u16 = 2;
const CONNECTIONS: usize = 32;
const WARM: Duration = Duration::from_millis(1500);
const SETTLE: Duration = Duration::from_millis(1000);

#[derive(Debug, Serialize)]
struct Row {
    lane: &'static str,
    round: usize,
    bad_served_ms: f64,
    bad_500s: u64,
    switch_failures: u64,
    wrk: WrkReport,
    deploy_ms: f64,
}

struct Lane {
    name: &'static str,
    sandbox: Sandbox,
}

fn main() -> anyhow::Result<()> {
    block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let rounds: usize = std::env::var("SWITCHYARD_BENCH_ROUNDS")
        .ok()
        .map(|r| r.parse().context("SWITCHYARD_BENCH_ROUNDS"))
        .transpose()?
        .unwrap_or(10);
    let binary = demo_app()?;
    let machine = Machine::read().await;
    println!("{}", machine.line());
    let bad: Vec<String> = (0..rounds).map(|r| format!("bad-{r}")).collect();
    let mut lanes = Vec::new();
    for (name, interval, window) in [("1s", "1s", "3s"), ("2s", "2s", "4s")] {
        let mut options = SandboxOptions::new(RuntimeChoice::Process, binary.clone())
            .replicas(REPLICAS)
            .env("LATENCY_MS", "5")
            .env("FAIL_RATE", "0.5")
            .env("FAILING_VERSIONS", &bad.join(","))
            .routing("dynamic");
        options.canary = format!(
            "interval = {interval:?}\nwindow = {window:?}\nmin_requests = 20\ninconclusive_limit = 10"
        );
        options.service_keys = "watch = \"30s\"".into();
        let sandbox = Sandbox::start(&options)
            .await
            .with_context(|| format!("starting the {name} sandbox"))?;
        sandbox
            .deploy("good", &Progress::new(false))
            .await
            .with_context(|| format!("the first {name} deploy"))?;
        lanes.push(Lane { name, sandbox });
    }
    let mut rows = Vec::new();
    let mut failure = None;
    'rounds: for (round, version) in bad.iter().enumerate() {
        for lane in &lanes {
            match measure(lane, round, version).await {
                Ok(row) => {
                    eprintln!(
                        "round {round} {}: bad served {:.0} ms, {} of its 500s, {} other failures, wrk {} socket errors, deploy {:.0} ms",
                        row.lane,
                        row.bad_served_ms,
                        row.bad_500s,
                        row.switch_failures,
                        row.wrk.failed - row.wrk.non_2xx_3xx,
                        row.deploy_ms
                    );
                    rows.push(row);
                }
                Err(e) => {
                    failure = Some(e.context(format!("round {round}, lane {}", lane.name)));
                    break 'rounds;
                }
            }
        }
    }
    for lane in lanes {
        if let Err(e) = lane.sandbox.shutdown().await {
            eprintln!("shutting the {} sandbox down: {e}", lane.name);
        }
    }
    std::fs::write(
        json_path("bench-watch.json"),
        serde_json::to_string_pretty(&rows)?,
    )?;
    print_rows(&rows);
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// One bad deploy on `lane` under both clients.
async fn measure(lane: &Lane, round: usize, version: &str) -> anyhow::Result<Row> {
    let url = lane.sandbox.url();
    let mut config = LoadConfig::new(url.clone());
    config.connections = CONNECTIONS;
    config.max_requests = 5_000_000;
    config.max_duration = Duration::from_secs(120);
    let load = Load::start(config);
    let wrk = Wrk::start(&url, 1, 16, Duration::from_secs(120), None)?;
    tokio::time::sleep(WARM).await;
    let called = Instant::now();
    let result = lane
        .sandbox
        .deploy_with(version, StrategyKind::BlueGreen, &Progress::new(false))
        .await;
    let deploy_ms = ms(called.elapsed());
    tokio::time::sleep(SETTLE).await;
    let wrk = wrk.stop().await?;
    let traffic = load.stop().await;
    match result {
        Err(e) if e.message.contains("fast-track rollback") => {}
        Err(e) => bail!("{version} failed otherwise: {e}"),
        Ok(_) => bail!("{version} passed its watch: the bad version was not caught"),
    }
    let Some(seen) = traffic.by_version.get(version) else {
        bail!("{version} never answered: {traffic}");
    };
    // Every failure with the bad version's header is its own 500 (FAIL_RATE); anything
    // else failed in the switch.
    let bad_500s = traffic.failed_by_version.get(version).copied().unwrap_or(0);
    let switch_failures = traffic.failed - bad_500s;
    if let Some(other) = traffic.failures.iter().find(
        |f| !matches!(&f.kind, FailureKind::Status { code: 500, version: Some(v) } if v == version),
    ) {
        eprintln!("a failure that is not {version}'s own: {other}");
    }
    Ok(Row {
        lane: lane.name,
        round,
        bad_served_ms: ms(seen.last.saturating_duration_since(seen.first)),
        bad_500s,
        switch_failures,
        wrk,
        deploy_ms,
    })
}

fn print_rows(rows: &[Row]) {
    for lane in ["1s", "2s"] {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.lane == lane).collect();
        let switch: u64 = mine.iter().map(|r| r.switch_failures).sum();
        let sockets: u64 = mine.iter().map(|r| r.wrk.failed - r.wrk.non_2xx_3xx).sum();
        let wrk_requests: u64 = mine.iter().map(|r| r.wrk.requests).sum();
        println!(
            "### interval {lane}: {} bad deploys routed back; failures not the bad version's own: {switch}; wrk: {wrk_requests} requests, {sockets} socket errors\n",
            mine.len()
        );
        print_metrics(
            24,
            &[
                (
                    "bad version served, ms",
                    mine.iter().map(|r| r.bad_served_ms).collect(),
                ),
                (
                    "its 500s (ours)",
                    mine.iter().map(|r| r.bad_500s as f64).collect(),
                ),
                (
                    "its 500s (wrk non-2xx)",
                    mine.iter().map(|r| r.wrk.non_2xx_3xx as f64).collect(),
                ),
                ("deploy wall ms", mine.iter().map(|r| r.deploy_ms).collect()),
            ],
        );
    }
}
