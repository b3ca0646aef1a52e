//! `cargo bench --bench canary`: canary rollouts under load, against the issue's targets.
//! BENCHMARKS.md ("Canary") defines every column.
//!
//! Three series run one after the other, each in its own [`Sandbox`] (managed nginx, two
//! replicas of the demo-app answering after 20 ms, Docker unless it is unreachable). Each
//! canary runs under its own [`Load`] of 64 keep-alive connections:
//! - `embedded`: [`BAD_RUNS`] bad canaries (30 % of their requests answer 500), judged from
//!   nginx's access log. Each run first deploys a good stable version.
//! - `prometheus`: the same, judged by a real Prometheus ([`TestPrometheus`], 1 s scrapes)
//!   that scrapes `switchyard serve`.
//! - `stepped`: [`GOOD_RUNS`] good canaries through five steps, each promoted.
//!
//! A [`Timeline`] observer timestamps the engine's events, a [`WorkerWatch`] samples the
//! nginx master's children every 20 ms, and a [`TrafficWatch`] on the access log counts 5xx
//! per track. Each canary becomes a [`RollbackRow`] or a [`SteppedRow`]; [`print_table`]
//! shows medians and spreads, and all rows go to `target/bench-canary.json`. The tailer's
//! throughput has its own bench, `cargo bench --bench tailer`.

mod common;
use common::*;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use switchyard_app::live::Live;
use switchyard_app::load::{FailureKind, Load, LoadConfig, LoadReport};
use switchyard_app::sandbox::{Sandbox, SandboxOptions, SERVICE};
use switchyard_app::traffic::{self, TrafficWatch};
use switchyard_app::{serve, settings, AppError};
use switchyard_engine::config::RuntimeChoice;
use switchyard_engine::deploy::DeployReport;
use switchyard_engine::judge::{Track, Verdict};
use switchyard_engine::{Event, Observer, Quiet, Version};
use switchyard_nginx::procs;
use switchyard_prometheus::testing::TestPrometheus;
use switchyard_prometheus::{PromSource, QueryTemplates};

/// Bad canaries per judge, and good five-step canaries.
const BAD_RUNS: usize = 10;
const GOOD_RUNS: usize = 5;
const CONNECTIONS: usize = 64;
const LATENCY_MS: u32 = 20;
const REPLICAS: u16 = 2;
/// The share of a bad version's `/` requests that answer 500 (demo-app's `FAIL_RATE`).
const FAIL_RATE: f64 = 0.3;
const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);
/// Load before each canary, so every connection is open and warm.
const WARMUP: Duration = Duration::from_secs(1);
/// Load after each canary returns, still counted as its run.
const TAIL: Duration = Duration::from_secs(1);
const WORKER_SAMPLE: Duration = Duration::from_millis(20);
/// Bounds on one canary's load; a canary that outlasts them is reported as an error.
const MAX_REQUESTS: u64 = 1_000_000;
const MAX_LOAD: Duration = Duration::from_secs(60);

/// The issue's targets for first step live → weight 0.
const EMBEDDED_TARGET: Duration = Duration::from_secs(5);
const PROMETHEUS_TARGET: Duration = Duration::from_secs(3);

/// Bad canaries, embedded judge: the first check fails at the first step.
const EMBEDDED_CANARY: &str = r#"steps = [5, 25, 50, 100]
hold = "3s"
interval = "1s"
window = "3s"
min_requests = 30
failure_limit = 1
inconclusive_limit = 10"#;

/// Bad canaries, Prometheus judge: the window holds four scrape intervals.
const PROMETHEUS_CANARY: &str = r#"steps = [5, 25, 50, 100]
hold = "4s"
interval = "1s"
window = "4s"
min_requests = 30
failure_limit = 1
inconclusive_limit = 10"#;

