//! The nouns the engine and every seam share: [`Instance`], [`Color`], [`Slot`],
//! [`ServiceRecord`], deployments ([`NewDeployment`], [`DeploymentRecord`], [`Outcome`]),
//! the deploy [`Lock`] and the journal's [`Step`].

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::config::Source;
use crate::names::{Name, Version};
use crate::seams::DrainHandle;

pub type DeploymentId = i64;

/// `as_str` and `parse` for a fieldless enum: the word each value is stored and shown as.
macro_rules! words {
    ($ty:ident { $($variant:ident => $word:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $word,)+
                }
            }

            pub fn parse(s: &str) -> Option<$ty> {
                match s {
                    $($word => Some($ty::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

/// The two blue-green slots. The active one comes from the store, never from `docker ps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Blue,
    Green,
}

words!(Color {
    Blue => "blue",
    Green => "green",
});

impl Color {
    pub fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }
}

/// What a runtime needs to start one replica.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceSpec {
    pub service: Name,
    pub version: Version,
    pub color: Color,
    pub deployment: DeploymentId,
    pub replica: u16,
    pub source: Source,
    /// The app's port inside its container; processes get their host port instead.
    pub port: u16,
    pub env: BTreeMap<String, String>,
    /// The 127.0.0.1 port to publish on, freed by the replica this one replaces (in-place);
    /// `None` lets the runtime allocate one.
    pub host_port: Option<u16>,
    /// Pull policy, limits, volumes, networks and the rest of the service's container options.
    pub container: crate::config::container::ContainerSpec,
    /// Environment from `env_file` and `secrets`, added after `env`; never printed.
    pub secrets: Secrets,
}

/// Environment values read at deploy time from `env_file` and `secrets` files. They reach the
/// replica's environment and nothing else: `Debug` names only the keys, and there is no
/// `Serialize`, so no journal, store row, label or output can carry a value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets(BTreeMap<String, String>);

impl Secrets {
    pub fn new(values: BTreeMap<String, String>) -> Secrets {
        Secrets(values)
    }

    /// Key and value pairs, for a runtime to put in the environment.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&str> = self.0.keys().map(String::as_str).collect();
        write!(f, "Secrets({keys:?}, values redacted)")
    }
}

impl InstanceSpec {
    /// The instance a runtime started from this spec, as `id`, named `name`, published on
    /// 127.0.0.1:`host_port`; created by, and serving in, the spec's deployment.
    pub fn instance(&self, id: String, name: String, host_port: u16) -> Instance {
        Instance {
            id,
            name,
            service: self.service.clone(),
            version: self.version.clone(),
            color: self.color,
            deployment: self.deployment,
            origin: self.deployment,
            replica: self.replica,
            host_port,
        }
    }

    /// The runtime-visible name, unique per deployment and replica.
    pub fn instance_name(&self) -> String {
        format!(
            "sy-{}-{}-d{}-r{}",
            self.service,
            self.color.as_str(),
            self.deployment,
            self.replica
        )
    }
}

/// One running (or stopped) replica, as a runtime started it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Container id, or the instance name for the process runtime.
    pub id: String,
    pub name: String,
    pub service: Name,
    pub version: Version,
    pub color: Color,
    /// The deployment the instance serves in now: the one that created it, or one that
    /// restarted it (a rollback).
    pub deployment: DeploymentId,
    /// The deployment that created it, which alone may remove it. (Records written before
    /// it existed are given it when the store migrates, and by the process runtime's label.)
    #[serde(default)]
    pub origin: DeploymentId,
    pub replica: u16,
    /// Published on 127.0.0.1 only.
    pub host_port: u16,
}

impl Instance {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.host_port))
    }
}

/// The lifecycle of an instance as the store records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Started by a deployment that has not moved traffic to it yet.
    Starting,
    /// Receiving traffic.
    Active,
    /// Stopped and kept for rollback.
    Retained,
    /// Removed from the runtime.
    Removed,
}

words!(InstanceState {
    Starting => "starting",
    Active => "active",
    Retained => "retained",
    Removed => "removed",
});

/// The replicas of one version of a service that share a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub version: Version,
    pub color: Color,
    pub deployment: DeploymentId,
    pub instances: Vec<Instance>,
}

/// What the store knows of a service: the live slot and the retained ones, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceRecord {
    pub active: Option<Slot>,
    pub retained: Vec<Slot>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployKind {
    Deploy,
    Rollback,
}

