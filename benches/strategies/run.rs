//! One run of one row: a fresh sandbox brought to [`V1`], the load, the deploy of [`V2`]
//! while [`watch_running`] counts the running containers, and the [`Run`] that sums it up,
//! with its wall time split into [`PhaseTimes`].

use std::cell::Cell;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use serde::Serialize;
use switchyard_app::live::AnyRuntime;
use switchyard_app::load::{Load, LoadConfig, LoadReport};
use switchyard_app::sandbox::Sandbox;
use switchyard_engine::deploy::rolling::RolloutReport;
use switchyard_engine::{Event, Instance, InstanceStatus, Name, Quiet, Runtime, RuntimeError};

use crate::case::{Case, Flow};
use crate::common::{finish, join_all, ms, naive_flip, Phases, Timeline};
use crate::gap::{watch_failures, ClientGap};
use crate::{CONNECTIONS, MAX_LOAD, MAX_REQUESTS, SAMPLE, SETTLE, TAIL, V1, V2, WARMUP};

/// One deploy under load. Times are milliseconds.
#[derive(Debug, Serialize)]
pub struct Run {
    pub case: String,
    pub strategy: &'static str,
    pub replicas: u16,
    pub max_surge: u16,
    pub max_unavailable: u16,
    /// The deploy's error, when it failed (the run is still measured).
    pub error: Option<String>,
    pub wall_ms: f64,
    /// Requests completed from the deploy call to [`TAIL`] after it returned.
    pub requests: u64,
    pub requests_per_second: f64,
    pub failed: u64,
    pub retried: u64,
    /// Running containers of the service right before the deploy, and the most and fewest
    /// seen while it ran.
    pub resting_running: usize,
    pub peak_running: usize,
    pub fewest_running: usize,
    pub samples: usize,
    pub sample_errors: usize,
    pub sample_error: Option<String>,
    /// `Event::Reloaded` plus `Event::Shifted` (a canary step); 1 for the naive SIGHUP.
    pub reloads: usize,
    pub p99_steady_ms: Option<f64>,
    pub p99_during_ms: Option<f64>,
    /// Where the wall time went.
    pub phases: PhaseTimes,
    /// The engine's own report of a rolling or in-place deploy.
    pub rollout: Option<RolloutReport>,
    /// The outage as the clients saw it.
    pub client_gap: ClientGap,
    pub failure_examples: Vec<String>,
}

/// Runs one case in a fresh sandbox and shuts the sandbox down whatever happened.
pub async fn run_case(binary: &Path, case: &Case) -> anyhow::Result<Run> {
    let sandbox = Sandbox::start(&case.options(binary))
        .await
        .context("starting a sandbox")?;
    let result = measure(&sandbox, case).await;
    finish(sandbox, result).await
}

async fn measure(sandbox: &Sandbox, case: &Case) -> anyhow::Result<Run> {
    bring_to_v1(sandbox).await?;
    let runtime = &sandbox.live().runtime;
    let service = &sandbox.spec().name;
    let mut live_now = runtime.list(service).await?;
    let load = start_load(sandbox);
    tokio::time::sleep(WARMUP + SETTLE).await;
    let resting_running = running(runtime, service).await?;
    if load.is_finished() {
        bail!("the load stopped before the deploy (MAX_REQUESTS or MAX_LOAD spent)");
    }
    let before = load.snapshot();
    let timeline = Timeline::default();
    let deployed = deploy_watched(sandbox, case, &load, &timeline, &mut live_now).await;
    let after = load.snapshot();
    if load.is_finished() {
        bail!("the load stopped before the run ended (MAX_REQUESTS or MAX_LOAD spent)");
    }
    let traffic = load.stop().await;
    Ok(Run::new(
        case,
        resting_running,
        deployed,
        &timeline,
        (&before, &after),
        &traffic,
    ))
}

/// Makes sure both versions' images exist and deploys [`V1`] with no load.
pub async fn bring_to_v1(sandbox: &Sandbox) -> anyhow::Result<()> {
    for version in [V1, V2] {
        sandbox.ensure_image(version).await?;
    }
    sandbox
        .deploy(V1, &Quiet)
        .await
        .with_context(|| format!("bringing the service to {V1}"))?;
    Ok(())
}

/// [`CONNECTIONS`] keep-alive connections against the sandbox's nginx.
pub fn start_load(sandbox: &Sandbox) -> Load {
    Load::start(LoadConfig {
        connections: CONNECTIONS,
        max_requests: MAX_REQUESTS,
        max_duration: MAX_LOAD,
        ..LoadConfig::new(sandbox.url())
    })
}

/// The deploy's rollout report (engine) or phase instants (naive), or its error.
type Outcome = Result<(Option<RolloutReport>, Option<Phases>), String>;

/// What [`deploy_watched`] saw.
struct Deployed {
    outcome: Outcome,
    called: Instant,
    returned: Instant,
    watch: Watch,
    /// `in-place-1` only: when the load's failed count last rose.
    last_failure_seen: Option<Instant>,
}

