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

mod common;
use common::*;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use switchyard_app::load::{Load, LoadConfig, LoadReport, Method};
use switchyard_app::sandbox::{Sandbox, SandboxOptions};
use switchyard_engine::config::{RoutingChoice, RuntimeChoice, StrategyKind};
use switchyard_engine::deploy::upstream_set;
use switchyard_engine::{
    CanaryRoute, Event, Instance, Name, Quiet, Router, Runtime, UpstreamSet, Version,
};
use switchyard_nginx::router::STATE_FILE;
use switchyard_nginx::routing::{self, StateFile};
use switchyard_nginx::{procs, stage, Layout, ManagedNginx, NginxRouter, Templates};

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

const SERVICES: usize = 100;
const PEERS: usize = 10;
const ROUTE_CHANGES: usize = 100;
const STRUCTURAL_RELOADS: usize = 7;
const SCALE_DRAIN: Duration = Duration::from_secs(10);
const PART_RUNS: usize = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Flow {
    Naive,
    Reload,
    Dynamic,
}

const FLOWS: [Flow; 3] = [Flow::Naive, Flow::Reload, Flow::Dynamic];

impl Flow {
    fn name(self) -> &'static str {
        match self {
            Flow::Naive => "naive",
            Flow::Reload => "reload",
            Flow::Dynamic => "dynamic",
        }
    }

    /// `[proxy] routing`: the naive order rewrites a reload router's upstream file.
    fn routing(self) -> &'static str {
        match self {
            Flow::Dynamic => "dynamic",
            Flow::Naive | Flow::Reload => "reload",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strategy {
    BlueGreen,
    Canary,
    Rolling,
}

const STRATEGIES: [Strategy; 3] = [Strategy::BlueGreen, Strategy::Canary, Strategy::Rolling];

impl Strategy {
    fn kind(self) -> StrategyKind {
        match self {
            Strategy::BlueGreen => StrategyKind::BlueGreen,
            Strategy::Canary => StrategyKind::Canary,
            Strategy::Rolling => StrategyKind::Rolling,
        }
    }
}

/// Which method wrk sends; the generator sends the other one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pairing {
    WrkGet,
    WrkPost,
}

const PAIRINGS: [Pairing; 2] = [Pairing::WrkGet, Pairing::WrkPost];

impl Pairing {
    fn wrk_method(self) -> &'static str {
        match self {
            Pairing::WrkGet => "GET",
            Pairing::WrkPost => "POST",
        }
    }

    fn own_method(self) -> &'static str {
        match self {
            Pairing::WrkGet => "POST",
            Pairing::WrkPost => "GET",
        }
    }
}

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

// ---------------------------------------------------------------------------------------
// The deploys
// ---------------------------------------------------------------------------------------

/// One flow's sandbox and what it serves now.
struct Lane {
    flow: Flow,
    sandbox: Sandbox,
    /// The serving replicas (the naive flow keeps its own list).
    live_now: Vec<Instance>,
    /// The version number deployed last.
    version: usize,
    /// The wrk script that makes its requests POSTs.
    post_script: PathBuf,
}

impl Lane {
    async fn start(binary: &Path, flow: Flow, post_script: &Path) -> anyhow::Result<Lane> {
        let options = SandboxOptions {
            canary: CANARY.to_owned(),
            ..SandboxOptions::new(RuntimeChoice::Process, binary.to_owned())
                .replicas(REPLICAS)
                .env("LATENCY_MS", &LATENCY_MS.to_string())
                .strategy("rolling", ROLLING)
                .routing(flow.routing())
        };
        let sandbox = Sandbox::start(&options)
            .await
            .with_context(|| format!("starting the {} sandbox", flow.name()))?;
        let first = format!("{}-1", flow.name());
        let live_now = match first_version(&sandbox, &first).await {
            Ok(live_now) => live_now,
            Err(e) => {
                if let Err(c) = sandbox.shutdown().await {
                    eprintln!("shutting the {} sandbox down: {c}", flow.name());
                }
                return Err(e.context(format!("{}: deploying {first}", flow.name())));
            }
        };
        Ok(Lane {
            flow,
            sandbox,
            live_now,
            version: 1,
            post_script: post_script.to_owned(),
        })
    }

    fn version_name(&self, n: usize) -> String {
        format!("{}-{n}", self.flow.name())
    }

    fn master(&self) -> anyhow::Result<u32> {
        self.sandbox
            .nginx_master()
            .context("the sandbox's nginx is not running")
    }
}

/// Deploys `version` with no load; the replicas serving it.
async fn first_version(sandbox: &Sandbox, version: &str) -> anyhow::Result<Vec<Instance>> {
    sandbox.deploy(version, &Quiet).await?;
    Ok(sandbox.live().runtime.list(&sandbox.spec().name).await?)
}

