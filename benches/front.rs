//! `cargo bench --bench front`: deploys through the front door (issue 11), plain HTTP and
//! TLS side by side, under a client switchyard did not write and that never re-sends a request.
//!
//! Two [`Sandbox`]es (managed nginx with dynamic routing, [`REPLICAS`] replicas of the demo-app
//! as local processes answering after [`LATENCY_MS`]): `plain` listens on plain HTTP, `tls`
//! on HTTPS with a self-signed certificate (HTTP/1.1 from wrk; the server offers HTTP/2 too).
//! Rounds go round-robin over the two so the shared machine's slow phases spread over both.
//! Each round, for each lane: `wrk -t2 -c64 --timeout 5s` starts on the lane's URL, runs
//! [`WARM`], the engine deploys the next version blue-green, wrk runs [`SETTLE`] more and is
//! stopped. A row holds wrk's requests, failures (socket errors and non-2xx/3xx), its rate over
//! the whole run, and the deploy's wall time.
//!
//! A second part, `restart`, measures the supervised proxy: one sandbox (1 replica) with
//! `switchyard serve` running in-process (it checks the master every 250 ms); [`KILLS`] times
//! each, nginx is SIGKILLed, master and workers (a crash, an OOM kill) or the master alone (its
//! workers linger, holding the listen sockets), and the time from the kill until a new master
//! runs and `GET /` answers 200 on a fresh connection (polled every 5 ms) is recorded.
//!
//! Knobs: `SWITCHYARD_BENCH_ROUNDS` (default 10), `SWITCHYARD_BENCH_PARTS` (`deploys`,
//! `restart`; default both). Deploy rows go to `target/bench-front.json`. Needs
//! nginx with its Lua module, `/usr/bin/wrk`, `openssl` and the demo-app
//! (`scripts/build-demo-app`).
//!
//! [`Sandbox`]: switchyard_app::sandbox::Sandbox

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use switchyard_app::live::Live;
use switchyard_app::progress::Progress;
use switchyard_app::sandbox::{Sandbox, SandboxOptions};
use switchyard_app::{serve, settings};
use switchyard_engine::config::RuntimeChoice;

use common::*;

const REPLICAS: u16 = 4;
const LATENCY_MS: u32 = 20;
const CONNECTIONS: usize = 64;
const WRK_THREADS: usize = 2;
const WARM: Duration = Duration::from_millis(1500);
const SETTLE: Duration = Duration::from_millis(1000);

#[derive(Debug, Serialize)]
struct Row {
    lane: &'static str,
    round: usize,
    version: String,
    wrk: WrkReport,
    requests_per_second: f64,
    deploy_ms: f64,
}

struct Lane {
    name: &'static str,
    url: String,
    sandbox: Sandbox,
    deploys: usize,
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
    let parts = std::env::var("SWITCHYARD_BENCH_PARTS").unwrap_or("deploys,restart".into());
    if !parts.split(',').any(|p| p == "deploys") {
        return restart(&binary).await;
    }
    let certs = tempfile::tempdir().context("a directory for the certificate")?;
    let (cert, key) = self_signed(certs.path())?;
    let machine = Machine::read().await;
    println!("{}", machine.line());

    let mut lanes = Vec::new();
    for name in ["plain", "tls"] {
        let mut options = SandboxOptions::new(RuntimeChoice::Process, binary.clone())
            .replicas(REPLICAS)
            .env("LATENCY_MS", &LATENCY_MS.to_string())
            .routing("dynamic");
        if name == "tls" {
            options.service_keys = format!(
                "tls = {{ cert = {:?}, key = {:?} }}",
                cert.display().to_string(),
                key.display().to_string()
            );
        }
        let sandbox = Sandbox::start(&options)
            .await
            .with_context(|| format!("starting the {name} sandbox"))?;
        let scheme = if name == "tls" { "https" } else { "http" };
        let url = format!("{scheme}://{}/", sandbox.listen);
        sandbox
            .deploy(&format!("{name}-0"), &Progress::new(false))
            .await
            .with_context(|| format!("the first {name} deploy"))?;
        lanes.push(Lane {
            name,
            url,
            sandbox,
            deploys: 0,
        });
    }