words!(DeployKind {
    Deploy => "deploy",
    Rollback => "rollback",
});

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Running,
    Succeeded,
    /// Failed before traffic moved: traffic stayed on the previous version.
    Failed,
}

words!(Outcome {
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
});

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDeployment {
    pub service: Name,
    pub kind: DeployKind,
    pub strategy: String,
    pub from_version: Option<Version>,
    pub to_version: Version,
    pub color: Color,
    /// `user@host (pid N)`.
    pub who: String,
    pub started_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeploymentRecord {
    pub id: DeploymentId,
    pub service: Name,
    pub kind: DeployKind,
    pub strategy: String,
    pub from_version: Option<Version>,
    pub to_version: Version,
    pub color: Color,
    pub who: String,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
    pub outcome: Outcome,
    pub message: String,
}

/// A request from `switchyard promote` or `switchyard abort` to a running deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Control {
    /// Skip the rest of the current step's wait (a pause or an analysis) and go on.
    Promote,
    /// Roll back now.
    Abort,
    /// Hold the canary at its current step (still judged) until promote or abort.
    Pause,
}

words!(Control {
    Promote => "promote",
    Abort => "abort",
    Pause => "pause",
});

/// The per-service deploy lock. A dead owner pid or a stale heartbeat frees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lock {
    pub service: Name,
    pub pid: u32,
    pub host: String,
    pub deployment: Option<DeploymentId>,
    pub acquired_ms: i64,
    pub heartbeat_ms: i64,
}

/// One journal entry, written before the action it names (or after, for results).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    StartInstance {
        replica: u16,
        name: String,
    },
    RestartInstance {
        instance: Instance,
    },
    InstanceStarted {
        instance: Instance,
    },
    WaitHealthy,
    Healthy {
        waited_ms: u64,
    },
    Route {
        backends: Vec<SocketAddr>,
    },
    Routed {
        generation: u64,
        #[serde(rename = "old_workers")]
        drain: DrainHandle,
    },
    Drain,
    Drained {
        waited_ms: u64,
        /// What still drained when the wait timed out, in the router's words. (Journals
        /// written before the drain handle have the PIDs under `lingering`, ignored.)
        #[serde(default, skip_serializing_if = "Option::is_none")]
        left: Option<String>,
    },
    StopOld {
        instances: Vec<String>,
    },
    OldStopped,
    Prune {
        instances: Vec<String>,
    },
    RemoveNew {
        reason: String,
    },
    /// Intent: all traffic back to the previous slot.
    RouteBack {
        backends: Vec<SocketAddr>,
    },
    /// Done: the previous slot serves everything and the workers that routed elsewhere exited.
    RoutedBack {
        generation: u64,
    },
    Resume {
        reason: String,
    },
    /// Intent: a canary step, `weight_bp` hundredths of a percent to the new slot.
    Shift {
        weight_bp: u32,
        backends: Vec<SocketAddr>,
    },
    Shifted {
        weight_bp: u32,
        generation: u64,
        #[serde(rename = "old_workers")]
        drain: DrainHandle,
    },
    /// One judgement during a canary step.
    Analysis {
        weight_bp: u32,
        verdict: String,
        detail: String,
    },
    /// Waiting for `switchyard promote` after this step.
    Paused {
        weight_bp: u32,
    },
    /// The new version takes all traffic and is judged for `for_ms` (`watch`), the previous
    /// version's replicas in `kept` still running out of the upstream; its checks are
    /// `analysis` steps at 100%.
    Watching {
        for_ms: u64,
        kept: Vec<String>,
    },
    /// Intent of a move (a blue-green flip, a rolling batch, a canary step, a way back):
    /// nginx is to send the stable track to exactly these instances, and the canary track,
    /// if any, to `canary`'s.
    Serve {
        batch: u32,
        instances: Vec<String>,
        backends: Vec<SocketAddr>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        canary: Option<ServedCanary>,
    },
    /// The deployment failed for `cause` and goes back (or stops, `on_failure = "pause"`).
    Failing {
        cause: Cause,
        reason: String,
    },
    /// A rolling deploy is going back to `version`, the one live before it.
    Restore {
        version: String,
        reason: String,
    },
    /// A rolling deploy stopped after a failed batch (`on_failure = "pause"`), left for
    /// `switchyard rollback` or `switchyard deploy` to finish.
    Halted {
        reason: String,
    },
    /// Intent: the service's `hook` runs now.
    Hook {
        hook: HookPoint,
    },
    /// How the hook ended: `summary` (`exit 0`, `timed out after 30s`, `HTTP 500`) and the
    /// tail of what it printed or answered.
    HookRan {
        hook: HookPoint,
        ok: bool,
        summary: String,
        output: String,
    },
}