/// All three sandboxes, the rounds, and the sandboxes shut down whatever happened.
async fn run_deploys(binary: &Path, plan: &Plan, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let scripts = tempfile::Builder::new()
        .prefix("switchyard-bench-routing-")
        .tempdir()?;
    let post_script = scripts.path().join("post.lua");
    std::fs::write(&post_script, wrk_post_script())?;
    let mut lanes = Vec::new();
    let mut result = Ok(());
    for flow in FLOWS {
        match Lane::start(binary, flow, &post_script).await {
            Ok(lane) => lanes.push(lane),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if result.is_ok() {
        result = rounds(plan, &mut lanes, rows).await;
    }
    for lane in lanes {
        result = finish(lane.sandbox, result).await;
    }
    result
}

fn wrk_post_script() -> String {
    format!(
        "wrk.method = \"POST\"\nwrk.body = string.rep(\"x\", {POST_BODY})\n\
         wrk.headers[\"Content-Type\"] = \"application/octet-stream\"\n"
    )
}

/// Every deploy in order: round by round, each flow that runs in the round, every strategy
/// under both pairings.
fn schedule(plan: &Plan) -> Vec<(usize, Flow, Strategy, Pairing)> {
    let mut deploys = Vec::new();
    for round in 0..plan.dynamic_deploys {
        for flow in FLOWS.into_iter().filter(|&f| plan.runs_in(f, round)) {
            for strategy in STRATEGIES {
                for pairing in PAIRINGS {
                    deploys.push((round, flow, strategy, pairing));
                }
            }
        }
    }
    deploys
}

async fn rounds(plan: &Plan, lanes: &mut [Lane], rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let deploys = schedule(plan);
    for (n, (round, flow, strategy, pairing)) in deploys.iter().copied().enumerate() {
        let lane = lanes
            .iter_mut()
            .find(|l| l.flow == flow)
            .context("no sandbox for the flow")?;
        let row = measure(lane, strategy, pairing, round)
            .await
            .with_context(|| {
                format!("{flow:?} {strategy:?} {pairing:?} round {round}: the bench itself failed")
            })?;
        eprintln!("{:>3}/{} {}", n + 1, deploys.len(), row.summary());
        rows.push(row);
    }
    Ok(())
}

/// One deploy. Times are milliseconds; signed where an event may come after what it is
/// compared with.
#[derive(Debug, Serialize)]
struct Row {
    flow: Flow,
    strategy: &'static str,
    wrk_method: &'static str,
    own_method: &'static str,
    round: usize,
    from: String,
    to: String,
    /// The engine's error, when the deploy failed (the row is still measured).
    error: Option<String>,
    wall_ms: f64,
    /// wrk's whole run: warm-up, settle, deploy and tail.
    wrk: WrkReport,
    /// The generator's whole run, as wrk's.
    own_requests: u64,
    own_failed: u64,
    /// Of those, failed before the deploy was called.
    own_failed_before: u64,
    own_failures: Vec<String>,
    /// First route event (`Reloaded` or `Shifted`; naive: the SIGHUP) → send time of the
    /// first response from the new version.
    route_to_first_new_ms: Option<f64>,
    /// First `Healthy` (the decision to route) → the same response.
    healthy_to_first_new_ms: Option<f64>,
    /// The router's own time for the first route change (`confirm_ms`); engine only.
    first_route_confirm_ms: Option<f64>,
    /// Confirmed route changes: `Reloaded` plus `Shifted` (naive: SIGHUPs).
    route_changes: usize,
    /// Per retirement of old replicas: the drain's wait (route → old peers idle, or old
    /// workers gone) and `Drained` → the last `Stopped`.
    drain_ms: Vec<f64>,
    idle_to_stopped_ms: Vec<f64>,
    workers_at_rest: usize,
    workers: WorkerPeak,
    p99_steady_ms: Option<f64>,
    p99_during_ms: Option<f64>,
}

impl Row {
    fn summary(&self) -> String {
        format!(
            "{:<7} {:<10} wrk {:<4} + own {:<4} round {:>2}: {:>5.0} ms, wrk {} failed of {}, \
             own {} failed of {}, workers {}→{} (+{} new), route→first new {}{}",
            self.flow.name(),
            self.strategy,
            self.wrk_method,
            self.own_method,
            self.round,
            self.wall_ms,
            self.wrk.failed,
            self.wrk.requests,
            self.own_failed,
            self.own_requests,
            self.workers_at_rest,
            self.workers.most,
            self.workers.started,
            self.route_to_first_new_ms
                .map_or("–".into(), |v| format!("{v:.1} ms")),
            self.error
                .as_ref()
                .map_or(String::new(), |e| format!(", DEPLOY FAILED: {e}")),
        )
    }
}

/// Starts both loads, lets them settle, deploys the lane's next version by `strategy` while
/// the workers are counted, waits [`TAIL`], stops the loads and sums it all up.
async fn measure(
    lane: &mut Lane,
    strategy: Strategy,
    pairing: Pairing,
    round: usize,
) -> anyhow::Result<Row> {
    let from = lane.version_name(lane.version);
    let to = lane.version_name(lane.version + 1);
    let (wrk, own) = start_loads(lane, pairing)?;
    tokio::time::sleep(WARMUP + SETTLE).await;
    let before = own.snapshot();
    let mut deployed = deploy_watched(lane, strategy, &to).await?;
    if own.is_finished() {
        bail!("the generator stopped before the tail ended (MAX_REQUESTS or LOAD_BOUND spent)");
    }
    let clients = Clients {
        wrk: wrk.stop().await?,
        traffic: own.stop().await,
        own_failed_before: before.failed,
    };
    let error = match std::mem::replace(&mut deployed.outcome, Ok(())) {
        Ok(()) => {
            lane.version += 1;
            None
        }
        Err(e) if lane.flow == Flow::Naive => return Err(e),
        Err(e) => Some(format!("{e:#}")),
    };
    let case = Case {
        flow: lane.flow,
        strategy,
        pairing,
        round,
        from,
        to,
    };
    Ok(Row::new(case, error, &deployed, clients))
}

/// Which deploy a [`Row`] is.
struct Case {
    flow: Flow,
    strategy: Strategy,
    pairing: Pairing,
    round: usize,
    from: String,
    to: String,
}

/// What the two clients saw over their whole runs.
struct Clients {
    wrk: WrkReport,
    traffic: LoadReport,
    own_failed_before: u64,
}

/// wrk with the pairing's method, and the generator with the other one.
fn start_loads(lane: &Lane, pairing: Pairing) -> anyhow::Result<(Wrk, Load)> {
    let url = lane.sandbox.url();
    let script = (pairing == Pairing::WrkPost).then_some(lane.post_script.as_path());
    let wrk = Wrk::start(&url, WRK_THREADS, CONNECTIONS, LOAD_BOUND, script)?;
    let method = match pairing {
        Pairing::WrkGet => Method::Post {
            body: vec![b'x'; POST_BODY],
        },
        Pairing::WrkPost => Method::Get,
    };
    let own = Load::start(LoadConfig {
        method,
        connections: CONNECTIONS,
        max_requests: MAX_REQUESTS,
        max_duration: LOAD_BOUND,
        ..LoadConfig::new(url)
    });
    Ok((wrk, own))
}

/// What happened around one deploy call, until [`TAIL`] after it returned.
struct Deployed {
    outcome: anyhow::Result<()>,
    called: Instant,
    returned: Instant,
    events: Vec<(Instant, Event)>,
    workers_at_rest: usize,
    workers: WorkerPeak,
}

/// Deploys `to` while a [`WorkerWatch`] counts nginx's workers, then waits [`TAIL`].
async fn deploy_watched(lane: &mut Lane, strategy: Strategy, to: &str) -> anyhow::Result<Deployed> {
    let master = lane.master()?;
    let workers_at_rest = procs::workers(master).len();
    let timeline = Timeline::default();
    let watch = WorkerWatch::start(master, SAMPLE);
    let called = Instant::now();
    let outcome = deploy(lane, strategy, to, &timeline).await;
    let returned = Instant::now();
    tokio::time::sleep(TAIL).await;
    let workers = watch.stop();
    Ok(Deployed {
        outcome,
        called,
        returned,
        events: timeline.0.into_inner().expect("timeline lock"),
        workers_at_rest,
        workers,
    })
}

impl Row {
    fn new(case: Case, error: Option<String>, d: &Deployed, clients: Clients) -> Row {
        let (events, traffic) = (&d.events, &clients.traffic);
        let to_first_new = |pick: fn(&Event) -> bool| {
            let (at, _) = events.iter().find(|(_, e)| pick(e))?;
            let first = traffic.by_version.get(&case.to)?.first;
            Some(signed_ms(*at, first))
        };
        let p99 = |from: Instant, to: Instant| traffic.percentile(99.0, Some((from, to))).map(ms);
        let confirm = events.iter().find_map(|(_, e)| match e {
            Event::Reloaded { confirm_ms, .. } | Event::Shifted { confirm_ms, .. } => {
                Some(*confirm_ms as f64)
            }
            _ => None,
        });
        let (drain_ms, idle_to_stopped_ms) = retirements(events).into_iter().unzip();
        Row {
            flow: case.flow,
            strategy: case.strategy.kind().as_str(),
            wrk_method: case.pairing.wrk_method(),
            own_method: case.pairing.own_method(),
            round: case.round,
            error,
            wall_ms: ms(d.returned - d.called),
            own_requests: traffic.total,
            own_failed: traffic.failed,
            own_failed_before: clients.own_failed_before,
            own_failures: traffic
                .failures
                .iter()
                .take(5)
                .map(|f| f.to_string())
                .collect(),
            route_to_first_new_ms: to_first_new(is_route),
            healthy_to_first_new_ms: to_first_new(|e| matches!(e, Event::Healthy { .. })),
            first_route_confirm_ms: confirm.filter(|_| case.flow != Flow::Naive),
            route_changes: events.iter().filter(|(_, e)| is_route(e)).count(),
            drain_ms,
            idle_to_stopped_ms,
            workers_at_rest: d.workers_at_rest,
            workers: d.workers,
            p99_steady_ms: p99(d.called - SETTLE, d.called),
            p99_during_ms: p99(d.called, d.returned),
            from: case.from,
            to: case.to,
            wrk: clients.wrk,
        }
    }
}

fn is_route(e: &Event) -> bool {
    matches!(e, Event::Reloaded { .. } | Event::Shifted { .. })
}

/// `to − from` in milliseconds, negative when `to` came first.
fn signed_ms(from: Instant, to: Instant) -> f64 {
    match to.checked_duration_since(from) {
        Some(d) => ms(d),
        None => -ms(from - to),
    }
}

/// For each `Drained` that `Stopped` events follow before the next route change: the drain's
/// own wait, and from `Drained` to the last of those `Stopped`.
fn retirements(events: &[(Instant, Event)]) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let mut open: Option<(Instant, u64, Option<Instant>)> = None;
    let mut close = |open: &mut Option<(Instant, u64, Option<Instant>)>| {
        if let Some((drained, waited, Some(stopped))) = open.take() {
            out.push((waited as f64, ms(stopped - drained)));
        }
    };
    for (at, event) in events {
        match event {
            Event::Drained { waited_ms, .. } => {
                close(&mut open);
                open = Some((*at, *waited_ms, None));
            }
            Event::Stopped { .. } => {
                if let Some((_, _, stopped)) = open.as_mut() {
                    *stopped = Some(*at);
                }
            }
            e if is_route(e) || matches!(e, Event::Done { .. }) => close(&mut open),
            _ => {}
        }
    }
    close(&mut open);
    out
}

/// Deploys `to` by the lane's flow and `strategy`.
async fn deploy(
    lane: &mut Lane,
    strategy: Strategy,
    to: &str,
    timeline: &Timeline,
) -> anyhow::Result<()> {
    if lane.flow != Flow::Naive {
        lane.sandbox
            .deploy_with(to, strategy.kind(), timeline)
            .await?;
        return Ok(());
    }
    let version = Version::parse(to).map_err(anyhow::Error::msg)?;
    let n = lane.version;
    let naive = Naive {
        sandbox: &lane.sandbox,
        timeline,
        version: &version,
        n,
    };
    let mut live_now = std::mem::take(&mut lane.live_now);
    let result = match strategy {
        Strategy::BlueGreen => naive.blue_green(&mut live_now).await,
        Strategy::Canary => naive.canary(&mut live_now).await,
        Strategy::Rolling => naive.rolling(&mut live_now).await,
    };
    lane.live_now = live_now;
    result
}

/// The naive order for each strategy, built from `common`'s pieces. It marks on the
/// timeline the points the engine reports: `Healthy` after its health wait, `Reloaded` or
/// `Shifted` at each SIGHUP, `Drained` at once after it (it does not wait for anything to be
/// idle), `Stopped` when the stop calls returned.
struct Naive<'a> {
    sandbox: &'a Sandbox,
    timeline: &'a Timeline,
    version: &'a Version,
    /// Numbers this deploy's instances apart from every other's.
    n: usize,
}

