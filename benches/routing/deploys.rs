//! The deploys part: one [`Lane`] (a sandbox brought to its first version) per flow, every
//! deploy of the schedule round by round ([`run_deploys`]), and one deploy under both loads
//! ([`measure`]) while [`deploy_watched`] counts nginx's workers.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use switchyard_app::load::{Load, LoadConfig, Method};
use switchyard_app::sandbox::{Sandbox, SandboxOptions};
use switchyard_engine::config::RuntimeChoice;
use switchyard_engine::{Instance, Quiet, Runtime, Version};
use switchyard_nginx::procs;

use crate::common::{finish, Timeline, WorkerWatch, Wrk};
use crate::flows::{Flow, Naive, Pairing, Strategy, FLOWS, PAIRINGS, STRATEGIES};
use crate::row::{Case, Clients, Deployed, Row};
use crate::{
    Plan, CANARY, CONNECTIONS, LATENCY_MS, LOAD_BOUND, MAX_REQUESTS, POST_BODY, REPLICAS, ROLLING,
    SAMPLE, SETTLE, TAIL, WARMUP, WRK_THREADS,
};

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
pub async fn run_deploys(binary: &Path, plan: &Plan, rows: &mut Vec<Row>) -> anyhow::Result<()> {
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
