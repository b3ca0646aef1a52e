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

mod common;
use common::*;

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use switchyard_app::live::AnyRuntime;
use switchyard_app::load::{Load, LoadConfig, LoadReport, MAX_FAILURES_KEPT};
use switchyard_app::sandbox::{Sandbox, SandboxOptions};
use switchyard_engine::config::{RuntimeChoice, StrategyKind};
use switchyard_engine::deploy::rolling::RolloutReport;
use switchyard_engine::{Event, InstanceStatus, Name, Quiet, Runtime, RuntimeError};

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
    block_on(run(binary))
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

async fn run(binary: PathBuf) -> anyhow::Result<()> {
    let bench_started = Instant::now();
    let runs = knob("SWITCHYARD_BENCH_RUNS", RUNS)?;
    let replicas = u16::try_from(knob("SWITCHYARD_BENCH_REPLICAS", REPLICAS.into())?)
        .context("SWITCHYARD_BENCH_REPLICAS is too large")?;
    let rows: Vec<String> = match std::env::var("SWITCHYARD_BENCH_ROWS") {
        Err(_) => ROWS.iter().map(|r| (*r).to_owned()).collect(),
        Ok(list) => list.split(',').map(|r| r.trim().to_owned()).collect(),
    };
    if let Some(unknown) = rows.iter().find(|r| !ROWS.contains(&r.as_str())) {
        bail!("SWITCHYARD_BENCH_ROWS: unknown row {unknown:?}; the rows are {ROWS:?}");
    }
    let cases = cases(&rows, replicas);
    let versions = [V1.to_owned(), V2.to_owned()];

    let mut done: Vec<Run> = Vec::new();
    let mut refused: Option<Refusal> = None;
    let result = async {
        if rows.iter().any(|r| r == "in-place-1") {
            let r = refusal(&binary)
                .await
                .context("in-place-1 refusal: the bench itself failed")?;
            eprintln!("{:<32} once: {}", "in-place-1 refusal", r.summary());
            refused = Some(r);
        }
        for n in 1..=runs {
            for case in &cases {
                let run = run_case(&binary, case).await.with_context(|| {
                    format!("{} run {n}: the bench itself failed", case.label())
                })?;
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
                done.push(run);
            }
        }
        anyhow::Ok(())
    }
    .await;
    remove_images(&versions).await;
    result?;

    let machine = Machine::read().await;
    println!("\n{}", machine.line());
    println!(
        "{runs} runs per row, each on a fresh service brought to {V1} and then deployed to \
         {V2} under {CONNECTIONS} keep-alive connections; backend latency {LATENCY_MS} ms, \
         {} replicas, Docker runtime\n",
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
        print_strategies(&main_rows, &done);
        print_phases(&main_rows, &done);
    }
    let batch_rows: Vec<&Case> = cases.iter().filter(|c| c.in_batches).collect();
    if !batch_rows.is_empty() {
        print_batches(&batch_rows, &done, replicas);
    }
    let one_replica: Vec<&Case> = cases.iter().filter(|c| c.one_replica).collect();
    if !one_replica.is_empty() {
        print_one_replica(&one_replica, &done, refused.as_ref());
    }
    print_problems(&cases, &done);

    let path = json_path("bench-strategies.json");
    let json = serde_json::json!({
        "machine": machine,
        "runs_per_row": runs,
        "connections": CONNECTIONS,
        "latency_ms": LATENCY_MS,
        "replicas": replicas,
        "canary": CANARY,
        "runs": done,
        "in_place_1_refusal": refused,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Engine(StrategyKind),
    Naive,
}

/// One row: a flow and the service it deploys.
#[derive(Debug, Clone)]
struct Case {
    name: &'static str,
    flow: Flow,
    replicas: u16,
    max_surge: u16,
    max_unavailable: u16,
    /// Only for the batches table.
    batches_only: bool,
    /// Shown in the batches table.
    in_batches: bool,
    /// The `in-place-1` table: one replica, `allow_downtime = true`.
    one_replica: bool,
}

impl Case {
    fn new(name: &'static str, flow: Flow, replicas: u16) -> Case {
        Case {
            name,
            flow,
            replicas,
            max_surge: 0,
            max_unavailable: 0,
            batches_only: false,
            in_batches: false,
            one_replica: false,
        }
    }

    fn rolling(name: &'static str, kind: StrategyKind, replicas: u16, surge: u16) -> Case {
        Case {
            max_surge: surge,
            max_unavailable: u16::from(surge == 0),
            ..Case::new(name, Flow::Engine(kind), replicas)
        }
    }

    fn label(&self) -> String {
        if self.batches_only {
            format!(
                "rolling, {} replicas, max_surge {}",
                self.replicas, self.max_surge
            )
        } else {
            self.name.to_owned()
        }
    }

    fn options(&self, binary: &Path) -> SandboxOptions {
        let base = SandboxOptions::new(RuntimeChoice::Docker, binary.to_owned())
            .replicas(self.replicas)
            .env("LATENCY_MS", &LATENCY_MS.to_string());
        if self.one_replica {
            return base.strategy("in-place", "allow_downtime = true");
        }
        match self.flow {
            Flow::Naive => base,
            Flow::Engine(StrategyKind::Canary) => SandboxOptions {
                canary: CANARY.to_owned(),
                ..base.strategy("canary", "")
            },
            Flow::Engine(StrategyKind::BlueGreen) => base.strategy("blue-green", ""),
            Flow::Engine(kind) => base.strategy(
                kind.as_str(),
                &format!(
                    "max_surge = {}\nmax_unavailable = {}",
                    self.max_surge, self.max_unavailable
                ),
            ),
        }
    }
}

/// The rows asked for. The batches table reuses the main table's rolling row (max_surge 1)
/// when that runs, and adds max_surge 2 and `replicas`, and 2 replicas with max_surge 1.
fn cases(rows: &[String], replicas: u16) -> Vec<Case> {
    let wanted = |name: &str| rows.iter().any(|r| r == name);
    let mut cases = Vec::new();
    let main = [
        ("blue-green", Flow::Engine(StrategyKind::BlueGreen)),
        ("canary", Flow::Engine(StrategyKind::Canary)),
        ("rolling", Flow::Engine(StrategyKind::Rolling)),
        ("in-place", Flow::Engine(StrategyKind::InPlace)),
        ("naive", Flow::Naive),
    ];
    for (name, flow) in main {
        if !wanted(name) {
            continue;
        }
        cases.push(match flow {
            Flow::Engine(StrategyKind::Rolling) => Case {
                in_batches: wanted("batches"),
                ..Case::rolling(name, StrategyKind::Rolling, replicas, 1)
            },
            Flow::Engine(StrategyKind::InPlace) => {
                Case::rolling(name, StrategyKind::InPlace, replicas, 0)
            }
            _ => Case::new(name, flow, replicas),
        });
    }
    if wanted("batches") {
        let mut more: Vec<(u16, u16)> = Vec::new();
        for surge in [1, 2, replicas] {
            let reused = surge == 1 && wanted("rolling");
            if surge <= replicas && !reused && !more.contains(&(replicas, surge)) {
                more.push((replicas, surge));
            }
        }
        if replicas > 2 {
            more.push((2, 1));
        }
        for (replicas, surge) in more {
            cases.push(Case {
                batches_only: true,
                in_batches: true,
                ..Case::rolling("rolling", StrategyKind::Rolling, replicas, surge)
            });
        }
    }
    if wanted("in-place-1") {
        cases.push(Case {
            one_replica: true,
            ..Case::rolling("in-place-1", StrategyKind::InPlace, 1, 0)
        });
    }
    cases
}

/// One deploy under load. Times are milliseconds.
#[derive(Debug, Serialize)]
struct Run {
    case: String,
    strategy: &'static str,
    replicas: u16,
    max_surge: u16,
    max_unavailable: u16,
    /// The deploy's error, when it failed (the run is still measured).
    error: Option<String>,
    wall_ms: f64,
    /// Requests completed from the deploy call to [`TAIL`] after it returned.
    requests: u64,
    requests_per_second: f64,
    failed: u64,
    retried: u64,
    /// Running containers of the service right before the deploy, and the most and fewest
    /// seen while it ran.
    resting_running: usize,
    peak_running: usize,
    fewest_running: usize,
    samples: usize,
    sample_errors: usize,
    sample_error: Option<String>,
    /// `Event::Reloaded` plus `Event::Shifted` (a canary step); 1 for the naive SIGHUP.
    reloads: usize,
    p99_steady_ms: Option<f64>,
    p99_during_ms: Option<f64>,
    /// Where the wall time went.
    phases: PhaseTimes,
    /// The engine's own report of a rolling or in-place deploy.
    rollout: Option<RolloutReport>,
    /// The outage as the clients saw it.
    client_gap: ClientGap,
    failure_examples: Vec<String>,
}

/// An outage as the load's clients saw it, from requests sent between the deploy call and
/// [`TAIL`] after it returned. Milliseconds.
#[derive(Debug, Default, Serialize)]
struct ClientGap {
    /// From the deploy call to the first failed request's send time.
    first_failed_ms: Option<f64>,
    /// From the first failed request's send time to the last one's. Exact when
    /// [`LoadReport::failures`] kept every failure of the window (it keeps the first
    /// [`MAX_FAILURES_KEPT`]); otherwise the end is when a poll every [`FAILURE_POLL`] last
    /// saw the failed count rise (`in-place-1` only; `None` for other rows).
    failing_ms: Option<f64>,
    /// Whether `failing_ms` came from the kept failures alone.
    failing_exact: bool,
    /// The longest stretch with no successful response: between two successful requests'
    /// completions (send time plus latency) in the window. Send times would hide requests
    /// that hang through the outage and then succeed.
    no_success_ms: Option<f64>,
}

impl ClientGap {
    fn measure(
        traffic: &LoadReport,
        (from, to): (Instant, Instant),
        failed: u64,
        last_failure_seen: Option<Instant>,
    ) -> ClientGap {
        let sent = |at: Duration| traffic.started + at;
        let failures: Vec<Instant> = traffic
            .failures
            .iter()
            .map(|f| sent(f.at))
            .filter(|at| from <= *at && *at < to)
            .collect();
        let first = failures.iter().min().copied();
        let exact = failed > 0 && failures.len() as u64 == failed;
        let last = if exact {
            failures.iter().max().copied()
        } else {
            last_failure_seen
        };
        let mut answered: Vec<Instant> = traffic
            .samples
            .iter()
            .map(|s| traffic.sent_at(s) + Duration::from_micros(u64::from(s.latency_us)))
            .filter(|at| from <= *at && *at < to)
            .collect();
        answered.sort_unstable();
        ClientGap {
            first_failed_ms: first.map(|f| ms(f.saturating_duration_since(from))),
            failing_ms: first
                .zip(last)
                .map(|(f, l)| ms(l.saturating_duration_since(f))),
            failing_exact: exact,
            no_success_ms: answered
                .windows(2)
                .map(|w| ms(w[1] - w[0]))
                .reduce(f64::max),
        }
    }
}

/// Runs one case in a fresh sandbox and shuts the sandbox down whatever happened.
async fn run_case(binary: &Path, case: &Case) -> anyhow::Result<Run> {
    let sandbox = Sandbox::start(&case.options(binary))
        .await
        .context("starting a sandbox")?;
    let result = measure(&sandbox, case).await;
    finish(sandbox, result).await
}

async fn measure(sandbox: &Sandbox, case: &Case) -> anyhow::Result<Run> {
    for version in [V1, V2] {
        sandbox.ensure_image(version).await?;
    }
    sandbox
        .deploy(V1, &Quiet)
        .await
        .with_context(|| format!("bringing the service to {V1}"))?;
    let runtime = &sandbox.live().runtime;
    let service = &sandbox.spec().name;
    let mut live_now = runtime.list(service).await?;
    let load = Load::start(LoadConfig {
        connections: CONNECTIONS,
        max_requests: MAX_REQUESTS,
        max_duration: MAX_LOAD,
        ..LoadConfig::new(sandbox.url())
    });
    tokio::time::sleep(WARMUP + SETTLE).await;
    let resting_running = running(runtime, service).await?;
    if load.is_finished() {
        bail!("the load stopped before the deploy (MAX_REQUESTS or MAX_LOAD spent)");
    }
    let before = load.snapshot();
    let timeline = Timeline::default();
    let deploying = Cell::new(true);
    let measuring = Cell::new(true);
    let called = Instant::now();
    let deploy = async {
        let result = match case.flow {
            Flow::Engine(kind) => sandbox
                .deploy_with(V2, kind, &timeline)
                .await
                .map(|report| (report.rollout, None))
                .map_err(|e| e.to_string()),
            Flow::Naive => naive_flip(sandbox, &mut live_now, V2, 0)
                .await
                .map(|phases| (None, Some(phases)))
                .map_err(|e| format!("{e:#}")),
        };
        let returned = Instant::now();
        deploying.set(false);
        (result, returned)
    };
    let deploy_and_tail = async {
        let done = tokio::join!(deploy, watch_running(runtime, service, &deploying));
        tokio::time::sleep(TAIL).await;
        measuring.set(false);
        done
    };
    let failures = async {
        if case.one_replica {
            watch_failures(&load, &measuring).await
        } else {
            None
        }
    };
    let (((result, returned), watch), last_failure_seen) = tokio::join!(deploy_and_tail, failures);
    let after = load.snapshot();
    if load.is_finished() {
        bail!("the load stopped before the run ended (MAX_REQUESTS or MAX_LOAD spent)");
    }
    let traffic = load.stop().await;
    let (rollout, naive, error) = match result {
        Ok((rollout, naive)) => (rollout, naive, None),
        Err(e) => (None, None, Some(e)),
    };
    let phases = match naive {
        Some(p) => PhaseTimes::naive(&p),
        None => PhaseTimes::engine(&timeline, called, returned),
    };
    let reloads = match case.flow {
        Flow::Naive => 1,
        Flow::Engine(_) => {
            timeline.count(|e| matches!(e, Event::Reloaded { .. } | Event::Shifted { .. }))
        }
    };
    let p99 = |from: Instant, to: Instant| traffic.percentile(99.0, Some((from, to))).map(ms);
    let window = (returned + TAIL) - called;
    let requests = after.total - before.total;
    let failed = after.failed - before.failed;
    let client_gap = ClientGap::measure(
        &traffic,
        (called, returned + TAIL),
        failed,
        last_failure_seen,
    );
    Ok(Run {
        case: case.label(),
        strategy: match case.flow {
            Flow::Engine(kind) => kind.as_str(),
            Flow::Naive => "naive",
        },
        replicas: case.replicas,
        max_surge: case.max_surge,
        max_unavailable: case.max_unavailable,
        error,
        wall_ms: ms(returned - called),
        requests,
        requests_per_second: requests as f64 / window.as_secs_f64(),
        failed,
        retried: after.retried - before.retried,
        resting_running,
        peak_running: watch.peak,
        fewest_running: watch.fewest.unwrap_or(0),
        samples: watch.samples,
        sample_errors: watch.errors,
        sample_error: watch.first_error,
        reloads,
        p99_steady_ms: p99(called - SETTLE, called),
        p99_during_ms: p99(called, returned),
        phases,
        rollout,
        client_gap,
        failure_examples: examples(&traffic),
    })
}

/// When the load's failed count last rose, read every [`FAILURE_POLL`] while `measuring`
/// holds; `None` when it never rose.
async fn watch_failures(load: &Load, measuring: &Cell<bool>) -> Option<Instant> {
    let mut failed = load.snapshot().failed;
    let mut last = None;
    while measuring.get() {
        tokio::time::sleep(FAILURE_POLL).await;
        let now = load.snapshot().failed;
        if now > failed {
            failed = now;
            last = Some(Instant::now());
        }
    }
    last
}

/// The in-place deploy of a 1-replica service without `allow_downtime`, under load.
#[derive(Debug, Serialize)]
struct Refusal {
    /// The deploy's exit code and message; `None` when it was not refused.
    code: Option<i32>,
    error: Option<String>,
    call_ms: f64,
    /// Engine events the attempt emitted.
    events: usize,
    /// The service's containers and whether each runs, before the call and [`TAIL`] after.
    containers_before: Vec<(String, bool)>,
    containers_after: Vec<(String, bool)>,
    /// Requests completed from the call to [`TAIL`] after it returned, and failed.
    requests: u64,
    failed: u64,
    /// Successful responses per version over the whole load.
    versions: Vec<(String, u64)>,
    /// The last successful [`V1`] request's send time after the call returned.
    v1_after_return_ms: Option<f64>,
    failure_examples: Vec<String>,
}

impl Refusal {
    fn unchanged(&self) -> bool {
        self.containers_before == self.containers_after
            && self.containers_after.iter().all(|(_, running)| *running)
    }

    fn summary(&self) -> String {
        let outcome = match (&self.code, &self.error) {
            (Some(code), Some(_)) => format!("refused with exit code {code}"),
            _ => "NOT REFUSED: the deploy went ahead".to_owned(),
        };
        let names = |cs: &[(String, bool)]| {
            cs.iter()
                .map(|(n, running)| {
                    if *running {
                        n.clone()
                    } else {
                        format!("{n} (not running)")
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let containers = if self.unchanged() {
            format!("containers unchanged ({})", names(&self.containers_after))
        } else {
            format!(
                "CONTAINERS CHANGED: {} before, {} after",
                names(&self.containers_before),
                names(&self.containers_after)
            )
        };
        let versions = self
            .versions
            .iter()
            .map(|(v, n)| format!("{n} from {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let still_v1 = self
            .v1_after_return_ms
            .map_or(format!("NO {V1} ANSWER after the call returned"), |t| {
                format!("{V1} still answering {t:.0} ms after it returned")
            });
        format!(
            "{outcome} in {:.0} ms, {} engine events; {containers}; {} requests from the call \
             to {} s after it, {} failed; successes over the whole load: {versions}; {still_v1}",
            self.call_ms,
            self.events,
            self.requests,
            TAIL.as_secs(),
            self.failed,
        )
    }
}

/// Starts a 1-replica blue-green service (the config loader rejects in-place with one
/// replica and no `allow_downtime`), brings it to [`V1`], puts the load on it and asks for an
/// in-place deploy of [`V2`], which the engine must refuse before touching anything.
async fn refusal(binary: &Path) -> anyhow::Result<Refusal> {
    let options = SandboxOptions::new(RuntimeChoice::Docker, binary.to_owned())
        .replicas(1)
        .env("LATENCY_MS", &LATENCY_MS.to_string())
        .strategy("blue-green", "");
    let sandbox = Sandbox::start(&options)
        .await
        .context("starting a sandbox")?;
    let result = attempt_refused(&sandbox).await;
    finish(sandbox, result).await
}

async fn attempt_refused(sandbox: &Sandbox) -> anyhow::Result<Refusal> {
    for version in [V1, V2] {
        sandbox.ensure_image(version).await?;
    }
    sandbox
        .deploy(V1, &Quiet)
        .await
        .with_context(|| format!("bringing the service to {V1}"))?;
    let runtime = &sandbox.live().runtime;
    let service = &sandbox.spec().name;
    let containers = || async {
        let instances = runtime.list(service).await?;
        let statuses = join_all(instances.iter().map(|i| runtime.status(i)).collect()).await;
        let mut out = Vec::new();
        for (instance, status) in instances.iter().zip(statuses) {
            out.push((
                instance.name.clone(),
                matches!(status?, InstanceStatus::Running { .. }),
            ));
        }
        anyhow::Ok(out)
    };
    let containers_before = containers().await?;
    let load = Load::start(LoadConfig {
        connections: CONNECTIONS,
        max_requests: MAX_REQUESTS,
        max_duration: MAX_LOAD,
        ..LoadConfig::new(sandbox.url())
    });
    tokio::time::sleep(WARMUP + SETTLE).await;
    let before = load.snapshot();
    let timeline = Timeline::default();
    let called = Instant::now();
    let result = sandbox
        .deploy_with(V2, StrategyKind::InPlace, &timeline)
        .await;
    let returned = Instant::now();
    tokio::time::sleep(TAIL).await;
    let after = load.snapshot();
    if load.is_finished() {
        bail!("the load stopped before the run ended (MAX_REQUESTS or MAX_LOAD spent)");
    }
    let traffic = load.stop().await;
    let containers_after = containers().await?;
    let (code, error) = match result {
        Ok(_) => (None, None),
        Err(e) => (Some(e.code), Some(e.message)),
    };
    Ok(Refusal {
        code,
        error,
        call_ms: ms(returned - called),
        events: timeline.count(|_| true),
        containers_before,
        containers_after,
        requests: after.total - before.total,
        failed: after.failed - before.failed,
        versions: traffic
            .by_version
            .iter()
            .map(|(v, seen)| (v.clone(), seen.count))
            .collect(),
        v1_after_return_ms: traffic
            .by_version
            .get(V1)
            .filter(|seen| seen.last >= returned)
            .map(|seen| ms(seen.last - returned)),
        failure_examples: examples(&traffic),
    })
}

fn examples(traffic: &LoadReport) -> Vec<String> {
    traffic
        .failures
        .iter()
        .take(5)
        .map(|f| f.to_string())
        .collect()
}

impl Timeline {
    fn count(&self, pick: impl Fn(&Event) -> bool) -> usize {
        let events = self.0.lock().expect("timeline lock");
        events.iter().filter(|(_, e)| pick(e)).count()
    }
}

/// A deploy's wall time split by what it waited for, in milliseconds. For the engine each
/// gap between two events goes to the phase of the later event (see [`PhaseTimes::engine`]).
#[derive(Debug, Default, Serialize)]
struct PhaseTimes {
    /// To `Begin`: the lock, finishing no interrupted deployment, the deployment row.
    lock: f64,
    /// To each `Started`: create and start one container, plus its journal writes.
    start: f64,
    /// To `Waiting` and `Healthy`: health checks.
    health: f64,
    /// To `Reloaded`, `Shifted` and `RolledBack`: render, `nginx -t`, swap, SIGHUP, confirm.
    reload: f64,
    /// To `Analysis` and `Paused`: a canary step's hold and its checks.
    hold: f64,
    /// To `Drained`: the old nginx workers exiting.
    drain: f64,
    /// To each `Stopped` and `Removed`: one graceful stop (or removal).
    stop: f64,
    /// To `Done` and on to the return: activating the slot, pruning, unlocking.
    finish: f64,
}

impl PhaseTimes {
    fn engine(timeline: &Timeline, called: Instant, returned: Instant) -> PhaseTimes {
        let mut t = PhaseTimes::default();
        let mut from = called;
        let events = timeline.0.lock().expect("timeline lock");
        for (at, event) in events.iter() {
            let gap = ms(at.saturating_duration_since(from));
            from = *at;
            *match event {
                Event::Begin { .. } | Event::Resume { .. } => &mut t.lock,
                Event::Started { .. } => &mut t.start,
                Event::Waiting { .. } | Event::Healthy { .. } => &mut t.health,
                Event::Reloaded { .. } | Event::Shifted { .. } | Event::RolledBack { .. } => {
                    &mut t.reload
                }
                Event::Analysis { .. } | Event::Paused { .. } => &mut t.hold,
                Event::Drained { .. } => &mut t.drain,
                Event::Stopped { .. } | Event::Removed { .. } => &mut t.stop,
                Event::Done { .. } => &mut t.finish,
            } += gap;
        }
        t.finish += ms(returned.saturating_duration_since(from));
        t
    }

    /// The naive flow: start, health, rewrite and SIGHUP, stop and remove.
    fn naive(p: &Phases) -> PhaseTimes {
        PhaseTimes {
            start: ms(p.last_started - p.called),
            health: ms(p.healthy - p.last_started),
            reload: ms(p.reloaded - p.healthy),
            stop: ms(p.returned - p.reloaded),
            ..PhaseTimes::default()
        }
    }
}

/// Running containers seen while a deploy ran.
#[derive(Default)]
struct Watch {
    samples: usize,
    peak: usize,
    fewest: Option<usize>,
    errors: usize,
    first_error: Option<String>,
}

/// Counts the service's running containers every [`SAMPLE`] while `deploying` holds, on
/// the deploy's own task (the runtime's futures are not `Send`).
async fn watch_running(runtime: &AnyRuntime, service: &Name, deploying: &Cell<bool>) -> Watch {
    let mut watch = Watch::default();
    while deploying.get() {
        match running(runtime, service).await {
            Ok(n) => {
                watch.samples += 1;
                watch.peak = watch.peak.max(n);
                watch.fewest = Some(watch.fewest.map_or(n, |f| f.min(n)));
            }
            Err(e) => {
                watch.errors += 1;
                watch.first_error.get_or_insert(e.to_string());
            }
        }
        tokio::time::sleep(SAMPLE).await;
    }
    watch
}

/// The service's containers Docker says are running: one list, then one inspect each.
async fn running(runtime: &AnyRuntime, service: &Name) -> Result<usize, RuntimeError> {
    let instances = runtime.list(service).await?;
    let statuses = join_all(instances.iter().map(|i| runtime.status(i)).collect()).await;
    let mut running = 0;
    for status in statuses {
        if matches!(status?, InstanceStatus::Running { .. }) {
            running += 1;
        }
    }
    Ok(running)
}

fn runs_of<'r>(case: &Case, runs: &'r [Run]) -> Vec<&'r Run> {
    let label = case.label();
    runs.iter().filter(|r| r.case == label).collect()
}

fn median(values: Vec<f64>) -> String {
    spread(values).map_or("–".to_owned(), |s| num(s.median))
}

fn min_max(values: Vec<f64>) -> String {
    spread(values).map_or("–".to_owned(), |s| {
        format!("{}–{}", num(s.min), num(s.max))
    })
}

/// One value when every run agrees, else the range.
fn range(values: Vec<f64>) -> String {
    spread(values).map_or("–".to_owned(), |s| {
        if s.min == s.max {
            num(s.min)
        } else {
            format!("{}–{}", num(s.min), num(s.max))
        }
    })
}

fn ok_runs(runs: &[&Run]) -> String {
    let ok = runs.iter().filter(|r| r.error.is_none()).count();
    if ok == runs.len() {
        ok.to_string()
    } else {
        format!("{ok} ok of {}", runs.len())
    }
}

fn print_strategies(cases: &[&Case], runs: &[Run]) {
    let mut table = Table::new(&[
        "strategy",
        "runs",
        "req/s",
        "failed",
        "failed/run",
        "retried",
        "wall ms",
        "wall min–max",
        "peak extra containers",
        "fewest running",
        "p99 steady ms",
        "p99 during ms",
        "reloads",
    ]);
    for case in cases {
        let rs = runs_of(case, runs);
        let col = |value: &dyn Fn(&Run) -> f64| rs.iter().map(|r| value(r)).collect::<Vec<_>>();
        table.row(vec![
            case.label(),
            ok_runs(&rs),
            median(col(&|r| r.requests_per_second.round())),
            rs.iter().map(|r| r.failed).sum::<u64>().to_string(),
            median(col(&|r| r.failed as f64)),
            rs.iter().map(|r| r.retried).sum::<u64>().to_string(),
            median(col(&|r| r.wall_ms)),
            min_max(col(&|r| r.wall_ms)),
            range(col(&|r| r.peak_running as f64 - f64::from(r.replicas))),
            range(col(&|r| r.fewest_running as f64)),
            median(rs.iter().filter_map(|r| r.p99_steady_ms).collect()),
            median(rs.iter().filter_map(|r| r.p99_during_ms).collect()),
            range(col(&|r| r.reloads as f64)),
        ]);
    }
    table.print();
}

fn print_phases(cases: &[&Case], runs: &[Run]) {
    println!("where the deploy wall time goes (median ms per run)\n");
    let mut table = Table::new(&[
        "strategy",
        "wall",
        "lock",
        "start containers",
        "health wait",
        "reloads",
        "canary holds",
        "drain",
        "stop old",
        "finish",
    ]);
    for case in cases {
        let rs = runs_of(case, runs);
        let col = |value: &dyn Fn(&PhaseTimes) -> f64| {
            median(rs.iter().map(|r| value(&r.phases)).collect())
        };
        table.row(vec![
            case.label(),
            median(rs.iter().map(|r| r.wall_ms).collect()),
            col(&|p| p.lock),
            col(&|p| p.start),
            col(&|p| p.health),
            col(&|p| p.reload),
            col(&|p| p.hold),
            col(&|p| p.drain),
            col(&|p| p.stop),
            col(&|p| p.finish),
        ]);
    }
    table.print();
}

fn print_batches(cases: &[&Case], runs: &[Run], replicas: u16) {
    println!("rolling (max_unavailable 0): wall time against batches\n");
    let mut table = Table::new(&[
        "replicas",
        "max_surge",
        "batches",
        "runs",
        "wall ms",
        "wall min–max",
        "ms per batch",
        "start per batch",
        "health per batch",
        "reload per batch",
        "drain per batch",
        "stop per batch",
        "failed",
    ]);
    // (batches, wall ms) of every successful run at `replicas`, for the fit below.
    let mut points: Vec<(f64, f64)> = Vec::new();
    for case in cases {
        let rs = runs_of(case, runs);
        let rollouts: Vec<(&Run, &RolloutReport)> = rs
            .iter()
            .filter_map(|r| r.rollout.as_ref().map(|o| (*r, o)))
            .collect();
        let per_batch = |value: &dyn Fn(&Run) -> f64| {
            rollouts
                .iter()
                .filter(|(_, o)| !o.batches.is_empty())
                .map(|(r, o)| value(r) / o.batches.len() as f64)
                .collect::<Vec<_>>()
        };
        if case.replicas == replicas {
            points.extend(
                rollouts
                    .iter()
                    .map(|(r, o)| (o.batches.len() as f64, r.wall_ms)),
            );
        }
        table.row(vec![
            case.replicas.to_string(),
            case.max_surge.to_string(),
            range(
                rollouts
                    .iter()
                    .map(|(_, o)| o.batches.len() as f64)
                    .collect(),
            ),
            ok_runs(&rs),
            median(rs.iter().map(|r| r.wall_ms).collect()),
            min_max(rs.iter().map(|r| r.wall_ms).collect()),
            median(
                rollouts
                    .iter()
                    .filter(|(_, o)| !o.batches.is_empty())
                    .map(|(r, o)| r.wall_ms / o.batches.len() as f64)
                    .collect(),
            ),
            median(per_batch(&|r| r.phases.start)),
            median(per_batch(&|r| r.phases.health)),
            median(per_batch(&|r| r.phases.reload)),
            median(per_batch(&|r| r.phases.drain)),
            median(per_batch(&|r| r.phases.stop)),
            rs.iter().map(|r| r.failed).sum::<u64>().to_string(),
        ]);
    }
    table.print();
    if let Some((a, b, r2)) = fit(&points) {
        println!(
            "least squares over the {} runs with {replicas} replicas: wall ≈ {a:.0} ms + \
             {b:.0} ms × batches (r² = {r2:.3})\n",
            points.len()
        );
    }
}

/// `y = a + b·x` by least squares, and r²; `None` with fewer than two distinct `x`.
fn fit(points: &[(f64, f64)]) -> Option<(f64, f64, f64)> {
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let syy: f64 = points.iter().map(|p| (p.1 - mean_y).powi(2)).sum();
    if points.len() < 2 || sxx == 0.0 {
        return None;
    }
    let b = sxy / sxx;
    let r2 = if syy == 0.0 {
        1.0
    } else {
        sxy * sxy / (sxx * syy)
    };
    Some((mean_y - b * mean_x, b, r2))
}

/// The `in-place-1` table: the allowed gap, as the engine measured it and as the clients
/// saw it, then the refusal without `allow_downtime`.
fn print_one_replica(cases: &[&Case], runs: &[Run], refused: Option<&Refusal>) {
    println!(
        "in-place with 1 replica and allow_downtime = true: the gap (failed requests are the \
         measurement; ms, median and min–max per run)\n"
    );
    let mut table = Table::new(&[
        "strategy",
        "runs",
        "failed",
        "failed/run",
        "engine gap_ms",
        "engine gap min–max",
        "clients: first→last failure",
        "failure span min–max",
        "clients: no success",
        "no success min–max",
        "first failure after call",
        "p99 during ms",
        "wall ms",
        "wall min–max",
    ]);
    let mut notes = Vec::new();
    for case in cases {
        let rs = runs_of(case, runs);
        let gap: Vec<f64> = rs
            .iter()
            .filter_map(|r| r.rollout.as_ref()?.gap_ms.map(|g| g as f64))
            .collect();
        let client = |value: &dyn Fn(&ClientGap) -> Option<f64>| {
            rs.iter()
                .filter_map(|r| value(&r.client_gap))
                .collect::<Vec<_>>()
        };
        let wall: Vec<f64> = rs.iter().map(|r| r.wall_ms).collect();
        table.row(vec![
            case.label(),
            ok_runs(&rs),
            rs.iter().map(|r| r.failed).sum::<u64>().to_string(),
            median(rs.iter().map(|r| r.failed as f64).collect()),
            median(gap.clone()),
            min_max(gap),
            median(client(&|c| c.failing_ms)),
            min_max(client(&|c| c.failing_ms)),
            median(client(&|c| c.no_success_ms)),
            min_max(client(&|c| c.no_success_ms)),
            median(client(&|c| c.first_failed_ms)),
            median(rs.iter().filter_map(|r| r.p99_during_ms).collect()),
            median(wall.clone()),
            min_max(wall),
        ]);
        let polled = rs
            .iter()
            .filter(|r| r.client_gap.failing_ms.is_some() && !r.client_gap.failing_exact)
            .count();
        if polled > 0 {
            notes.push(format!(
                "{}: first→last failure in {polled} of {} runs ends when a {} ms poll saw the \
                 failed count last rise (the load keeps only the first {MAX_FAILURES_KEPT} \
                 failures)",
                case.label(),
                rs.len(),
                FAILURE_POLL.as_millis()
            ));
        }
    }
    table.print();
    for note in notes {
        println!("{note}");
    }
    match refused {
        Some(r) => {
            println!(
                "without allow_downtime (1 replica, blue-green config, in-place deploy asked \
                 for, once): {}",
                r.summary()
            );
            if let Some(e) = &r.error {
                println!("  error (code {}): {e}", r.code.unwrap_or(0));
            }
            for example in &r.failure_examples {
                println!("  failed: {example}");
            }
            println!();
        }
        None => println!("without allow_downtime: not run\n"),
    }
}

/// Failed deploys, failed requests and sampling errors, run by run.
fn print_problems(cases: &[Case], runs: &[Run]) {
    let mut any = false;
    for case in cases {
        for (n, run) in runs_of(case, runs).iter().enumerate() {
            let mut lines = Vec::new();
            if let Some(e) = &run.error {
                lines.push(format!("deploy failed: {e}"));
            }
            if run.failed > 0 {
                lines.push(format!(
                    "{} failed requests{}; first: {}",
                    run.failed,
                    if case.one_replica {
                        " (expected: the allowed gap)"
                    } else {
                        ""
                    },
                    run.failure_examples.join(" | ")
                ));
            }
            if run.sample_errors > 0 {
                lines.push(format!(
                    "{} of {} container counts failed: {}",
                    run.sample_errors,
                    run.samples + run.sample_errors,
                    run.sample_error.as_deref().unwrap_or("?")
                ));
            }
            for line in lines {
                any = true;
                println!("- {} run {}: {line}", case.label(), n + 1);
            }
        }
    }
    if any {
        println!();
    }
}