impl Naive<'_> {
    fn mark(&self, at: Instant, event: Event) {
        let mut events = self.timeline.0.lock().expect("timeline lock");
        events.push((at, event));
    }

    async fn start_healthy(
        &self,
        live_now: &[Instance],
        replicas: std::ops::Range<u16>,
    ) -> anyhow::Result<Vec<Instance>> {
        let color = live_now
            .first()
            .context("nothing is serving")?
            .color
            .other();
        let spec = self.sandbox.spec();
        let (new, _) = naive_start(self.sandbox, self.version, color, self.n, replicas).await?;
        let since = Instant::now();
        wait_healthy(self.sandbox, spec, &new).await?;
        let waited_ms = since.elapsed().as_millis() as u64;
        self.mark(Instant::now(), Event::Healthy { waited_ms });
        Ok(new)
    }

    /// Rewrites the upstream to `set`, SIGHUPs, and marks it.
    async fn route(&self, set: &UpstreamSet) -> anyhow::Result<()> {
        naive_route(self.sandbox, set).await?;
        let at = Instant::now();
        self.mark(
            at,
            match &set.canary {
                Some(c) => Event::Shifted {
                    weight_bp: c.weight_bp,
                    generation: 0,
                    confirm_ms: 0,
                },
                None => Event::Reloaded {
                    generation: 0,
                    confirm_ms: 0,
                },
            },
        );
        self.mark(
            at,
            Event::Drained {
                waited_ms: 0,
                lingering: None,
            },
        );
        Ok(())
    }

    async fn stop_at_once(&self, old: &[Instance]) -> anyhow::Result<()> {
        let stopped = naive_stop_at_once(self.sandbox, old).await?;
        for o in old {
            let instance = o.name.clone();
            self.mark(stopped, Event::Stopped { instance });
        }
        Ok(())
    }

    async fn blue_green(&self, live_now: &mut Vec<Instance>) -> anyhow::Result<()> {
        let new = self.start_healthy(live_now, 0..REPLICAS).await?;
        self.route(&upstream_set(self.sandbox.spec(), &new)).await?;
        self.stop_at_once(live_now).await?;
        *live_now = new;
        Ok(())
    }

    /// 25 % and 50 % for [`NAIVE_HOLD`] each, then all new.
    async fn canary(&self, live_now: &mut Vec<Instance>) -> anyhow::Result<()> {
        let spec = self.sandbox.spec();
        let new = self.start_healthy(live_now, 0..REPLICAS).await?;
        for weight_bp in [2500, 5000] {
            let canary = CanaryRoute {
                backends: new.iter().map(Instance::addr).collect(),
                weight_bp,
                sticky: None,
                route: None,
            };
            let set = UpstreamSet {
                canary: Some(canary),
                ..upstream_set(spec, live_now)
            };
            self.route(&set).await?;
            tokio::time::sleep(NAIVE_HOLD).await;
        }
        self.route(&upstream_set(spec, &new)).await?;
        self.stop_at_once(live_now).await?;
        *live_now = new;
        Ok(())
    }

    /// One replica at a time: start it, route to it and the old ones left, stop one old.
    async fn rolling(&self, live_now: &mut Vec<Instance>) -> anyhow::Result<()> {
        let spec = self.sandbox.spec();
        let old = std::mem::take(live_now);
        let mut new: Vec<Instance> = Vec::new();
        for (b, retiring) in old.iter().enumerate() {
            let b = b as u16;
            new.extend(self.start_healthy(&old, b..b + 1).await?);
            let serving: Vec<Instance> =
                old[b as usize + 1..].iter().chain(&new).cloned().collect();
            self.route(&upstream_set(spec, &serving)).await?;
            self.stop_at_once(std::slice::from_ref(retiring)).await?;
        }
        *live_now = new;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The deploy tables
// ---------------------------------------------------------------------------------------

fn values(rows: &[&Row], pick: impl Fn(&Row) -> Option<f64>) -> Vec<f64> {
    rows.iter().filter_map(|r| pick(r)).collect()
}

fn flat(rows: &[&Row], pick: impl Fn(&Row) -> &[f64]) -> Vec<f64> {
    rows.iter().flat_map(|r| pick(r).iter().copied()).collect()
}

/// "median (p25–p75; min–max)", or "–".
fn cell(values: Vec<f64>) -> String {
    match spread(values) {
        None => "–".into(),
        Some(s) => format!(
            "{} ({}–{}; {}–{})",
            num(s.median),
            num(s.p25),
            num(s.p75),
            num(s.min),
            num(s.max)
        ),
    }
}

/// "median (min–max)", or "–".
fn short(values: Vec<f64>) -> String {
    match spread(values) {
        None => "–".into(),
        Some(s) => format!("{} ({}–{})", num(s.median), num(s.min), num(s.max)),
    }
}

fn strategy_name(s: Strategy) -> &'static str {
    s.kind().as_str()
}

