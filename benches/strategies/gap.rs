//! What only the `in-place-1` rows need: the outage as the clients saw it ([`ClientGap`],
//! with [`watch_failures`]), the in-place deploy of a 1-replica service without
//! `allow_downtime` that the engine must refuse ([`Refusal`], [`refusal`]), and their table
//! ([`print_one_replica`]).

use std::cell::Cell;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use switchyard_app::live::AnyRuntime;
use switchyard_app::load::{Load, LoadReport, MAX_FAILURES_KEPT};
use switchyard_app::sandbox::{Sandbox, SandboxOptions};
use switchyard_engine::config::{RuntimeChoice, StrategyKind};
use switchyard_engine::{InstanceStatus, Name, Runtime};

use crate::case::Case;
use crate::common::{finish, join_all, ms, Table, Timeline};
use crate::run::{bring_to_v1, examples, start_load, Run};
use crate::tables::{median, min_max, ok_runs, runs_of};
use crate::{FAILURE_POLL, LATENCY_MS, SETTLE, TAIL, V1, V2, WARMUP};

/// An outage as the load's clients saw it, from requests sent between the deploy call and
/// [`TAIL`] after it returned. Milliseconds.
#[derive(Debug, Default, Serialize)]
pub struct ClientGap {
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
    pub fn measure(
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

/// When the load's failed count last rose, read every [`FAILURE_POLL`] while `measuring`
/// holds; `None` when it never rose.
pub async fn watch_failures(load: &Load, measuring: &Cell<bool>) -> Option<Instant> {
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
pub struct Refusal {
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

    pub fn summary(&self) -> String {
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
pub async fn refusal(binary: &Path) -> anyhow::Result<Refusal> {
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
    bring_to_v1(sandbox).await?;
    let runtime = &sandbox.live().runtime;
    let service = &sandbox.spec().name;
    let containers_before = containers(runtime, service).await?;
    let load = start_load(sandbox);
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
    let containers_after = containers(runtime, service).await?;
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

/// The service's containers, each with whether Docker says it is running.
async fn containers(runtime: &AnyRuntime, service: &Name) -> anyhow::Result<Vec<(String, bool)>> {
    let instances = runtime.list(service).await?;
    let statuses = join_all(instances.iter().map(|i| runtime.status(i)).collect()).await;
    let mut out = Vec::new();
    for (instance, status) in instances.iter().zip(statuses) {
        out.push((
            instance.name.clone(),
            matches!(status?, InstanceStatus::Running { .. }),
        ));
    }
    Ok(out)
}

/// The `in-place-1` table: the allowed gap, as the engine measured it and as the clients
/// saw it, then the refusal without `allow_downtime`.
pub fn print_one_replica(cases: &[&Case], runs: &[Run], refused: Option<&Refusal>) {
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
        notes.extend(polled_note(case, &rs));
    }
    table.print();
    for note in notes {
        println!("{note}");
    }
    print_refusal(refused);
}

/// A note for a case whose first→last failure span came from polling in some runs.
fn polled_note(case: &Case, rs: &[&Run]) -> Option<String> {
    let polled = rs
        .iter()
        .filter(|r| r.client_gap.failing_ms.is_some() && !r.client_gap.failing_exact)
        .count();
    (polled > 0).then(|| {
        format!(
            "{}: first→last failure in {polled} of {} runs ends when a {} ms poll saw the \
             failed count last rise (the load keeps only the first {MAX_FAILURES_KEPT} \
             failures)",
            case.label(),
            rs.len(),
            FAILURE_POLL.as_millis()
        )
    })
}

/// The refusal's line under the `in-place-1` table, with its error and failed requests.
fn print_refusal(refused: Option<&Refusal>) {
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
