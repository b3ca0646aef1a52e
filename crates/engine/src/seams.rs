//! The seams through which the engine reaches the world: [`Runtime`] (containers or
//! processes), [`Prober`] (HTTP health checks), [`Router`] (nginx), [`Store`] (SQLite),
//! [`Host`] (clock and process table), [`Hooks`] (a service's deploy hooks) and [`Observer`]
//! (progress for humans and benchmarks).
//!
//! Each has one real implementation in its own crate and a recording fake in
//! [`crate::fakes`]. Async seams use native `async fn` in traits; the engine is generic over
//! them, so no boxing is needed.

// The seams are implemented and called only inside this workspace, by generic code that runs
// a deploy on one task: no caller needs the futures to be `Send`.
#![allow(async_fn_in_trait)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::HookSpec;
use crate::model::*;
use crate::names::{Name, RequestKey, RouteMatch};

/// Errors a runtime reports. `Unavailable` means the runtime itself is unreachable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    Unavailable(String),
    #[error("{what}: {message}")]
    Failed { what: String, message: String },
}

/// What the runtime says about an instance, apart from our own HTTP probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum InstanceStatus {
    Running { health: RuntimeHealth },
    Exited { code: Option<i64> },
    Missing,
}

/// Docker's HEALTHCHECK status; `None` where the image defines no check (and for processes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeHealth {
    None,
    Starting,
    Healthy,
    Unhealthy,
}

pub trait Runtime {
    /// Readies the runtime for the replicas of `spec`'s version before the first of them
    /// starts (Docker: pulls the image as `spec.container.pull` says). Called once per
    /// deploy or rollback that starts fresh replicas; an error fails it before anything
    /// started.
    async fn prepare(&self, spec: &InstanceSpec) -> Result<(), RuntimeError>;
    /// Creates and starts one replica, published on 127.0.0.1: on `spec.host_port` when given
    /// (the port the replica it replaces just freed; the runtime waits up to 5 s for it to be
    /// released, then fails naming it), else on a port the runtime allocates.
    async fn start(&self, spec: &InstanceSpec) -> Result<Instance, RuntimeError>;
    /// Starts a stopped (retained) instance again, on the same host port.
    async fn restart(&self, instance: &Instance) -> Result<Instance, RuntimeError>;
    async fn status(&self, instance: &Instance) -> Result<InstanceStatus, RuntimeError>;
    /// SIGTERM, then SIGKILL after `timeout`. Stopping a missing instance is not an error.
    async fn stop(&self, instance: &Instance, timeout: Duration) -> Result<(), RuntimeError>;
    /// Removes a (stopped or running) instance. Removing a missing one is not an error.
    async fn remove(&self, instance: &Instance) -> Result<(), RuntimeError>;
    /// The last lines of the instance's output, for error messages.
    async fn logs(&self, instance: &Instance, lines: usize) -> String;
    /// Every instance of `service` this runtime labelled, whatever the store says.
    async fn list(&self, service: &Name) -> Result<Vec<Instance>, RuntimeError>;
}

/// One HTTP health probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Probe {
    pub ok: bool,
    /// `200 ok`, `503 unhealthy: …`, or the connection error.
    pub summary: String,
    pub latency: Duration,
}

pub trait Prober {
    /// GET `path` on `addr` over a fresh connection, within `timeout`. 2xx is ok.
    async fn probe(&self, addr: SocketAddr, path: &str, timeout: Duration) -> Probe;
}

/// The backends nginx should send a service's traffic to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpstreamSet {
    pub service: Name,
    pub listen: SocketAddr,
    /// The stable track.
    pub backends: Vec<SocketAddr>,
    /// A canary track beside the stable one, and how traffic is split between them.
    pub canary: Option<CanaryRoute>,
}

/// The canary side of a split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CanaryRoute {
    pub backends: Vec<SocketAddr>,
    /// The canary's share of traffic in hundredths of a percent (0..=10_000).
    pub weight_bp: u32,
    /// What keeps a user on one side across steps; None splits each request at random.
    pub sticky: Option<RequestKey>,
    /// Requests whose key has this value always go to the canary (testers first).
    pub route: Option<RouteMatch>,
}

/// What a router needs to wait out the traffic a route change took from the old serve set:
/// for the reload router, the worker processes of the previous config. The engine journals
/// it and hands it back as it came, and never looks inside.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DrainHandle(serde_json::Value);

impl DrainHandle {
    /// A handle carrying `token`, for the router that made it.
    pub fn new(token: impl Serialize) -> DrainHandle {
        DrainHandle(serde_json::to_value(token).unwrap_or_default())
    }