fn select(rows: &[Row], flow: Flow, s: Strategy, p: Option<Pairing>) -> Vec<&Row> {
    rows.iter()
        .filter(|r| r.flow == flow && r.strategy == strategy_name(s))
        .filter(|r| p.is_none_or(|p| r.wrk_method == p.wrk_method()))
        .collect()
}

fn print_deploys(plan: &Plan, rows: &[Row]) {
    println!(
        "{REPLICAS} replicas of the demo-app as processes (LATENCY_MS={LATENCY_MS}); per deploy, \
         fresh loads running together: wrk -t{WRK_THREADS} -c{CONNECTIONS} with one method and \
         the generator ({CONNECTIONS} keep-alive connections, never re-sending) with the other; \
         {} dynamic deploys per strategy and pairing, {} naive and reload\n",
        plan.dynamic_deploys, plan.other_deploys
    );
    let before: u64 = rows.iter().map(|r| r.own_failed_before).sum();
    println!(
        "{} deploys; of the generator's failed requests, {before} were sent before a deploy \
         was called (warm-up and settle)\n",
        rows.len()
    );
    print_failures(rows);
    print_timing(rows);
    print_cutover(rows);
    let failed: Vec<&Row> = rows.iter().filter(|r| r.error.is_some()).collect();
    for r in &failed {
        println!(
            "DEPLOY FAILED: {} {} round {}: {}",
            r.flow.name(),
            r.strategy,
            r.round,
            r.error.as_deref().unwrap_or_default()
        );
    }
    for r in rows
        .iter()
        .filter(|r| r.flow != Flow::Naive && r.own_failed > 0)
    {
        println!(
            "{} {} round {} own-generator failures: {:?}",
            r.flow.name(),
            r.strategy,
            r.round,
            r.own_failures
        );
    }
}

