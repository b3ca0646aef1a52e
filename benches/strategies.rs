//! `cargo bench --bench strategies`: the four deploy strategies side by side, against the
//! same service under the same load, with the naive reload-then-stop flow as a reference.
//! The fields of [`Run`] and [`PhaseTimes`] define the columns.
//!
//! Every run gets a fresh [`Sandbox`] (managed nginx, [`REPLICAS`] replicas of the demo-app
//! as Docker containers answering after 20 ms). The engine brings the service to [`V1`]
//! (blue-green, no load), [`CONNECTIONS`] keep-alive connections of [`Load`] start, and after
//! a warm-up and a settle (the steady-state window) the row's flow deploys [`V2`]:
//! - `blue-green`: [`Sandbox::deploy_with`] with [`StrategyKind::BlueGreen`];
//! - `canary`: [`StrategyKind::Canary`] through [`CANARY`]'s short steps, judged from nginx's
//!   access log (every canary must be promoted);
//! - `rolling`: max_surge 1, max_unavailable 0;
//! - `in-place`: max_surge 0, max_unavailable 1;
//! - `naive`: [`naive_flip`], shared with the deploy bench: start, wait healthy, rewrite the
//!   upstream, SIGHUP, stop the old replicas at once.
//!
//! While the deploy runs, [`watch_running`] lists the service's containers and inspects each
//! one every [`SAMPLE`], keeping the most and fewest running; a [`Timeline`] observer counts
//! reloads. A second table runs rolling deploys with more surge (fewer, larger batches) and
//! with fewer replicas, to check that wall time grows with the number of batches.
//!
//! A third table, `in-place-1`, is the one case that cannot avoid a gap: in-place with one
//! replica (`allow_downtime = true`, the same load). Its failed requests are the measurement,
//! not a problem. It sets the engine's `gap_ms` (from stopping the old replica until the
//! replacement's route is confirmed) beside the gap the clients saw ([`ClientGap`]): from the
//! first failed request to the last one, and the longest stretch with no successful response.
//! Once per bench, a 1-replica blue-green service is asked for an in-place deploy without
//! `allow_downtime` ([`refusal`]): the engine must refuse it (exit code 2) and leave the
//! service answering [`V1`] with no failed request.
//!
//! Runs go round-robin (run 1 of every row, then run 2, ...), so slow phases of the shared
//! machine spread over all rows. Knobs: `SWITCHYARD_BENCH_RUNS` (default 5),
//! `SWITCHYARD_BENCH_REPLICAS` (default 4; not `in-place-1`'s), `SWITCHYARD_BENCH_ROWS`
//! (comma-separated row names, `batches` for the second table, `in-place-1` for the third;
//! default all). Every run goes to
//! `target/bench-strategies.json`. The demo-app binary must have been built with
//! `scripts/build-demo-app`.
//!
//! This file holds the knobs, the row names and the round-robin; [`case`] turns row names
//! into [`Case`]s, [`run`] measures one deploy, [`tables`] prints the first two tables and
//! [`gap`] holds what only `in-place-1` needs (the client gap, the refusal, its table).
//!
//! [`Sandbox`]: switchyard_app::sandbox::Sandbox
//! [`Sandbox::deploy_with`]: switchyard_app::sandbox::Sandbox::deploy_with
//! [`Load`]: switchyard_app::load::Load
//! [`StrategyKind::BlueGreen`]: switchyard_engine::config::StrategyKind::BlueGreen
//! [`StrategyKind::Canary`]: switchyard_engine::config::StrategyKind::Canary
//! [`PhaseTimes`]: run::PhaseTimes
//! [`watch_running`]: run::watch_running
//! [`ClientGap`]: gap::ClientGap

// A crate root's modules resolve beside it, among the bench roots in `benches/`; this
// bench's own live in `benches/strategies/`.
#[path = "strategies/case.rs"]
mod case;
mod common;
#[path = "strategies/gap.rs"]
mod gap;
#[path = "strategies/run.rs"]
mod run;
#[path = "strategies/tables.rs"]
mod tables;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use case::{cases, Case};
use common::*;
use gap::{print_one_replica, refusal, Refusal};
use run::{run_case, Run};
use tables::{print_batches, print_phases, print_problems, print_strategies};

const RUNS: usize = 5;
const REPLICAS: u16 = 4;
const CONNECTIONS: usize = 64;
const LATENCY_MS: u32 = 20;
/// The version every run starts from, and the one it deploys.
const V1: &str = "strat-1";
const V2: &str = "strat-2";
/// Load before the settle, so every connection is open and warm.
const WARMUP: Duration = Duration::from_secs(1);
/// Quiet time right before the deploy; its latency is the steady state.
const SETTLE: Duration = Duration::from_secs(1);
/// Time after a deploy returns that still counts as its window: the naive order keeps
/// failing until nginx's old workers are gone.
const TAIL: Duration = Duration::from_secs(2);
/// How often the running containers are counted during a deploy.
const SAMPLE: Duration = Duration::from_millis(25);
/// How often `in-place-1` reads the load's failed count, to see when failures stop.
const FAILURE_POLL: Duration = Duration::from_millis(5);
/// Bounds on one run's load; a run that outlasts them is reported as an error.
const MAX_REQUESTS: u64 = 1_000_000;
const MAX_LOAD: Duration = Duration::from_secs(120);

/// A canary that takes seconds: three steps held 2 s each, checked every 500 ms.
const CANARY: &str = r#"steps = [25, 50, 100]
hold = "2s"
interval = "500ms"
window = "2s"
min_requests = 10
failure_limit = 1
inconclusive_limit = 10"#;

/// Rows of the main table, in print order; `batches` names the second table, `in-place-1`
/// the third.
const ROWS: [&str; 7] = [
    "blue-green",
    "canary",
    "rolling",
    "in-place",
    "naive",
    "batches",
    "in-place-1",
];