    /// The token back, as the router that made it reads it; None if it is not one.
    pub fn token<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_value(self.0.clone()).ok()
    }
}

/// A confirmed route change: the generation now live and what to drain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reload {
    pub generation: u64,
    pub drain: DrainHandle,
    /// From starting the change to seeing the new generation answer.
    pub confirm_ms: u64,
}

/// The result of waiting out the old serve set's traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drained {
    pub waited_ms: u64,
    /// What was still draining when the wait timed out, in the router's words
    /// (`old nginx workers [812, 813] still running`); None when everything drained.
    pub lingering: Option<String>,
}

/// A rendered change, for `plan`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigDiff {
    pub path: String,
    pub old: String,
    pub new: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouterError {
    /// `nginx -t` refused the staged config; nothing was reloaded.
    #[error("nginx rejected the new config for {service}; nothing was reloaded:\n{stderr}")]
    Rejected { service: String, stderr: String },
    /// The reload did not become live; the previous files were restored.
    #[error("nginx reload not confirmed: {0}")]
    NotConfirmed(String),
    #[error("nginx: {0}")]
    Unavailable(String),
}

pub trait Router {
    /// Renders `set`, validates a staged copy of the whole tree, swaps it in atomically,
    /// reloads and waits until the new generation answers. On error, traffic is unchanged.
    async fn apply(&self, set: &UpstreamSet) -> Result<Reload, RouterError>;
    /// Waits until what `reload.drain` names has drained (for nginx: the old workers have
    /// exited), at most `timeout`.
    async fn wait_drained(
        &self,
        reload: &Reload,
        timeout: Duration,
    ) -> Result<Drained, RouterError>;
    /// The live file and what `apply(set)` would write in its place.
    fn preview(&self, set: &UpstreamSet) -> Result<ConfigDiff, RouterError>;
    /// Takes `service` out of nginx (its server and its routing), validated and confirmed
    /// like an apply; removing a service nginx does not have is not an error.
    async fn remove(&self, service: &Name) -> Result<Reload, RouterError>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state store: {0}")]
pub struct StoreError(pub String);

pub trait Store {
    /// Takes the lock if it is free, or if it is held exactly as `replace` (a stale lock).
    /// Returns the current holder otherwise.
    fn try_lock(&self, lock: &Lock, replace: Option<&Lock>)
        -> Result<Result<(), Lock>, StoreError>;
    fn heartbeat(&self, service: &Name, pid: u32, now_ms: i64) -> Result<(), StoreError>;
    fn unlock(&self, service: &Name, pid: u32) -> Result<(), StoreError>;
    fn lock(&self, service: &Name) -> Result<Option<Lock>, StoreError>;
    fn begin(&self, deployment: &NewDeployment) -> Result<DeploymentId, StoreError>;
    fn journal(&self, id: DeploymentId, at_ms: i64, step: &Step) -> Result<(), StoreError>;
    fn finish(
        &self,
        id: DeploymentId,
        at_ms: i64,
        outcome: Outcome,
        message: &str,
    ) -> Result<(), StoreError>;
    /// The newest deployment of `service` still `running`, with its journal.
    fn unfinished(
        &self,
        service: &Name,
    ) -> Result<Option<(DeploymentRecord, Vec<JournalEntry>)>, StoreError>;
    fn deployment(
        &self,
        id: DeploymentId,
    ) -> Result<Option<(DeploymentRecord, Vec<JournalEntry>)>, StoreError>;
    fn history(
        &self,
        service: Option<&Name>,
        limit: usize,
    ) -> Result<Vec<DeploymentRecord>, StoreError>;
    /// Inserts or replaces an instance row.
    fn put_instance(&self, instance: &Instance, state: InstanceState) -> Result<(), StoreError>;
    fn set_instance_state(&self, id: &str, state: InstanceState) -> Result<(), StoreError>;
    /// The active slot and the retained slots, newest first.
    fn service(&self, service: &Name) -> Result<ServiceRecord, StoreError>;
    /// In one transaction: the deployment's instances become active, the previously active
    /// ones retained.
    fn activate(&self, service: &Name, id: DeploymentId) -> Result<(), StoreError>;
    /// Leaves a promote or abort request for running deployment `id` (a later one replaces it).
    fn put_control(&self, id: DeploymentId, control: Control, at_ms: i64)
        -> Result<(), StoreError>;
    /// Takes the pending request for deployment `id`, if any.
    fn take_control(&self, id: DeploymentId) -> Result<Option<Control>, StoreError>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricError(pub String);

/// Where canary measurements come from: Prometheus, or the embedded access-log counters.
pub trait MetricSource {
    async fn measure(
        &self,
        query: &crate::judge::TrackWindow,
    ) -> Result<crate::judge::Measurement, MetricError>;
}

/// The clock and the process table.
pub trait Host {
    fn now_ms(&self) -> i64;
    fn pid(&self) -> u32;
    fn hostname(&self) -> String;
    fn user(&self) -> String;
    /// Whether a process with this pid exists on this host.
    fn process_alive(&self, pid: u32) -> bool;
}

/// What a hook is told about the deployment it runs for: the environment of a command
/// (`SWITCHYARD_SERVICE`, …) and, as it serializes, the JSON body of a webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HookCall {
    pub hook: HookPoint,
    pub service: String,
    /// The version deployed; for `on_rollback`, the version traffic went back to.
    pub version: String,
    /// The version live before; for `on_rollback`, the one rolled back from. None if none.
    pub previous: Option<String>,
    pub deployment: DeploymentId,
    pub strategy: String,
    /// `pre_traffic`: the batch of new replicas, not yet in nginx (a smoke test reaches them
    /// directly); `post_deploy` and `on_rollback`: what nginx serves now; `pre_deploy`: none.
    pub replicas: Vec<SocketAddr>,
}

/// How one hook ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HookRun {
    pub ok: bool,
    /// `exit 0`, `exit 3`, `killed by signal 9`, `timed out after 30s`, `HTTP 500`, or why
    /// it could not run.
    pub summary: String,
    /// The tail of what it printed (stdout and stderr) or answered, capped.
    pub output: String,
}