fn print_failures(rows: &[Row]) {
    println!("Failed requests, each client's whole run around each deploy:\n");
    let mut t = Table::new(&[
        "strategy",
        "routing",
        "wrk",
        "own",
        "deploys",
        "wrk requests",
        "wrk failed",
        "wrk failed/deploy (min–max)",
        "wrk connect/read/write/timeout/non-2xx",
        "own requests",
        "own failed",
        "own failed/deploy (min–max)",
        "own p99 steady ms",
        "own p99 during ms",
    ]);
    for s in STRATEGIES {
        for flow in FLOWS {
            for p in PAIRINGS {
                let rs = select(rows, flow, s, Some(p));
                if rs.is_empty() {
                    continue;
                }
                let sum = |f: fn(&Row) -> u64| rs.iter().map(|r| f(r)).sum::<u64>();
                t.row(vec![
                    strategy_name(s).into(),
                    flow.name().into(),
                    p.wrk_method().into(),
                    p.own_method().into(),
                    rs.len().to_string(),
                    sum(|r| r.wrk.requests).to_string(),
                    format!("**{}**", sum(|r| r.wrk.failed)),
                    short(values(&rs, |r| Some(r.wrk.failed as f64))),
                    format!(
                        "{}/{}/{}/{}/{}",
                        sum(|r| r.wrk.connect),
                        sum(|r| r.wrk.read),
                        sum(|r| r.wrk.write),
                        sum(|r| r.wrk.timeout),
                        sum(|r| r.wrk.non_2xx_3xx)
                    ),
                    sum(|r| r.own_requests).to_string(),
                    format!("**{}**", sum(|r| r.own_failed)),
                    short(values(&rs, |r| Some(r.own_failed as f64))),
                    short(values(&rs, |r| r.p99_steady_ms)),
                    short(values(&rs, |r| r.p99_during_ms)),
                ]);
            }
        }
    }
    t.print();
}

