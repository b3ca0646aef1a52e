//! Part `status`: what the dashboard's polling costs. For 1 and for 8 services (`web` and
//! `svc-1` … `svc-7`, each deployed once through the CLI), `switchyard serve` runs as its own
//! process while `wrk -t2 -c64` loads `web`'s front; serve's CPU time is read over
//! [`IDLE`] with no API request (its background loops: the access log, health probes, the
//! proxy check), then `requests` authenticated `GET /api/v1/status` are sent one after
//! another, each on a fresh connection, each timed from connect to the end of the answer.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use switchyard_app::sandbox::SandboxOptions;
use switchyard_engine::config::RuntimeChoice;

use crate::common::*;
use crate::host::{Driver, Host};
use crate::{CONNECTIONS, LATENCY_MS, WRK_THREADS};

pub const SERVICE_COUNTS: [usize; 2] = [1, 8];
/// serve's CPU is read over this long with no API request, for its background cost.
const IDLE: Duration = Duration::from_secs(4);
/// The dashboard polls `/api/v1/status` this often.
const POLL: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize)]
pub struct Row {
    pub services: usize,
    pub latencies_ms: Vec<f64>,
    /// serve's CPU time over [`IDLE`] with no request, and over the requests.
    pub idle_cpu_ms: f64,
    pub idle_ms: f64,
    pub requests_cpu_ms: f64,
    pub requests_ms: f64,
    pub wrk: WrkReport,
}

impl Row {
    /// serve's CPU per status answer, less what its background loops used meanwhile.
    fn cpu_per_request_ms(&self) -> f64 {
        let background = self.idle_cpu_ms / self.idle_ms * self.requests_ms;
        (self.requests_cpu_ms - background).max(0.0) / self.latencies_ms.len() as f64
    }
}

pub async fn run(app: &Path, requests: usize) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for services in SERVICE_COUNTS {
        let options = SandboxOptions::new(RuntimeChoice::Process, app.to_owned())
            .replicas(2)
            .env("LATENCY_MS", &LATENCY_MS.to_string())
            .routing("dynamic");
        let host = Host::start(options, services - 1, true).await?;
        let row = measure(&host, services, requests).await;
        let stopped = host.shutdown().await;
        let row = row.with_context(|| format!("{services} services"))?;
        stopped?;
        eprintln!(
            "status, {services} services: median {:.1} ms, serve CPU {:.2} ms per answer",
            spread(row.latencies_ms.clone()).map_or(0.0, |s| s.median),
            row.cpu_per_request_ms()
        );
        rows.push(row);
    }
    print(&rows);
    Ok(rows)
}

async fn measure(host: &Host, services: usize, requests: usize) -> anyhow::Result<Row> {
    for service in host.services() {
        host.deploy(Driver::Cli, &service, "v1", None)
            .await
            .with_context(|| format!("deploying {service}"))?;
    }
    let serve = host.serve()?;
    let wrk = Wrk::start(
        &host.sandbox.url(),
        WRK_THREADS,
        CONNECTIONS,
        Duration::from_secs(300),
        None,
    )?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (idle_cpu, idle) = cpu_over(serve.pid, async {
        tokio::time::sleep(IDLE).await;
        Ok(())
    })
    .await?;
    let mut latencies_ms = Vec::with_capacity(requests);
    let (requests_cpu, took) = cpu_over(serve.pid, async {
        for _ in 0..requests {
            let (status, body, latency) = serve.get("/api/v1/status").await?;
            let listed = body["services"].as_array().map_or(0, Vec::len);
            if status != 200 || listed != services {
                bail!("GET /api/v1/status: {status}, {listed} services: {body}");
            }
            latencies_ms.push(ms(latency));
        }
        Ok(())
    })
    .await?;
    let report = wrk.stop().await?;
    Ok(Row {
        services,
        latencies_ms,
        idle_cpu_ms: ms(idle_cpu),
        idle_ms: ms(idle),
        requests_cpu_ms: ms(requests_cpu),
        requests_ms: ms(took),
        wrk: report,
    })
}

/// Process `pid`'s CPU time while `work` ran, and how long it ran.
async fn cpu_over(
    pid: u32,
    work: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<(Duration, Duration)> {
    let (cpu, since) = (cpu_time(pid)?, Instant::now());
    work.await?;
    Ok((cpu_time(pid)?.saturating_sub(cpu), since.elapsed()))
}

/// The value at quantile `q` (0–1) by nearest rank.
fn nearest_rank(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn print(rows: &[Row]) {
    println!(
        "### status: GET /api/v1/status (authenticated, fresh connection each) while wrk \
         -t{WRK_THREADS} -c{CONNECTIONS} loads web\n"
    );
    let mut table = Table::new(&[
        "services",
        "requests",
        "median ms",
        "p99 ms",
        "min–max ms",
        "serve CPU ms per answer",
        "serve CPU, background",
        "CPU of polling every 2 s",
        "wrk failed",
    ]);
    for row in rows {
        let s = spread(row.latencies_ms.clone());
        let (min, max) = s.as_ref().map_or((0.0, 0.0), |s| (s.min, s.max));
        let per_answer = row.cpu_per_request_ms();
        table.row(vec![
            row.services.to_string(),
            row.latencies_ms.len().to_string(),
            num(s.as_ref().map_or(0.0, |s| s.median)),
            num(nearest_rank(&row.latencies_ms, 0.99)),
            format!("{}–{}", num(min), num(max)),
            format!("{per_answer:.2}"),
            format!("{:.1} %", row.idle_cpu_ms / row.idle_ms * 100.0),
            format!("{:.3} %", per_answer / ms(POLL) * 100.0),
            format!("**{}**", row.wrk.failed),
        ]);
    }
    table.print();
}