/// A boxed future, so that [`Hooks`] can be a trait object.
pub type HookFuture<'a> = Pin<Box<dyn Future<Output = HookRun> + 'a>>;

/// Runs a service's deploy hooks: commands or webhooks, each within its timeout. Never
/// fails: what went wrong is the [`HookRun`]'s summary.
pub trait Hooks {
    fn run<'a>(&'a self, hook: &'a HookSpec, call: &'a HookCall) -> HookFuture<'a>;
}

/// Hooks for a deployer that runs none: every hook passes without running.
pub struct NoHooks;

impl Hooks for NoHooks {
    fn run<'a>(&'a self, _: &'a HookSpec, _: &'a HookCall) -> HookFuture<'a> {
        Box::pin(async {
            HookRun {
                ok: true,
                summary: "not run".into(),
                output: String::new(),
            }
        })
    }
}

/// Progress, for a human (the CLI) or a benchmark (timestamps of phases).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Begin {
        deployment: DeploymentId,
        service: String,
        from: Option<String>,
        to: String,
        color: Color,
    },
    Resume {
        deployment: DeploymentId,
        reason: String,
    },
    Started {
        instance: String,
        addr: SocketAddr,
        reused: bool,
    },
    Waiting {
        instance: String,
        passes: u32,
        needed: u32,
        last: String,
    },
    Healthy {
        waited_ms: u64,
    },
    Reloaded {
        generation: u64,
        confirm_ms: u64,
    },
    Drained {
        waited_ms: u64,
        /// What still drained when the wait timed out; None when everything did.
        lingering: Option<String>,
    },
    Stopped {
        instance: String,
    },
    Removed {
        instance: String,
    },
    Done {
        deployment: DeploymentId,
        outcome: Outcome,
        message: String,
    },
    /// A canary step is live.
    Shifted {
        weight_bp: u32,
        generation: u64,
        confirm_ms: u64,
    },
    Analysis {
        weight_bp: u32,
        verdict: crate::judge::Verdict,
        measurement: crate::judge::Measurement,
    },
    Paused {
        weight_bp: u32,
    },
    /// The post-cutover watch began: the new version is judged for `for_ms`, its checks
    /// told as [`Event::Analysis`] at 100%, the previous version kept on `kept` replicas.
    Watching {
        for_ms: u64,
        kept: usize,
    },
    /// The watch ended without a failed check after `checks` checks (or `switchyard promote`).
    Watched {
        checks: u32,
        promoted: bool,
    },
    RolledBack {
        generation: u64,
        reason: String,
    },
    /// A hook ran.
    Hook {
        hook: HookPoint,
        ok: bool,
        summary: String,
        output: String,
        elapsed_ms: u64,
    },
}

pub trait Observer {
    fn event(&self, event: &Event);
}

/// An observer that ignores everything.
pub struct Quiet;

impl Observer for Quiet {
    fn event(&self, _: &Event) {}
}