/// Good canaries: five steps with short holds, two passing checks each.
const STEPPED_CANARY: &str = r#"steps = [5, 25, 50, 75, 100]
hold = "2s"
interval = "1s"
window = "2s"
min_requests = 30
failure_limit = 1
inconclusive_limit = 10"#;

fn main() -> anyhow::Result<()> {
    let binary = demo_app()?;
    block_on(run(binary))
}

/// The versions one series deploys: a good stable and a bad canary per run, or a chain of
/// good versions.
fn versions(prefix: &str, kind: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}-{kind}-{i}")).collect()
}

async fn run(binary: PathBuf) -> anyhow::Result<()> {
    let runtime = pick_runtime().await;
    let (e_good, e_bad) = (
        versions("e", "good", BAD_RUNS),
        versions("e", "bad", BAD_RUNS),
    );
    let (p_good, p_bad) = (
        versions("p", "good", BAD_RUNS),
        versions("p", "bad", BAD_RUNS),
    );
    let stepped = versions("s", "good", GOOD_RUNS + 1);
    let failing = [e_bad.clone(), p_bad.clone()].concat().join(",");
    let options = |canary: &str| SandboxOptions {
        canary: canary.to_owned(),
        ..SandboxOptions::new(runtime, binary.clone())
            .replicas(REPLICAS)
            .env("LATENCY_MS", &LATENCY_MS.to_string())
            .env("FAILING_VERSIONS", &failing)
            .env("FAIL_RATE", &FAIL_RATE.to_string())
    };
    let all: Vec<String> = [&e_good, &e_bad, &p_good, &p_bad, &stepped]
        .into_iter()
        .flatten()
        .cloned()
        .collect();

    let series = async {
        let sandbox = start_sandbox(&options(EMBEDDED_CANARY), &all).await?;
        let result = rollback_series(&sandbox, Judge::Embedded, &e_good, &e_bad).await;
        let embedded = finish(sandbox, result).await?;
        let sandbox = start_sandbox(&options(PROMETHEUS_CANARY), &all).await?;
        let result = prometheus_series(&sandbox, &p_good, &p_bad).await;
        let prometheus = finish(sandbox, result).await?;
        let sandbox = start_sandbox(&options(STEPPED_CANARY), &all).await?;
        let result = stepped_series(&sandbox, &stepped).await;
        let stepped = finish(sandbox, result).await?;
        anyhow::Ok((embedded, prometheus, stepped))
    }
    .await;
    if runtime == RuntimeChoice::Docker {
        remove_images(&all).await;
    }
    let (embedded, prometheus, stepped) = series?;

    let machine = Machine::read(runtime).await;
    println!("\n{}", machine.line());
    println!(
        "{CONNECTIONS} keep-alive connections, backend latency {LATENCY_MS} ms, {REPLICAS} \
         replicas, bad versions fail {:.0} % of requests\n",
        FAIL_RATE * 100.0
    );
    print_rollbacks("embedded judge", &embedded, EMBEDDED_TARGET);
    print_rollbacks("prometheus judge", &prometheus, PROMETHEUS_TARGET);
    print_stepped(&stepped);
    let path = json_path("bench-canary.json");
    let json = serde_json::json!({
        "machine": machine,
        "connections": CONNECTIONS,
        "latency_ms": LATENCY_MS,
        "replicas": REPLICAS,
        "fail_rate": FAIL_RATE,
        "scrape_interval_ms": SCRAPE_INTERVAL.as_millis() as u64,
        "config": {
            "embedded": EMBEDDED_CANARY,
            "prometheus": PROMETHEUS_CANARY,
            "stepped": STEPPED_CANARY,
        },
        "embedded": embedded,
        "prometheus": prometheus,
        "stepped": stepped,
    });
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("raw rows: {}", path.display());
    Ok(())
}