fn print_timing(rows: &[Row]) {
    println!("Per deploy, both pairings together: median (min–max):\n");
    let mut t = Table::new(&[
        "strategy",
        "routing",
        "deploys",
        "wall ms",
        "route changes",
        "first route: router confirm ms",
        "route → old peers idle (drain) ms",
        "old peer idle → stopped ms",
        "nginx workers at rest",
        "peak nginx workers",
        "nginx workers started",
        "worker samples",
    ]);
    for s in STRATEGIES {
        for flow in FLOWS {
            let rs = select(rows, flow, s, None);
            if rs.is_empty() {
                continue;
            }
            t.row(vec![
                strategy_name(s).into(),
                flow.name().into(),
                rs.len().to_string(),
                short(values(&rs, |r| Some(r.wall_ms))),
                short(values(&rs, |r| Some(r.route_changes as f64))),
                short(values(&rs, |r| r.first_route_confirm_ms)),
                short(flat(&rs, |r| &r.drain_ms)),
                short(flat(&rs, |r| &r.idle_to_stopped_ms)),
                short(values(&rs, |r| Some(r.workers_at_rest as f64))),
                short(values(&rs, |r| Some(r.workers.most as f64))),
                short(values(&rs, |r| Some(r.workers.started as f64))),
                short(values(&rs, |r| Some(r.workers.samples as f64))),
            ]);
        }
    }
    t.print();
}

fn print_cutover(rows: &[Row]) {
    println!(
        "Cutover, ms, signed (negative: the new version answered before the event): \
         median (p25–p75; min–max):\n"
    );
    let mut t = Table::new(&[
        "strategy",
        "routing",
        "deploys",
        "route event → first new-version response",
        "healthy → first new-version response",
    ]);
    for s in STRATEGIES {
        for flow in FLOWS {
            let rs = select(rows, flow, s, None);
            if rs.is_empty() {
                continue;
            }
            t.row(vec![
                strategy_name(s).into(),
                flow.name().into(),
                rs.len().to_string(),
                cell(values(&rs, |r| r.route_to_first_new_ms)),
                cell(values(&rs, |r| r.healthy_to_first_new_ms)),
            ]);
        }
    }
    t.print();
}

// ---------------------------------------------------------------------------------------
// Scale: 100 services × 10 peers on one nginx
// ---------------------------------------------------------------------------------------

#[derive(Debug, Serialize)]
struct Scale {
    services: usize,
    peers: usize,
    /// The first apply of each service: a structural reload with one more service file.
    setup_ms: Vec<f64>,
    /// Confirmed dynamic route changes of one service.
    route_change_ms: Vec<f64>,
    /// nginx's config generation and workers before and after the route changes.
    generation_before: u64,
    generation_after: u64,
    workers_before: Vec<u32>,
    workers_after: Vec<u32>,
    /// One staged `nginx -t` of the whole tree, alone.
    nginx_t_ms: Vec<f64>,
    /// A listen change of one service: structural, so validated, reloaded and confirmed.
    structural_ms: Vec<f64>,
    /// After each: until the old workers had exited.
    structural_drain_ms: Vec<f64>,
    /// The parts of one route change, each timed alone afterwards.
    parts: Parts,
}

/// What a dynamic route change does, step by step, each timed alone [`PART_RUNS`] times on
/// the same tree (the lock and the bookkeeping between the steps are left out).
#[derive(Debug, Default, Serialize)]
struct Parts {
    /// Rendering the service's server block and the control file, to compare with disk.
    render_ms: Vec<f64>,
    /// Reading the routing state file of every service and writing it back (fsync, rename).
    state_file_ms: Vec<f64>,
    /// `GET /routes?service=` on a fresh connection: the live generation.
    routes_get_ms: Vec<f64>,
    /// `POST /routes` with one document, then reading the generation back: the change itself.
    post_confirm_ms: Vec<f64>,
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_addr() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}

fn nginx_binary() -> anyhow::Result<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("nginx not found in /usr/sbin or /usr/bin: run scripts/install-deps")
}

async fn scale() -> anyhow::Result<Scale> {
    let nginx = nginx_binary()?;
    let prefix = tempfile::Builder::new()
        .prefix("switchyard-bench-scale-")
        .tempdir()?;
    let router = NginxRouter::new(
        Layout::managed(&nginx, prefix.path()),
        free_addr()?,
        Templates::builtin(),
    )
    .with_routing(RoutingChoice::Dynamic);
    let managed = ManagedNginx::start(&router, SCALE_DRAIN)
        .await
        .map_err(|e| anyhow::anyhow!("starting nginx under {}: {e}", prefix.path().display()))?;
    let master = managed.master;
    let result = scale_on(&router, master).await;
    managed.stop().await;
    result
}