fn main() -> anyhow::Result<()> {
    let binary = demo_app()?;
    block_on(bench(binary))
}

/// A whole number from the environment, or `default` when unset.
fn knob(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => match v.trim().parse() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("{name}={v:?}: expected a whole number above 0"),
        },
    }
}

/// The row names `SWITCHYARD_BENCH_ROWS` asks for, or every row.
fn rows() -> anyhow::Result<Vec<String>> {
    let rows: Vec<String> = match std::env::var("SWITCHYARD_BENCH_ROWS") {
        Err(_) => ROWS.iter().map(|r| (*r).to_owned()).collect(),
        Ok(list) => list.split(',').map(|r| r.trim().to_owned()).collect(),
    };
    if let Some(unknown) = rows.iter().find(|r| !ROWS.contains(&r.as_str())) {
        bail!("SWITCHYARD_BENCH_ROWS: unknown row {unknown:?}; the rows are {ROWS:?}");
    }
    Ok(rows)
}

/// What the knobs asked for.
struct Plan {
    runs: usize,
    replicas: u16,
    cases: Vec<Case>,
    /// Whether the `in-place-1` refusal runs.
    with_refusal: bool,
}

/// What the runs measured, in the order they ran.
#[derive(Default)]
struct Measured {
    runs: Vec<Run>,
    refused: Option<Refusal>,
}

async fn bench(binary: PathBuf) -> anyhow::Result<()> {
    let bench_started = Instant::now();
    let runs = knob("SWITCHYARD_BENCH_RUNS", RUNS)?;
    let replicas = u16::try_from(knob("SWITCHYARD_BENCH_REPLICAS", REPLICAS.into())?)
        .context("SWITCHYARD_BENCH_REPLICAS is too large")?;
    let rows = rows()?;
    let plan = Plan {
        runs,
        replicas,
        cases: cases(&rows, replicas),
        with_refusal: rows.iter().any(|r| r == "in-place-1"),
    };
    let versions = [V1.to_owned(), V2.to_owned()];

    let mut measured = Measured::default();
    let result = run_all(&binary, &plan, &mut measured).await;
    remove_images(&versions).await;
    result?;

    let machine = Machine::read().await;
    print_report(&plan, &measured, &machine);
    let path = json_path("bench-strategies.json");
    let json = serde_json::json!({
        "machine": machine,
        "runs_per_row": runs,
        "connections": CONNECTIONS,
        "latency_ms": LATENCY_MS,
        "replicas": replicas,
        "canary": CANARY,
        "runs": measured.runs,
        "in_place_1_refusal": measured.refused,
    });
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("raw rows: {}", path.display());
    println!(
        "bench wall time: {:.0} s",
        bench_started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The refusal once, then every case round-robin, each run reported on stderr as it ends.
/// What ran before a failure stays in `measured`.
async fn run_all(binary: &Path, plan: &Plan, measured: &mut Measured) -> anyhow::Result<()> {
    let runs = plan.runs;
    if plan.with_refusal {
        let r = refusal(binary)
            .await
            .context("in-place-1 refusal: the bench itself failed")?;
        eprintln!("{:<32} once: {}", "in-place-1 refusal", r.summary());
        measured.refused = Some(r);
    }
    for n in 1..=runs {
        for case in &plan.cases {
            let run = run_case(binary, case)
                .await
                .with_context(|| format!("{} run {n}: the bench itself failed", case.label()))?;
            eprintln!(
                "{:<32} {n}/{runs}: {:>6.0} ms, {} failed, {} retried, running {}–{} \
                 (at rest {}), {} reloads{}{}",
                case.label(),
                run.wall_ms,
                run.failed,
                run.retried,
                run.fewest_running,
                run.peak_running,
                run.resting_running,
                run.reloads,
                run.rollout
                    .as_ref()
                    .and_then(|o| o.gap_ms)
                    .map_or(String::new(), |g| format!(", engine gap {g} ms")),
                run.error
                    .as_ref()
                    .map_or(String::new(), |e| format!(", DEPLOY FAILED: {e}")),
            );
            measured.runs.push(run);
        }
    }
    Ok(())
}

/// The machine, the setup, then every table whose rows ran, and the problems.
fn print_report(plan: &Plan, measured: &Measured, machine: &Machine) {
    let (cases, done, replicas) = (&plan.cases, &measured.runs, plan.replicas);
    println!("\n{}", machine.line());
    println!(
        "{} runs per row, each on a fresh service brought to {V1} and then deployed to \
         {V2} under {CONNECTIONS} keep-alive connections; backend latency {LATENCY_MS} ms, \
         {} replicas, Docker runtime\n",
        plan.runs,
        match (
            cases.iter().any(|c| !c.one_replica),
            cases.iter().any(|c| c.one_replica)
        ) {
            (true, true) => format!("{replicas} (in-place-1: 1)"),
            (false, true) => "1".to_owned(),
            _ => replicas.to_string(),
        }
    );
    let main_rows: Vec<&Case> = cases
        .iter()
        .filter(|c| !c.batches_only && !c.one_replica)
        .collect();
    if !main_rows.is_empty() {
        print_strategies(&main_rows, done);
        print_phases(&main_rows, done);
    }
    let batch_rows: Vec<&Case> = cases.iter().filter(|c| c.in_batches).collect();
    if !batch_rows.is_empty() {
        print_batches(&batch_rows, done, replicas);
    }
    let one_replica: Vec<&Case> = cases.iter().filter(|c| c.one_replica).collect();
    if !one_replica.is_empty() {
        print_one_replica(&one_replica, done, measured.refused.as_ref());
    }
    print_problems(cases, done);
}