/// Docker when the daemon answers; the process runtime otherwise, said loudly.
async fn pick_runtime() -> RuntimeChoice {
    let docker = tokio::process::Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .await;
    match docker {
        Ok(out) if out.status.success() => RuntimeChoice::Docker,
        other => {
            let why = match other {
                Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                Err(e) => e.to_string(),
            };
            eprintln!(
                "NOTE: Docker is unreachable ({why}); measuring with the process runtime instead"
            );
            RuntimeChoice::Process
        }
    }
}

/// Starts a sandbox and builds every image (each is built once per process).
async fn start_sandbox(options: &SandboxOptions, images: &[String]) -> anyhow::Result<Sandbox> {
    let sandbox = Sandbox::start(options)
        .await
        .context("starting a sandbox")?;
    for version in images {
        if let Err(e) = sandbox.ensure_image(version).await {
            return finish(sandbox, Err(e.into())).await;
        }
    }
    Ok(sandbox)
}

/// Where the judge's measurements come from.
#[derive(Clone, Copy)]
enum Judge<'a> {
    /// The sandbox's config: nginx's access log, tailed in-process.
    Embedded,
    Prometheus(&'a PromSource),
}

async fn deploy_canary(
    sandbox: &Sandbox,
    judge: Judge<'_>,
    version: &str,
    observer: &dyn Observer,
) -> Result<DeployReport, AppError> {
    match judge {
        Judge::Embedded => sandbox.deploy_canary(version, observer).await,
        Judge::Prometheus(source) => {
            sandbox.ensure_image(version).await?;
            let version = Version::parse(version).map_err(AppError::input)?;
            let deployer = sandbox.live().deployer(observer);
            Ok(deployer.canary(sandbox.spec(), &version, source).await?)
        }
    }
}

impl Timeline {
    /// The first event `pick` accepts, with its instant.
    fn first<T>(&self, pick: impl Fn(&Event) -> Option<T>) -> Option<(Instant, T)> {
        let events = self.0.lock().expect("timeline lock");
        events.iter().find_map(|(at, e)| pick(e).map(|v| (*at, v)))
    }

    /// Every value `pick` accepts, in order.
    fn all<T>(&self, pick: impl Fn(&Event) -> Option<T>) -> Vec<T> {
        let events = self.0.lock().expect("timeline lock");
        events.iter().filter_map(|(_, e)| pick(e)).collect()
    }
}

/// Samples how many children the nginx master has (its workers, old and new) on a thread
/// of its own, and keeps the maximum.
struct WorkerWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<usize>,
}

impl WorkerWatch {
    fn start(master: u32) -> WorkerWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut max = 0;
            while !flag.load(Ordering::SeqCst) {
                max = max.max(procs::workers(master).len());
                std::thread::sleep(WORKER_SAMPLE);
            }
            max
        });
        WorkerWatch { stop, thread }
    }

    fn stop(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .join()
            .expect("the worker sampler does not panic")
    }
}

/// One canary deploy and everything measured around it.
struct Measured {
    result: Result<DeployReport, AppError>,
    timeline: Timeline,
    called: Instant,
    returned: Instant,
    traffic: LoadReport,
    /// Upstream attempts nginx logged on the canary track, and 5xx per side.
    canary_attempts: u64,
    canary_5xx: u64,
    stable_5xx: u64,
    /// The master's children before the canary (its `worker_processes`), and at most during.
    resting_workers: usize,
    max_workers: usize,
}