/// Deploys [`V2`] by the case's flow while [`watch_running`] samples the containers, then
/// waits [`TAIL`]; `in-place-1` also polls the failed count until then.
async fn deploy_watched(
    sandbox: &Sandbox,
    case: &Case,
    load: &Load,
    timeline: &Timeline,
    live_now: &mut Vec<Instance>,
) -> Deployed {
    let runtime = &sandbox.live().runtime;
    let service = &sandbox.spec().name;
    let deploying = Cell::new(true);
    let measuring = Cell::new(true);
    let called = Instant::now();
    let deploy = async {
        let outcome = match case.flow {
            Flow::Engine(kind) => sandbox
                .deploy_with(V2, kind, timeline)
                .await
                .map(|report| (report.rollout, None))
                .map_err(|e| e.to_string()),
            Flow::Naive => naive_flip(sandbox, live_now, V2, 0)
                .await
                .map(|phases| (None, Some(phases)))
                .map_err(|e| format!("{e:#}")),
        };
        let returned = Instant::now();
        deploying.set(false);
        (outcome, returned)
    };
    let deploy_and_tail = async {
        let done = tokio::join!(deploy, watch_running(runtime, service, &deploying));
        tokio::time::sleep(TAIL).await;
        measuring.set(false);
        done
    };
    let failures = async {
        if case.one_replica {
            watch_failures(load, &measuring).await
        } else {
            None
        }
    };
    let (((outcome, returned), watch), last_failure_seen) = tokio::join!(deploy_and_tail, failures);
    Deployed {
        outcome,
        called,
        returned,
        watch,
        last_failure_seen,
    }
}

impl Run {
    /// `before` and `after` are the load's counts at the deploy call and at the end of its
    /// window; `traffic` is the whole load.
    fn new(
        case: &Case,
        resting_running: usize,
        deployed: Deployed,
        timeline: &Timeline,
        (before, after): (&LoadReport, &LoadReport),
        traffic: &LoadReport,
    ) -> Run {
        let (called, returned, watch) = (deployed.called, deployed.returned, deployed.watch);
        let (rollout, naive, error) = match deployed.outcome {
            Ok((rollout, naive)) => (rollout, naive, None),
            Err(e) => (None, None, Some(e)),
        };
        let phases = match naive {
            Some(p) => PhaseTimes::naive(&p),
            None => PhaseTimes::engine(timeline, called, returned),
        };
        let p99 = |from: Instant, to: Instant| traffic.percentile(99.0, Some((from, to))).map(ms);
        let window = (returned + TAIL) - called;
        let requests = after.total - before.total;
        let failed = after.failed - before.failed;
        let client_gap = ClientGap::measure(
            traffic,
            (called, returned + TAIL),
            failed,
            deployed.last_failure_seen,
        );
        Run {
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
            reloads: reloads(case.flow, timeline),
            p99_steady_ms: p99(called - SETTLE, called),
            p99_during_ms: p99(called, returned),
            phases,
            rollout,
            client_gap,
            failure_examples: examples(traffic),
        }
    }
}

/// `Reloaded` and `Shifted` events for the engine; the naive flow's one SIGHUP.
fn reloads(flow: Flow, timeline: &Timeline) -> usize {
    match flow {
        Flow::Naive => 1,
        Flow::Engine(_) => {
            timeline.count(|e| matches!(e, Event::Reloaded { .. } | Event::Shifted { .. }))
        }
    }
}

/// The first five failed requests.
pub fn examples(traffic: &LoadReport) -> Vec<String> {
    traffic
        .failures
        .iter()
        .take(5)
        .map(|f| f.to_string())
        .collect()
}

impl Timeline {
    pub fn count(&self, pick: impl Fn(&Event) -> bool) -> usize {
        let events = self.0.lock().expect("timeline lock");
        events.iter().filter(|(_, e)| pick(e)).count()
    }
}

/// A deploy's wall time split by what it waited for, in milliseconds. For the engine each
/// gap between two events goes to the phase of the later event (see [`PhaseTimes::engine`]).
#[derive(Debug, Default, Serialize)]
pub struct PhaseTimes {
    /// To `Begin`: the lock, finishing no interrupted deployment, the deployment row.
    pub lock: f64,
    /// To each `Started`: create and start one container, plus its journal writes.
    pub start: f64,
    /// To `Waiting` and `Healthy`: health checks.
    pub health: f64,
    /// To `Reloaded`, `Shifted` and `RolledBack`: render, `nginx -t`, swap, SIGHUP, confirm.
    pub reload: f64,
    /// To `Analysis` and `Paused`: a canary step's hold and its checks.
    pub hold: f64,
    /// To `Drained`: the old nginx workers exiting.
    pub drain: f64,
    /// To each `Stopped` and `Removed`: one graceful stop (or removal).
    pub stop: f64,
    /// To `Done` and on to the return: activating the slot, pruning, unlocking.
    pub finish: f64,
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
                // A hook is waited on like a hold: time switchyard spends on something else.
                Event::Analysis { .. }
                | Event::Paused { .. }
                | Event::Hook { .. }
                | Event::Watching { .. }
                | Event::Watched { .. } => &mut t.hold,
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