impl Step {
    pub fn name(&self) -> &'static str {
        match self {
            Step::StartInstance { .. } => "start_instance",
            Step::RestartInstance { .. } => "restart_instance",
            Step::InstanceStarted { .. } => "instance_started",
            Step::WaitHealthy => "wait_healthy",
            Step::Healthy { .. } => "healthy",
            Step::Route { .. } => "route",
            Step::Routed { .. } => "routed",
            Step::Drain => "drain",
            Step::Drained { .. } => "drained",
            Step::StopOld { .. } => "stop_old",
            Step::OldStopped => "old_stopped",
            Step::Prune { .. } => "prune",
            Step::RemoveNew { .. } => "remove_new",
            Step::RouteBack { .. } => "route_back",
            Step::RoutedBack { .. } => "routed_back",
            Step::Resume { .. } => "resume",
            Step::Shift { .. } => "shift",
            Step::Shifted { .. } => "shifted",
            Step::Analysis { .. } => "analysis",
            Step::Paused { .. } => "paused",
            Step::Watching { .. } => "watching",
            Step::Serve { .. } => "serve",
            Step::Restore { .. } => "restore",
            Step::Halted { .. } => "halted",
            Step::Failing { .. } => "failing",
            Step::Hook { .. } => "hook",
            Step::HookRan { .. } => "hook_ran",
        }
    }
}

/// The canary track of a [`Step::Serve`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedCanary {
    pub instances: Vec<String>,
    pub backends: Vec<SocketAddr>,
    pub weight_bp: u32,
}

/// Why a deployment failed, as a type: journaled with [`Step::Failing`], carried by the
/// error, and the `reason` label of `switchyard_rollbacks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The runtime could not ready the version before its first replica started (Docker:
    /// the image could not be pulled, or is missing with `pull = "never"`).
    Prepare,
    /// A replica would not start (or restart).
    Start,
    /// A replica did not pass its health check in time, exited, or stopped being healthy.
    Unhealthy,
    /// nginx refused or never confirmed a route change.
    Nginx,
    /// The judge failed the canary `failure_limit` times.
    Threshold,
    /// The judge had no verdict `inconclusive_limit` times in a row.
    NoData,
    /// `switchyard abort`.
    Aborted,
    /// The process was killed; the next run went back.
    Interrupted,
    /// A `pre_deploy` or `pre_traffic` hook failed.
    Hook,
    /// The post-cutover watch failed the new version after it took all traffic.
    Watch,
}

impl Cause {
    pub const ALL: [Cause; 10] = [
        Cause::Prepare,
        Cause::Start,
        Cause::Unhealthy,
        Cause::Nginx,
        Cause::Threshold,
        Cause::NoData,
        Cause::Aborted,
        Cause::Interrupted,
        Cause::Hook,
        Cause::Watch,
    ];
}

words!(Cause {
    Prepare => "prepare",
    Start => "start",
    Unhealthy => "unhealthy",
    Nginx => "nginx",
    Threshold => "threshold",
    NoData => "no_data",
    Aborted => "aborted",
    Interrupted => "interrupted",
    Hook => "hook",
    Watch => "watch",
});

/// The points of a deploy where a service's hooks run (`[service.hooks]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookPoint {
    /// Before any replica starts; a failure stops the deploy.
    PreDeploy,
    /// After a batch of new replicas is healthy, before it gets traffic; a failure removes it.
    PreTraffic,
    /// After the deploy completed; a failure is reported, the deploy stays done.
    PostDeploy,
    /// After a rollback, explicit or automatic.
    OnRollback,
}

words!(HookPoint {
    PreDeploy => "pre_deploy",
    PreTraffic => "pre_traffic",
    PostDeploy => "post_deploy",
    OnRollback => "on_rollback",
});

/// A failed move: why, typed, and what a person reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub cause: Cause,
    pub message: String,
}

impl Failure {
    pub fn new(cause: Cause, message: impl Into<String>) -> Failure {
        Failure {
            cause,
            message: message.into(),
        }
    }

    /// The same failure, its message prefixed (`batch 2: …`).
    pub fn context(self, prefix: &str) -> Failure {
        Failure {
            message: format!("{prefix}: {}", self.message),
            ..self
        }
    }
}

/// A journal row as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JournalEntry {
    pub seq: i64,
    pub at_ms: i64,
    pub step: Step,
}
