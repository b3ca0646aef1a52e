//! `cargo bench --bench routing`: routing without reloads (issue 9). The same deploys, side by
//! side, under the same loads, through three [`Flow`]s: the naive order (rewrite the upstream,
//! SIGHUP, stop the old replicas at once), the engine with the reload router, and the engine
//! with the dynamic router (routing documents in nginx's shared memory, no reload per deploy).
//! BENCHMARKS.md defines every column.
//!
//! Each flow gets one [`Sandbox`] (managed nginx, [`REPLICAS`] replicas of the demo-app as
//! local processes answering after [`LATENCY_MS`]), brought to its first version with no load.
//! All three stay up; rounds go round-robin over them so the shared machine's slow phases
//! spread over every flow. Each round deploys every [`Strategy`] (blue-green, a three-step
//! canary with short holds, rolling one replica at a time) under both [`Pairing`]s of loads,
//! started afresh for each deploy and running together: `wrk -t2 -c64` (a client that never
//! re-sends) with one method, and [`Load`] (the project's generator, 64 keep-alive
//! connections, never re-sending) with the other, so GET and POST each see every deploy
//! through one of the two clients. A [`Row`] per deploy holds what [`measure`] saw: the
//! failed requests of both clients, the engine's events ([`Timeline`]; the naive flow marks the
//! same points itself), the nginx workers sampled every [`SAMPLE`] ([`WorkerWatch`]) and the
//! generator's latency. [`print_deploys`] prints the tables.
//!
//! A second part, [`scale`], drives an [`NginxRouter`] directly: [`SERVICES`] services of
//! [`PEERS`] peers each (the peers need not be live) on one managed nginx; it times one
//! confirmed dynamic route change and one structural reload of the whole tree.
//!
//! Knobs: `SWITCHYARD_BENCH_DEPLOYS` (dynamic deploys per strategy and pairing, default 20),
//! `SWITCHYARD_BENCH_OTHER_DEPLOYS` (naive and reload, default 5), `SWITCHYARD_BENCH_PARTS`
//! (`deploys`, `scale`; default both). Rows go to `target/bench-routing.json`. Needs nginx
//! with its Lua module, `/usr/bin/wrk` and the demo-app (`scripts/build-demo-app`).
//!
//! This file holds the knobs, the [`Plan`], the machine facts ([`Host`]) and the report;
//! [`flows`] names the flows, strategies and pairings and runs the naive order, [`deploys`]
//! runs the deploys part, [`row`] sums one deploy up, [`tables`] prints the deploy tables,
//! [`scale`] is the second part and [`targets`] judges both against issue 9's targets.
//!
//! [`Flow`]: flows::Flow
//! [`Strategy`]: flows::Strategy
//! [`Pairing`]: flows::Pairing
//! [`Sandbox`]: switchyard_app::sandbox::Sandbox
//! [`Load`]: switchyard_app::load::Load
//! [`Row`]: row::Row
//! [`measure`]: deploys::measure
//! [`Timeline`]: common::Timeline
//! [`WorkerWatch`]: common::WorkerWatch
//! [`print_deploys`]: tables::print_deploys
//! [`NginxRouter`]: switchyard_nginx::NginxRouter
//! [`SERVICES`]: scale::SERVICES
//! [`PEERS`]: scale::PEERS

// A crate root's modules resolve beside it, among the bench roots in `benches/`; this
// bench's own live in `benches/routing/`.
mod common;
#[path = "routing/deploys.rs"]
mod deploys;
#[path = "routing/flows.rs"]
mod flows;
#[path = "routing/row.rs"]
mod row;
#[path = "routing/scale.rs"]
mod scale;
#[path = "routing/tables.rs"]
mod tables;
#[path = "routing/targets.rs"]
mod targets;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use common::*;
use deploys::run_deploys;
use flows::Flow;
use scale::{print_scale, scale};
use tables::print_deploys;
use targets::print_targets;

const REPLICAS: u16 = 4;
const CONNECTIONS: usize = 64;
const WRK_THREADS: usize = 2;
const LATENCY_MS: u32 = 20;
const DYNAMIC_DEPLOYS: usize = 20;
const OTHER_DEPLOYS: usize = 5;
/// Load before the settle, so every connection is open.
const WARMUP: Duration = Duration::from_millis(500);
/// Quiet time right before the deploy; its latency is the steady state.
const SETTLE: Duration = Duration::from_secs(1);
/// Time after a deploy returns that still counts: the naive order fails until the killed
/// replicas' connections are gone.
const TAIL: Duration = Duration::from_secs(1);
/// How often the nginx workers are counted during a deploy.
const SAMPLE: Duration = Duration::from_millis(5);
/// Bounds on one deploy's loads; a deploy that outlasts them is an error.
const LOAD_BOUND: Duration = Duration::from_secs(60);
const MAX_REQUESTS: u64 = 1_000_000;
const POST_BODY: usize = 256;
/// A canary of three steps that takes about a second and a half: two 500 ms holds.
const CANARY: &str = r#"steps = [25, 50, 100]
hold = "500ms"
interval = "250ms"
window = "500ms"
min_requests = 10
failure_limit = 1
inconclusive_limit = 10"#;
const ROLLING: &str = "max_surge = 1\nmax_unavailable = 0";
/// The naive canary's hold per step, the engine's `hold`.
const NAIVE_HOLD: Duration = Duration::from_millis(500);