    let mut rows = Vec::new();
    let mut failure = None;
    'rounds: for round in 0..rounds {
        for lane in &mut lanes {
            match measure(lane, round).await {
                Ok(row) => {
                    eprintln!(
                        "round {round} {}: {} requests, {} failed, {:.0}/s, deploy {:.0} ms",
                        row.lane,
                        row.wrk.requests,
                        row.wrk.failed,
                        row.requests_per_second,
                        row.deploy_ms
                    );
                    rows.push(row);
                }
                Err(e) => {
                    failure = Some(e.context(format!("round {round}, {}", lane.name)));
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
        json_path("bench-front.json"),
        serde_json::to_string_pretty(&rows)?,
    )?;
    print_rows(&rows);
    if let Some(e) = failure {
        return Err(e);
    }
    if parts.split(',').any(|p| p == "restart") {
        restart(&binary).await?;
    }
    Ok(())
}

/// How many times each kind of kill is measured.
const KILLS: usize = 10;

/// The supervised proxy: kill nginx, time until it serves again.
async fn restart(binary: &Path) -> anyhow::Result<()> {
    let options = SandboxOptions::new(RuntimeChoice::Process, binary.to_owned()).routing("dynamic");
    let mut sandbox = Sandbox::start(&options)
        .await
        .context("the restart sandbox")?;
    let result = kills(&sandbox).await;
    // serve restarted nginx under the sandbox's prefix: the sandbox stops that one.
    sandbox.adopt_nginx();
    finish(sandbox, result).await
}

async fn kills(sandbox: &Sandbox) -> anyhow::Result<()> {
    sandbox.deploy("r-1", &Progress::new(false)).await?;
    let live = Live::open(settings::load(&sandbox.config_path)?).await?;
    let server = serve::start(live, "127.0.0.1:0".parse()?).await?;
    let mut times: Vec<(&str, Vec<f64>)> = vec![("all killed", vec![]), ("master killed", vec![])];
    for round in 0..KILLS {
        for (kind, values) in &mut times {
            let master = sandbox.live().router.master()?;
            let workers = switchyard_nginx::procs::workers(master);
            let victims: Vec<u32> = if *kind == "all killed" {
                std::iter::once(master).chain(workers).collect()
            } else {
                vec![master]
            };
            let since = Instant::now();
            for pid in victims {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            // Serving again means a new master: its pid file names a live nginx master
            // other than the killed one, and the listen answers.
            loop {
                let new_master = sandbox.live().router.master().ok();
                if new_master.is_some_and(|m| m != master) && answers(sandbox.listen).await {
                    break;
                }
                if since.elapsed() > Duration::from_secs(10) {
                    bail!("round {round}, {kind}: not serving 10 s after the kill");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let took = ms(since.elapsed());
            eprintln!("round {round} {kind}: serving again after {took:.0} ms");
            values.push(took);
            // Let serve finish its restart (orphaned workers gone) before the next kill.
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
    }
    server.shutdown().await?;
    println!("### restart: {KILLS} kills of each kind, ms from the kill to serving again\n");
    print_metrics(22, &times);
    Ok(())
}

/// Whether `listen` answers `GET /` with 200 on a fresh connection within 200 ms.
async fn answers(listen: std::net::SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(listen).await.ok()?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1.1 200"))
    };
    tokio::time::timeout(Duration::from_millis(200), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

async fn measure(lane: &mut Lane, round: usize) -> anyhow::Result<Row> {
    lane.deploys += 1;
    let version = format!("{}-{}", lane.name, lane.deploys);
    let wrk = Wrk::start(
        &lane.url,
        WRK_THREADS,
        CONNECTIONS,
        Duration::from_secs(120),
        None,
    )?;
    tokio::time::sleep(WARM).await;
    let since = Instant::now();
    let deployed = lane.sandbox.deploy(&version, &Progress::new(false)).await;
    let deploy_ms = ms(since.elapsed());
    tokio::time::sleep(SETTLE).await;
    let report = wrk.stop().await?;
    deployed.with_context(|| format!("deploying {version}"))?;
    if report.requests == 0 {
        bail!("wrk sent no request to {}", lane.url);
    }
    Ok(Row {
        lane: lane.name,
        round,
        version,
        requests_per_second: report.requests as f64 / report.seconds.max(0.001),
        wrk: report,
        deploy_ms,
    })
}

fn print_rows(rows: &[Row]) {
    for lane in ["plain", "tls"] {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.lane == lane).collect();
        let failed: u64 = mine.iter().map(|r| r.wrk.failed).sum();
        let requests: u64 = mine.iter().map(|r| r.wrk.requests).sum();
        println!(
            "### {lane}: {} deploys, {requests} wrk requests, {failed} failed\n",
            mine.len()
        );
        print_metrics(
            22,
            &[
                (
                    "failed per deploy",
                    mine.iter().map(|r| r.wrk.failed as f64).collect(),
                ),
                (
                    "wrk requests/s",
                    mine.iter().map(|r| r.requests_per_second).collect(),
                ),
                ("deploy wall ms", mine.iter().map(|r| r.deploy_ms).collect()),
            ],
        );
    }
}

/// A self-signed certificate for `localhost` (wrk does not verify it).
fn self_signed(dir: &Path) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-subj", "/CN=localhost"])
        .output()
        .context("running openssl")?;
    if !out.status.success() {
        bail!("openssl: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((cert, key))
}