/// Service `i`'s peers in set `k % 2`: loopback ports nothing listens on.
fn peers(i: usize, k: usize) -> Vec<SocketAddr> {
    let base = if k.is_multiple_of(2) { 20_000 } else { 40_000 };
    (0..PEERS)
        .map(|j| SocketAddr::from(([127, 0, 0, 1], (base + i * PEERS + j) as u16)))
        .collect()
}

async fn scale_on(router: &NginxRouter, master: u32) -> anyhow::Result<Scale> {
    let mut sets = Vec::new();
    for i in 0..SERVICES {
        sets.push(UpstreamSet {
            service: Name::parse(&format!("svc-{i}")).map_err(anyhow::Error::msg)?,
            listen: free_addr()?,
            backends: peers(i, 0),
            canary: None,
        });
    }
    eprintln!("scale: applying {SERVICES} services of {PEERS} peers (one reload each)");
    let mut setup_ms = Vec::new();
    for set in &sets {
        let (took, _) = apply_drained(router, set).await?;
        setup_ms.push(took);
    }
    let generation_before = router.live_generation().await.map_err(anyhow::Error::msg)?;
    let workers_before = procs::workers(master);
    let mut route_change_ms = Vec::new();
    for k in 1..=ROUTE_CHANGES {
        let i = (k * 37) % SERVICES;
        let set = UpstreamSet {
            backends: peers(i, k),
            ..sets[i].clone()
        };
        let since = Instant::now();
        router.apply(&set).await?;
        route_change_ms.push(ms(since.elapsed()));
        sets[i] = set;
    }
    let generation_after = router.live_generation().await.map_err(anyhow::Error::msg)?;
    let workers_after = procs::workers(master);
    let mut nginx_t_ms = Vec::new();
    for _ in 0..STRUCTURAL_RELOADS {
        let since = Instant::now();
        stage::validate(&router.layout, &[], "the whole tree").await?;
        nginx_t_ms.push(ms(since.elapsed()));
    }
    let (structural_ms, structural_drain_ms) = structural(router, &sets[0]).await?;
    // Last: its posts move live generations past the state file's.
    let parts = parts(router, &sets[1]).await?;
    Ok(Scale {
        services: SERVICES,
        peers: PEERS,
        setup_ms,
        route_change_ms,
        generation_before,
        generation_after,
        workers_before,
        workers_after,
        nginx_t_ms,
        structural_ms,
        structural_drain_ms,
        parts,
    })
}

/// Times each step of a route change of `set`'s service alone; see [`Parts`].
async fn parts(router: &NginxRouter, set: &UpstreamSet) -> anyhow::Result<Parts> {
    let msg = anyhow::Error::msg;
    let state = StateFile {
        path: router.layout.conf_dir.join(STATE_FILE),
    };
    let (control, service) = (router.control, set.service.as_str());
    let mut parts = Parts::default();
    for _ in 0..PART_RUNS {
        let since = Instant::now();
        let layout = &router.layout;
        router
            .templates
            .dynamic_service(&set.service, set.listen, &layout.access_log)
            .map_err(msg)?;
        router.control_file(router.disk_generation()).map_err(msg)?;
        parts.render_ms.push(ms(since.elapsed()));
        let since = Instant::now();
        let docs = state.read().map_err(msg)?;
        state.write(&docs).map_err(msg)?;
        parts.state_file_ms.push(ms(since.elapsed()));
        let since = Instant::now();
        let live = routing::live_generation(control, service)
            .await
            .map_err(msg)?;
        parts.routes_get_ms.push(ms(since.elapsed()));
        let doc = docs
            .get(service)
            .context("no routing document")?
            .at(live + 1);
        let since = Instant::now();
        routing::post(control, &doc).await.map_err(msg)?;
        let now = routing::live_generation(control, service)
            .await
            .map_err(msg)?;
        parts.post_confirm_ms.push(ms(since.elapsed()));
        if now != live + 1 {
            bail!("posted generation {} of {service}, live is {now}", live + 1);
        }
    }
    Ok(parts)
}

/// Applies `set` and waits until it is drained: the apply's time and the drain's.
async fn apply_drained(router: &NginxRouter, set: &UpstreamSet) -> anyhow::Result<(f64, f64)> {
    let since = Instant::now();
    let reload = router.apply(set).await?;
    let took = ms(since.elapsed());
    let since = Instant::now();
    let drained = router.wait_drained(&reload, SCALE_DRAIN).await?;
    if let Some(left) = drained.lingering {
        bail!("{}: {left} after {SCALE_DRAIN:?}", set.service);
    }
    Ok((took, ms(since.elapsed())))
}

/// Moves the first service between two listen addresses: each move changes its server
/// block, so the router validates the tree of every service file, reloads and confirms.
async fn structural(
    router: &NginxRouter,
    first: &UpstreamSet,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let listens = [free_addr()?, first.listen];
    let (mut took, mut drained) = (Vec::new(), Vec::new());
    for k in 0..STRUCTURAL_RELOADS {
        let set = UpstreamSet {
            listen: listens[k % 2],
            ..first.clone()
        };
        let before = router.live_generation().await.map_err(anyhow::Error::msg)?;
        let (t, d) = apply_drained(router, &set).await?;
        let after = router.live_generation().await.map_err(anyhow::Error::msg)?;
        if after != before + 1 {
            bail!("a listen change of {} moved nginx from generation {before} to {after}, not one reload", set.service);
        }
        took.push(t);
        drained.push(d);
    }
    Ok((took, drained))
}