fn main() -> anyhow::Result<()> {
    let binary = demo_app()?;
    if !Path::new(WRK).exists() {
        bail!("wrk not found at {WRK}: install it with scripts/install-deps (Debian package wrk)");
    }
    block_on(bench(binary))
}

/// A whole number above 0 from the environment, or `default` when unset.
fn knob(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => match v.trim().parse() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("{name}={v:?}: expected a whole number above 0"),
        },
    }
}

/// What the knobs asked for.
#[derive(Debug, Serialize)]
struct Plan {
    dynamic_deploys: usize,
    other_deploys: usize,
    deploys: bool,
    scale: bool,
}

impl Plan {
    fn from_env() -> anyhow::Result<Plan> {
        let parts = std::env::var("SWITCHYARD_BENCH_PARTS").unwrap_or("deploys,scale".into());
        let parts: Vec<&str> = parts.split(',').map(str::trim).collect();
        if let Some(bad) = parts.iter().find(|p| !["deploys", "scale"].contains(p)) {
            bail!("SWITCHYARD_BENCH_PARTS: unknown part {bad:?}; the parts are deploys, scale");
        }
        Ok(Plan {
            dynamic_deploys: knob("SWITCHYARD_BENCH_DEPLOYS", DYNAMIC_DEPLOYS)?,
            other_deploys: knob("SWITCHYARD_BENCH_OTHER_DEPLOYS", OTHER_DEPLOYS)?,
            deploys: parts.contains(&"deploys"),
            scale: parts.contains(&"scale"),
        })
    }

    /// Whether `flow` deploys in `round`: dynamic in every round, the others in rounds spread
    /// evenly over the run.
    fn runs_in(&self, flow: Flow, round: usize) -> bool {
        let others = self.other_deploys.min(self.dynamic_deploys);
        let step = self.dynamic_deploys / others;
        flow == Flow::Dynamic || (round.is_multiple_of(step) && round / step < others)
    }
}

async fn bench(binary: PathBuf) -> anyhow::Result<()> {
    let started = Instant::now();
    let plan = Plan::from_env()?;
    let mut rows = Vec::new();
    if plan.deploys {
        run_deploys(&binary, &plan, &mut rows).await?;
    }
    let scaled = if plan.scale {
        Some(scale().await.context("the scale part")?)
    } else {
        None
    };
    let machine = Machine::read().await;
    let host = Host::read().await;
    println!("\n{}\n{}\n", machine.line(), host.line());
    if plan.deploys {
        print_deploys(&plan, &rows);
    }
    if let Some(s) = &scaled {
        print_scale(s);
    }
    print_targets(&plan, &rows, scaled.as_ref());
    let path = json_path("bench-routing.json");
    let json = serde_json::json!({
        "machine": machine,
        "host": host,
        "plan": plan,
        "replicas": REPLICAS,
        "connections": CONNECTIONS,
        "wrk_threads": WRK_THREADS,
        "latency_ms": LATENCY_MS,
        "canary": CANARY,
        "rolling": ROLLING,
        "rows": rows,
        "scale": scaled,
    });
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("raw rows: {}", path.display());
    println!("bench wall time: {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// `nproc`, `free -g` and `nginx -v`, as BENCHMARKS.md quotes them.
#[derive(Debug, Serialize)]
struct Host {
    nproc: String,
    free_g: String,
    nginx_v: String,
    wrk: String,
}

impl Host {
    async fn read() -> Host {
        let wrk = output(WRK, &["-v"]).await;
        Host {
            nproc: output("nproc", &[]).await,
            free_g: output("free", &["-g"]).await,
            nginx_v: output("nginx", &["-v"]).await,
            wrk: wrk.lines().next().unwrap_or_default().to_owned(),
        }
    }

    fn line(&self) -> String {
        format!(
            "nproc: {}; {}; {}\nfree -g:\n{}",
            self.nproc, self.nginx_v, self.wrk, self.free_g
        )
    }
}