/// Deploys `version` as a canary under a fresh load: warm-up, the canary, a tail.
async fn under_load(
    sandbox: &Sandbox,
    judge: Judge<'_>,
    version: &str,
) -> anyhow::Result<Measured> {
    let log = &sandbox.live().router.layout.access_log;
    let watch = TrafficWatch::start(log, &[SERVICE])
        .with_context(|| format!("tailing {}", log.display()))?;
    let load = Load::start(LoadConfig {
        connections: CONNECTIONS,
        max_requests: MAX_REQUESTS,
        max_duration: MAX_LOAD,
        ..LoadConfig::new(sandbox.url())
    });
    tokio::time::sleep(WARMUP).await;
    let master = sandbox
        .nginx_master()
        .context("the sandbox runs no nginx")?;
    let resting_workers = procs::workers(master).len();
    let workers = WorkerWatch::start(master);
    let timeline = Timeline::default();
    let called = Instant::now();
    let result = deploy_canary(sandbox, judge, version, &timeline).await;
    let returned = Instant::now();
    tokio::time::sleep(TAIL).await;
    let max_workers = workers.stop();
    if load.is_finished() {
        bail!(
            "the load stopped before the canary {version} ended (MAX_REQUESTS or MAX_LOAD spent)"
        );
    }
    let traffic = load.stop().await;
    // Let the tailer read the last lines.
    tokio::time::sleep(traffic::POLL * 3).await;
    let (mut canary_attempts, mut canary_5xx, mut stable_5xx) = (0, 0, 0);
    let counters = watch.counters();
    for (service, track, code, n) in counters.lock().expect("traffic counters").totals() {
        if service != SERVICE {
            continue;
        }
        let errors = if code >= 500 { n } else { 0 };
        if track == Track::Canary.as_str() {
            canary_attempts += n;
            canary_5xx += errors;
        } else {
            stable_5xx += errors;
        }
    }
    Ok(Measured {
        result,
        timeline,
        called,
        returned,
        traffic,
        canary_attempts,
        canary_5xx,
        stable_5xx,
        resting_workers,
        max_workers,
    })
}

/// One bad canary. Times are milliseconds.
#[derive(Debug, Serialize)]
struct RollbackRow {
    stable: String,
    canary: String,
    weight_percent: f64,
    /// `Event::Shifted` (first step) → `Event::RolledBack`.
    first_step_to_weight_zero_ms: f64,
    /// `Event::Shifted` → the rollback's `Event::Reloaded`.
    first_step_to_reloaded_ms: f64,
    first_step_to_failed_check_ms: f64,
    /// The rollback's reload confirmed: nginx's new generation sends nothing to the canary.
    failed_check_to_reloaded_ms: f64,
    /// `Event::RolledBack` comes once the workers of the canary's generation have exited.
    reloaded_to_rolled_back_ms: f64,
    /// Checks up to and including the failing one; the earlier ones held (no data).
    checks: usize,
    /// Each check's verdict and reason.
    verdicts: Vec<String>,
    /// Send time of the canary's first successful response minus the first step's
    /// confirmation: negative when nginx's new workers answered before the poll saw them.
    first_canary_response_ms: Option<f64>,
    /// Send time of its last successful response minus the confirmation of weight 0:
    /// positive would mean old workers still sent it requests afterwards.
    last_canary_response_ms: Option<f64>,
    wall_ms: f64,
    requests: u64,
    failed: u64,
    /// The canary's own 500s, as the clients saw them (see `counted_by`).
    canary_failed: u64,
    /// weight × FAIL_RATE × requests sent from first step live to the weight-0 reload.
    expected_canary_failed: f64,
    not_canary_failed: u64,
    /// "load" when every failure was kept in detail, else "nginx log".
    counted_by: &'static str,
    /// From nginx's access log: the canary track's attempts and 5xx, the stable side's 5xx.
    canary_attempts: u64,
    canary_5xx: u64,
    stable_5xx: u64,
    retried: u64,
    resting_workers: usize,
    max_workers: usize,
    message: String,
    failure_examples: Vec<String>,
}

async fn rollback_series(
    sandbox: &Sandbox,
    judge: Judge<'_>,
    good: &[String],
    bad: &[String],
) -> anyhow::Result<Vec<RollbackRow>> {
    let mut rows = Vec::new();
    let runs = bad.len();
    for (n, (good, bad)) in good.iter().zip(bad).enumerate() {
        sandbox
            .deploy(good, &Quiet)
            .await
            .with_context(|| format!("deploying the stable version {good}"))?;
        let row = rollback_row(good, bad, under_load(sandbox, judge, bad).await?)?;
        eprintln!(
            "{:>2}/{} {good} + canary {bad}: weight 0 after {:>5.0} ms ({} checks), {} failed \
             (canary {}, other {}), {} retried, max {} workers",
            n + 1,
            runs,
            row.first_step_to_weight_zero_ms,
            row.checks,
            row.failed,
            row.canary_failed,
            row.not_canary_failed,
            row.retried,
            row.max_workers,
        );
        rows.push(row);
    }
    Ok(rows)
}