fn print_scale(s: &Scale) {
    println!(
        "{} services × {} peers on one managed nginx (dynamic router); nginx generation {} → {} \
         and workers {:?} → {:?} across the route changes\n",
        s.services,
        s.peers,
        s.generation_before,
        s.generation_after,
        s.workers_before,
        s.workers_after
    );
    print_metrics(
        62,
        &[
            (
                "one dynamic route change (apply, confirmed), ms",
                s.route_change_ms.clone(),
            ),
            (
                "structural reload, 100 service files (apply: nginx -t, reload, confirm), ms",
                s.structural_ms.clone(),
            ),
            (
                "· then old workers exited, ms",
                s.structural_drain_ms.clone(),
            ),
            (
                "one staged nginx -t of the tree alone, ms",
                s.nginx_t_ms.clone(),
            ),
            (
                "setup: first apply of service k (structural), ms",
                s.setup_ms.clone(),
            ),
        ],
    );
    println!(
        "({} route changes, {} structural reloads, {} setup applies)\n",
        s.route_change_ms.len(),
        s.structural_ms.len(),
        s.setup_ms.len()
    );
    println!("The steps of one route change, each timed alone {PART_RUNS} times:\n");
    let p = &s.parts;
    print_metrics(
        62,
        &[
            (
                "render the server block and the control file, ms",
                p.render_ms.clone(),
            ),
            (
                "read + write the state file (100 documents), ms",
                p.state_file_ms.clone(),
            ),
            (
                "GET /routes (live generation, fresh connection), ms",
                p.routes_get_ms.clone(),
            ),
            ("POST /routes + read back, ms", p.post_confirm_ms.clone()),
        ],
    );
}

// ---------------------------------------------------------------------------------------
// The targets
// ---------------------------------------------------------------------------------------

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT MET"
    }
}

fn print_targets(plan: &Plan, rows: &[Row], scale: Option<&Scale>) {
    let mut t = Table::new(&["target", "result", "numbers"]);
    if plan.deploys {
        let dynamic: Vec<&Row> = rows.iter().filter(|r| r.flow == Flow::Dynamic).collect();
        let mut zero = true;
        let mut words = Vec::new();
        for s in STRATEGIES {
            for p in PAIRINGS {
                let rs = select(rows, Flow::Dynamic, s, Some(p));
                let failed: u64 = rs.iter().map(|r| r.wrk.failed).sum();
                zero &= failed == 0 && rs.len() >= 20;
                words.push(format!(
                    "{} wrk {}: {failed} in {}",
                    strategy_name(s),
                    p.wrk_method(),
                    rs.len()
                ));
            }
        }
        t.row(vec![
            "0 failed with wrk in every dynamic row over ≥ 20 deploys".into(),
            verdict(zero).into(),
            words.join("; "),
        ]);
        let cut = values(&dynamic, |r| r.route_to_first_new_ms);
        let decided = values(&dynamic, |r| r.healthy_to_first_new_ms);
        let worst = |v: &[f64]| v.iter().copied().fold(f64::MIN, f64::max);
        let median = |v: &[f64]| spread(v.to_vec()).map_or(f64::NAN, |s| s.median);
        t.row(vec![
            "cutover under 5 ms (route event → first new-version response)".into(),
            verdict(!cut.is_empty() && worst(&cut) < 5.0).into(),
            format!(
                "median {:.1} ms, max {:.1} ms; healthy → first new: median {:.1}, max {:.1}",
                median(&cut),
                worst(&cut),
                median(&decided),
                worst(&decided)
            ),
        ]);
        let extra = dynamic
            .iter()
            .filter(|r| r.workers.most > r.workers_at_rest || r.workers.started > 0)
            .count();
        t.row(vec![
            "no extra nginx workers in dynamic rows".into(),
            verdict(extra == 0).into(),
            format!("{extra} of {} dynamic deploys saw more", dynamic.len()),
        ]);
    }
    if let Some(s) = scale {
        let median = |v: &[f64]| spread(v.to_vec()).map_or(f64::NAN, |s| s.median);
        let max = |v: &[f64]| v.iter().copied().fold(f64::MIN, f64::max);
        t.row(vec![
            "one dynamic route change < 10 ms (100 × 10)".into(),
            verdict(median(&s.route_change_ms) < 10.0).into(),
            format!(
                "median {:.1} ms, max {:.1} ms over {}",
                median(&s.route_change_ms),
                max(&s.route_change_ms),
                s.route_change_ms.len()
            ),
        ]);
        t.row(vec![
            "structural reload of 100 services < 1 s".into(),
            verdict(max(&s.structural_ms) < 1000.0).into(),
            format!(
                "median {:.0} ms, max {:.0} ms over {}",
                median(&s.structural_ms),
                max(&s.structural_ms),
                s.structural_ms.len()
            ),
        ]);
    }
    t.print();
}
