//! Part `api`: the same blue-green deploys driven by the CLI and by the API, alternating in
//! one run under `wrk -t2 -c64`. A [`Row`] per deploy: the command's wall time, the engine's
//! own time (the deployment row's `started_ms` to `finished_ms`), wrk's failures and what the
//! deploy recorded itself.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;
use switchyard_app::sandbox::SandboxOptions;
use switchyard_engine::config::RuntimeChoice;

use crate::common::*;
use crate::host::{Driver, Host, WEB};
use crate::{Recorded, CONNECTIONS, LATENCY_MS, REPLICAS, WRK_THREADS};

/// wrk runs this long before the deploy command starts, and this long after it ended.
const WARM: Duration = Duration::from_millis(1500);
const SETTLE: Duration = Duration::from_millis(1000);

#[derive(Debug, Serialize)]
pub struct Row {
    pub driver: Driver,
    pub round: usize,
    pub version: String,
    pub deployment: i64,
    /// The `switchyard` command, from spawn to exit.
    pub wall_ms: f64,
    /// The deployment row's `finished_ms - started_ms`: the engine's part.
    pub engine_ms: f64,
    pub wrk: WrkReport,
    pub recorded: Recorded,
}

pub async fn run(app: &Path, rounds: usize) -> anyhow::Result<Vec<Row>> {
    let options = SandboxOptions::new(RuntimeChoice::Process, app.to_owned())
        .replicas(REPLICAS)
        .env("LATENCY_MS", &LATENCY_MS.to_string())
        .routing("dynamic");
    let host = Host::start(options, 0, true).await?;
    let rows = rounds_of(&host, rounds).await;
    let stopped = host.shutdown().await;
    let rows = rows?;
    stopped?;
    print(&rows);
    Ok(rows)
}

async fn rounds_of(host: &Host, rounds: usize) -> anyhow::Result<Vec<Row>> {
    host.deploy(Driver::Cli, WEB, "v0", None)
        .await
        .context("the first deploy")?;
    let mut rows = Vec::new();
    for round in 0..rounds {
        for driver in [Driver::Cli, Driver::Api] {
            let row = measure(host, driver, round)
                .await
                .with_context(|| format!("round {round}, {}", driver.name()))?;
            eprintln!(
                "api round {round} {}: deploy #{} {:.0} ms (engine {:.0} ms), wrk {} requests, \
                 {} failed, recorded {} of {}",
                driver.name(),
                row.deployment,
                row.wall_ms,
                row.engine_ms,
                row.wrk.requests,
                row.wrk.failed,
                row.recorded.failed,
                row.recorded.requests
            );
            rows.push(row);
        }
    }
    Ok(rows)
}

async fn measure(host: &Host, driver: Driver, round: usize) -> anyhow::Result<Row> {
    let version = format!("{}-{round}", driver.name());
    let url = host.sandbox.url();
    let (report, deployed) = under_wrk(
        &url,
        (WRK_THREADS, CONNECTIONS),
        (WARM, SETTLE),
        None,
        host.deploy(driver, WEB, &version, None),
    )
    .await?;
    let wall = deployed?;
    let record = host.last_deployment(WEB).await?;
    if record["to_version"] != version.as_str() || record["outcome"] != "succeeded" {
        bail!("the newest deployment is not a succeeded deploy of {version}: {record}");
    }
    let (started, finished) = (
        record["started_ms"].as_i64(),
        record["finished_ms"].as_i64(),
    );
    let (Some(started), Some(finished)) = (started, finished) else {
        bail!("deployment without started_ms and finished_ms: {record}");
    };
    Ok(Row {
        driver,
        round,
        deployment: record["id"].as_i64().unwrap_or(0),
        recorded: Recorded::of(&record)?,
        version,
        wall_ms: ms(wall),
        engine_ms: (finished - started) as f64,
        wrk: report,
    })
}

fn print(rows: &[Row]) {
    println!(
        "### api: blue-green deploys of {REPLICAS} replicas under wrk -t{WRK_THREADS} \
         -c{CONNECTIONS}, CLI and API alternating\n"
    );
    let mut table = Table::new(&[
        "driven by",
        "deploys",
        "wrk requests",
        "wrk failed",
        "self-measured failed",
        "wall ms",
        "engine ms",
        "wall − engine ms",
    ]);
    for driver in [Driver::Cli, Driver::Api] {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.driver == driver).collect();
        let sum = |f: &dyn Fn(&Row) -> u64| mine.iter().map(|r| f(r)).sum::<u64>();
        let cell = |f: &dyn Fn(&Row) -> f64| spread_cell(mine.iter().map(|r| f(r)).collect());
        table.row(vec![
            driver.name().to_owned(),
            mine.len().to_string(),
            sum(&|r| r.wrk.requests).to_string(),
            format!("**{}**", sum(&|r| r.wrk.failed)),
            format!(
                "{} of {}",
                sum(&|r| r.recorded.failed),
                sum(&|r| r.recorded.requests)
            ),
            cell(&|r| r.wall_ms),
            cell(&|r| r.engine_ms),
            cell(&|r| r.wall_ms - r.engine_ms),
        ]);
    }
    table.print();
}

/// `median (min–max)` of `values`.
pub fn spread_cell(values: Vec<f64>) -> String {
    match spread(values) {
        Some(s) => format!("{} ({}–{})", num(s.median), num(s.min), num(s.max)),
        None => "–".into(),
    }
}