fn rollback_row(good: &str, bad: &str, m: Measured) -> anyhow::Result<RollbackRow> {
    let message = match &m.result {
        Ok(_) => bail!("the bad canary {bad} was promoted"),
        Err(e) if e.code == 1 => e.message.clone(),
        Err(e) => bail!("the bad canary {bad} failed for another reason: {e}"),
    };
    let t = &m.timeline;
    let missing = |what: &str| anyhow!("the canary {bad} reported no {what} event");
    let (shifted, weight_bp) = t
        .first(|e| match e {
            Event::Shifted { weight_bp, .. } => Some(*weight_bp),
            _ => None,
        })
        .ok_or_else(|| missing("Shifted"))?;
    let (failed_check, ()) = t
        .first(|e| {
            matches!(
                e,
                Event::Analysis {
                    verdict: Verdict::Fail(_),
                    ..
                }
            )
            .then_some(())
        })
        .ok_or_else(|| missing("failing Analysis"))?;
    let (reloaded, ()) = t
        .first(|e| matches!(e, Event::Reloaded { .. }).then_some(()))
        .ok_or_else(|| missing("Reloaded (the rollback's reload)"))?;
    let (rolled_back, ()) = t
        .first(|e| matches!(e, Event::RolledBack { .. }).then_some(()))
        .ok_or_else(|| missing("RolledBack"))?;
    let verdicts = t.all(|e| match e {
        Event::Analysis { verdict, .. } => Some(format!("{verdict:?}")),
        _ => None,
    });
    let traffic = &m.traffic;
    let seen = traffic.by_version.get(bad);
    let own = |k: &FailureKind| matches!(k, FailureKind::Status { code: 500, version: Some(v) } if v == bad);
    let kept_own = traffic.failures.iter().filter(|f| own(&f.kind)).count() as u64;
    let kept_other = traffic.failures.len() as u64 - kept_own;
    // The load keeps the first 50 failures in detail; past that, nginx's count of the
    // canary track's 5xx stands in for the clients' view.
    let complete = traffic.failures.len() as u64 == traffic.failed;
    let (canary_failed, not_canary_failed, counted_by) = if complete {
        (kept_own, kept_other, "load")
    } else {
        let canary = m.canary_5xx.min(traffic.failed);
        (
            canary,
            (traffic.failed - canary).max(kept_other),
            "nginx log",
        )
    };
    let detection = rolled_back - shifted;
    let weight = f64::from(weight_bp) / 10_000.0;
    // Successes are sampled with their send times; the failures are nearly all the
    // canary's, sent while it was live.
    let ok_while_live = traffic
        .samples
        .iter()
        .filter(|s| (shifted..reloaded).contains(&traffic.sent_at(s)))
        .count() as u64;
    Ok(RollbackRow {
        stable: good.to_owned(),
        canary: bad.to_owned(),
        weight_percent: weight * 100.0,
        first_step_to_weight_zero_ms: ms(detection),
        first_step_to_reloaded_ms: ms(reloaded - shifted),
        first_step_to_failed_check_ms: ms(failed_check - shifted),
        failed_check_to_reloaded_ms: ms(reloaded - failed_check),
        reloaded_to_rolled_back_ms: ms(rolled_back - reloaded),
        checks: verdicts.len(),
        verdicts,
        first_canary_response_ms: seen.map(|v| signed_ms(v.first, shifted)),
        last_canary_response_ms: seen.map(|v| signed_ms(v.last, reloaded)),
        wall_ms: ms(m.returned - m.called),
        requests: traffic.total,
        failed: traffic.failed,
        canary_failed,
        expected_canary_failed: weight * FAIL_RATE * (ok_while_live + traffic.failed) as f64,
        not_canary_failed,
        counted_by,
        canary_attempts: m.canary_attempts,
        canary_5xx: m.canary_5xx,
        stable_5xx: m.stable_5xx,
        retried: traffic.retried,
        resting_workers: m.resting_workers,
        max_workers: m.max_workers,
        message,
        failure_examples: examples(traffic, |k| !own(k)),
    })
}

/// Up to five failures `pick` accepts, as the load generator describes them.
fn examples(traffic: &LoadReport, pick: impl Fn(&FailureKind) -> bool) -> Vec<String> {
    traffic
        .failures
        .iter()
        .filter(|f| pick(&f.kind))
        .take(5)
        .map(|f| f.to_string())
        .collect()
}

/// The same bad canaries, judged by a Prometheus that scrapes `switchyard serve`. Serve
/// reads the sandbox's store and access log through a [`Live`] of its own, as the daemon
/// would beside a CLI deploy. Prometheus's start and first scrape are not counted.
async fn prometheus_series(
    sandbox: &Sandbox,
    good: &[String],
    bad: &[String],
) -> anyhow::Result<Vec<RollbackRow>> {
    let live = Live::open(settings::load(&sandbox.config_path)?).await?;
    let server = serve::start(live, SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let result = async {
        let since = Instant::now();
        let prometheus = TestPrometheus::start(server.addr(), SCRAPE_INTERVAL)
            .await
            .map_err(anyhow::Error::msg)?;
        prometheus
            .wait_scraped(Duration::from_secs(30))
            .await
            .map_err(anyhow::Error::msg)?;
        eprintln!(
            "prometheus on {} scrapes serve on {} every {SCRAPE_INTERVAL:?}; first scrape \
             {:.1} s after its start (not counted)",
            prometheus.url(),
            server.addr(),
            since.elapsed().as_secs_f64()
        );
        let source = PromSource {
            client: prometheus.client(Duration::from_secs(5)),
            templates: QueryTemplates::default(),
        };
        rollback_series(sandbox, Judge::Prometheus(&source), good, bad).await
    }
    .await;
    let stopped = server.shutdown().await;
    let rows = result?;
    stopped.context("stopping switchyard serve")?;
    Ok(rows)
}

/// One good canary through every step. Times are milliseconds.
#[derive(Debug, Serialize)]
struct SteppedRow {
    from: String,
    to: String,
    wall_ms: f64,
    requests: u64,
    failed: u64,
    retried: u64,
    /// `Event::Shifted` (one per step below 100 %) and `Event::Reloaded` (the flip).
    shifts: usize,
    flips: usize,
    reloads: usize,
    /// nginx generations of those reloads: consecutive means no other reload happened.
    generations: Vec<u64>,
    consecutive: bool,
    resting_workers: usize,
    max_workers: usize,
    p99_steady_ms: Option<f64>,
    p99_during_ms: Option<f64>,
    failure_examples: Vec<String>,
}

async fn stepped_series(sandbox: &Sandbox, versions: &[String]) -> anyhow::Result<Vec<SteppedRow>> {
    sandbox
        .deploy(&versions[0], &Quiet)
        .await
        .with_context(|| format!("deploying the stable version {}", versions[0]))?;
    let mut rows = Vec::new();
    for (n, pair) in versions.windows(2).enumerate() {
        let (from, to) = (&pair[0], &pair[1]);
        let m = under_load(sandbox, Judge::Embedded, to).await?;
        if let Err(e) = &m.result {
            bail!("the good canary {to} was not promoted: {e}");
        }
        let generations = m.timeline.all(|e| match e {
            Event::Shifted { generation, .. } | Event::Reloaded { generation, .. } => {
                Some(*generation)
            }
            _ => None,
        });
        let shifts = m
            .timeline
            .all(|e| matches!(e, Event::Shifted { .. }).then_some(()))
            .len();
        let traffic = &m.traffic;
        let p99 = |from: Instant, to: Instant| traffic.percentile(99.0, Some((from, to))).map(ms);
        let row = SteppedRow {
            from: from.clone(),
            to: to.clone(),
            wall_ms: ms(m.returned - m.called),
            requests: traffic.total,
            failed: traffic.failed,
            retried: traffic.retried,
            shifts,
            flips: generations.len() - shifts,
            reloads: generations.len(),
            consecutive: generations.windows(2).all(|w| w[1] == w[0] + 1),
            generations,
            resting_workers: m.resting_workers,
            max_workers: m.max_workers,
            p99_steady_ms: p99(traffic.started, m.called),
            p99_during_ms: p99(m.called, m.returned),
            failure_examples: examples(traffic, |_| true),
        };
        eprintln!(
            "{:>2}/{} {from} -> {to}: promoted in {:>5.0} ms, {} reloads (generations {:?}), \
             {} failed, {} retried, max {} workers",
            n + 1,
            versions.len() - 1,
            row.wall_ms,
            row.reloads,
            row.generations,
            row.failed,
            row.retried,
            row.max_workers,
        );
        rows.push(row);
    }
    Ok(rows)
}

/// `later - earlier` in milliseconds, negative when `later` came first.
fn signed_ms(later: Instant, earlier: Instant) -> f64 {
    match later.checked_duration_since(earlier) {
        Some(d) => ms(d),
        None => -ms(earlier - later),
    }
}

/// The shared Markdown table, with this bench's metric column width.
fn print_table(metrics: &[(&str, Vec<f64>)]) {
    print_metrics(50, metrics);
}

fn column<R>(rows: &[R], value: impl Fn(&R) -> f64) -> Vec<f64> {
    rows.iter().map(value).collect()
}

fn print_rollbacks(name: &str, rows: &[RollbackRow], target: Duration) {
    let sum = |value: fn(&RollbackRow) -> u64| rows.iter().map(value).sum::<u64>();
    let worst = rows
        .iter()
        .map(|r| r.first_step_to_weight_zero_ms)
        .fold(0.0, f64::max);
    let met = rows
        .iter()
        .filter(|r| r.first_step_to_weight_zero_ms < ms(target))
        .count();
    println!(
        "{name}: {} bad canaries, {} requests, {} failed ({} the canary's own, {} not), \
         {} retried; first step live → weight 0 under {} s in {met} of {} runs (max {:.0} ms)\n",
        rows.len(),
        sum(|r| r.requests),
        sum(|r| r.failed),
        sum(|r| r.canary_failed),
        sum(|r| r.not_canary_failed),
        sum(|r| r.retried),
        target.as_secs_f64(),
        rows.len(),
        worst,
    );
    print_table(&[
        (
            "**first step live → RolledBack**, ms",
            column(rows, |r| r.first_step_to_weight_zero_ms),
        ),
        (
            "· first step live → weight-0 reload, ms",
            column(rows, |r| r.first_step_to_reloaded_ms),
        ),
        (
            "  · first step live → failing check, ms",
            column(rows, |r| r.first_step_to_failed_check_ms),
        ),
        (
            "  · failing check → weight-0 reload, ms",
            column(rows, |r| r.failed_check_to_reloaded_ms),
        ),
        (
            "· weight-0 reload → old workers exited, ms",
            column(rows, |r| r.reloaded_to_rolled_back_ms),
        ),
        (
            "checks until the failing one",
            column(rows, |r| r.checks as f64),
        ),
        (
            "canary weight when it failed, %",
            column(rows, |r| r.weight_percent),
        ),
        (
            "canary's own failed requests",
            column(rows, |r| r.canary_failed as f64),
        ),
        (
            "· weight × rate × requests while live",
            column(rows, |r| (r.expected_canary_failed * 10.0).round() / 10.0),
        ),
        (
            "first canary response − first step live, ms",
            rows.iter()
                .filter_map(|r| r.first_canary_response_ms)
                .collect(),
        ),
        (
            "last canary response − weight-0 reload, ms",
            rows.iter()
                .filter_map(|r| r.last_canary_response_ms)
                .collect(),
        ),
        (
            "failed requests not from the canary",
            column(rows, |r| r.not_canary_failed as f64),
        ),
        (
            "stable-track 5xx in nginx's log",
            column(rows, |r| r.stable_5xx as f64),
        ),
        (
            "retried (idle keep-alive closed)",
            column(rows, |r| r.retried as f64),
        ),
        ("requests per run", column(rows, |r| r.requests as f64)),
        ("canary deploy wall time, ms", column(rows, |r| r.wall_ms)),
        (
            "nginx workers alive at most",
            column(rows, |r| r.max_workers as f64),
        ),
    ]);
}

fn print_stepped(rows: &[SteppedRow]) {
    let failed: u64 = rows.iter().map(|r| r.failed).sum();
    let requests: u64 = rows.iter().map(|r| r.requests).sum();
    let retried: u64 = rows.iter().map(|r| r.retried).sum();
    let consecutive = rows.iter().filter(|r| r.consecutive).count();
    println!(
        "stepped: {} good canaries through [5, 25, 50, 75, 100], {requests} requests, \
         {failed} failed, {retried} retried; nginx generations consecutive in {consecutive} \
         of {}\n",
        rows.len(),
        rows.len()
    );
    print_table(&[
        ("failed requests", column(rows, |r| r.failed as f64)),
        (
            "retried (idle keep-alive closed)",
            column(rows, |r| r.retried as f64),
        ),
        ("requests per canary", column(rows, |r| r.requests as f64)),
        ("reloads per canary", column(rows, |r| r.reloads as f64)),
        ("· steps (Shifted)", column(rows, |r| r.shifts as f64)),
        (
            "· flip to 100 % (Reloaded)",
            column(rows, |r| r.flips as f64),
        ),
        (
            "nginx workers at rest (worker_processes)",
            column(rows, |r| r.resting_workers as f64),
        ),
        (
            "nginx workers alive at most",
            column(rows, |r| r.max_workers as f64),
        ),
        ("canary wall time, ms", column(rows, |r| r.wall_ms)),
        (
            "p99 latency, warm-up, ms",
            rows.iter().filter_map(|r| r.p99_steady_ms).collect(),
        ),
        (
            "p99 latency, during the canary, ms",
            rows.iter().filter_map(|r| r.p99_during_ms).collect(),
        ),
    ]);
}

/// What the numbers were measured on: the shared [`common::Machine`], the runtime, and the
/// Prometheus that scraped.
#[derive(Debug, Serialize)]
struct Machine {
    #[serde(flatten)]
    host: common::Machine,
    runtime: &'static str,
    prometheus: String,
}

impl Machine {
    async fn read(runtime: RuntimeChoice) -> Machine {
        let prometheus = output(switchyard_prometheus::testing::PROMETHEUS, &["--version"]).await;
        Machine {
            host: common::Machine::read().await,
            runtime: match runtime {
                RuntimeChoice::Docker => "docker",
                RuntimeChoice::Process => "process",
            },
            prometheus: prometheus.lines().next().unwrap_or_default().to_owned(),
        }
    }

    fn line(&self) -> String {
        format!(
            "machine: {} CPUs ({}), {:.1} GiB RAM, Linux {}, {} runtime, Docker {}, {}, {}",
            self.host.cpus,
            self.host.cpu_model,
            self.host.memory_gib,
            self.host.kernel,
            self.runtime,
            self.host.docker,
            self.host.nginx,
            self.prometheus
        )
    }
}
