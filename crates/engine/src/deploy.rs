//! The deploy engine: [`Deployer::deploy`], [`Deployer::canary`], [`Deployer::roll`] and
//! [`Deployer::rollback`], one loop for every strategy.
//!
//! Every strategy is a sequence of moves towards a target serve set (which instances nginx
//! routes to, on which track). Blue-green is one move, rolling one move per batch
//! ([`rolling::batches`]), a canary one move per weighted step with a gate after each. One
//! [`rollout::Rollout`] runs them all with one set of operations ([`ops`]): start what the
//! move needs → wait healthy → journal the intended serve set → route → drain → retire what
//! left the set. Every step is journaled before it is acted on, so a process killed anywhere
//! leaves a deployment that [`resume`] re-applies from the journal's [`fold`] and then takes
//! forward or back.

pub mod adopt;
pub mod canary;
pub mod fold;
mod health;
mod hooks;
mod ops;
pub mod remove;
mod resume;
pub mod rolling;
mod rollout;
mod run;
mod watch;

use std::time::Duration;

use serde::Serialize;

use crate::config::{ServiceSpec, StrategyKind};
use crate::model::*;
use crate::names::{Name, Version};
use crate::seams::*;

pub use watch::{refuses_control, watching_until, Unwatched};

/// A lock whose heartbeat is older than this is stale even if its pid seems alive
/// (pid reuse, another host sharing the database).
pub const LOCK_STALE_AFTER: Duration = Duration::from_secs(60);
/// How often a waiting deploy refreshes its lock heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

/// The seams one deploy runs against.
pub struct Deployer<'a, R, P, N, S, H> {
    pub runtime: &'a R,
    pub prober: &'a P,
    pub router: &'a N,
    pub store: &'a S,
    pub host: &'a H,
    /// The service's `[service.hooks]`, run at their points ([`hooks`]).
    pub hooks: &'a dyn Hooks,
    pub observer: &'a dyn Observer,
}

/// What a finished deploy did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeployReport {
    pub deployment: DeploymentId,
    pub service: Name,
    pub kind: DeployKind,
    pub from: Option<Version>,
    pub to: Version,
    pub color: Color,
    pub healthy_ms: u64,
    pub reload: Reload,
    pub drained: Drained,
    pub total_ms: u64,
    /// Non-fatal problems after traffic moved (an old instance that would not stop).
    pub warnings: Vec<String>,
    /// Batches, reloads and peak instances of a rolling or in-place deploy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<rolling::RolloutReport>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeployError {
    /// Another deploy of the service holds the lock.
    #[error("{kind} of {service} refused: another deploy holds the lock (pid {} on {}, deployment #{}, started {}s ago, heartbeat {}s ago)",
        .lock.pid, .lock.host, .lock.deployment.map_or("?".to_owned(), |d| d.to_string()),
        .age_s.0, .age_s.1)]
    Locked {
        kind: &'static str,
        service: Name,
        lock: Box<Lock>,
        age_s: (i64, i64),
    },
    #[error("nothing to roll back to: {0}")]
    NoPrevious(String),
    /// The deploy would break a promise the config did not waive (an in-place gap).
    #[error("refused: {0}")]
    Refused(String),
    /// The deploy failed and traffic stayed on (or went back to) the previous version.
    #[error(
        "deployment #{deployment} of {service} failed, traffic stays on {stays_on}: {message}"
    )]
    Failed {
        deployment: DeploymentId,
        service: Name,
        stays_on: String,
        cause: Cause,
        message: String,
    },
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Docker or the process runtime could not be reached or failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// nginx could not be reached or misbehaved.
    #[error(transparent)]
    Router(#[from] RouterError),
    /// A failure on the way back, with what it left behind and what finishes it.
    #[error("{0}")]
    Environment(String),
}

impl DeployError {
    /// 1: failed and rolled back; 2: refused as asked; 3: environment.
    pub fn exit_code(&self) -> i32 {
        match self {
            DeployError::Failed { .. } => 1,
            DeployError::Locked { .. } | DeployError::NoPrevious(_) | DeployError::Refused(_) => 2,
            DeployError::Store(_)
            | DeployError::Runtime(_)
            | DeployError::Router(_)
            | DeployError::Environment(_) => 3,
        }
    }
}

/// What the command that found an interrupted deployment asked for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wanted<'v> {
    Deploy(&'v Version),
    Rollback,
}

impl<R: Runtime, P: Prober, N: Router, S: Store, H: Host> Deployer<'_, R, P, N, S, H> {
    /// Deploys `version` of `spec` blue-green: one move to all new replicas.
    pub async fn deploy(
        &self,
        spec: &ServiceSpec,
        version: &Version,
    ) -> Result<DeployReport, DeployError> {
        self.roll(spec, version, StrategyKind::BlueGreen).await
    }

    /// Brings the newest retained version back, restarting its stopped instances.
    pub async fn rollback(&self, spec: &ServiceSpec) -> Result<DeployReport, DeployError> {
        self.locked(spec, "rollback", Wanted::Rollback, |d| async move {
            let record = d.store.service(&spec.name)?;
            let Some(slot) = record.retained.first() else {
                return Err(DeployError::NoPrevious(format!(
                    "{} has no retained version (retain = {})",
                    spec.name, spec.retain
                )));
            };
            // Versions deployed in place share host ports: only in-place order can swap them.
            let live_strategy = match &record.active {
                Some(active) => d
                    .store
                    .deployment(active.deployment)?
                    .and_then(|(r, _)| StrategyKind::parse(&r.strategy).ok()),
                None => None,
            };
            let kind = match (live_strategy, spec.strategy) {
                (Some(StrategyKind::InPlace), _) => StrategyKind::InPlace,
                (_, StrategyKind::Canary) => StrategyKind::BlueGreen,
                (_, kind) => kind,
            };
            let version = slot.version.clone();
            d.run_rollout(
                spec,
                DeployKind::Rollback,
                &version,
                kind,
                None::<&Unwatched>,
            )
            .await
        })
        .await
    }

    /// Runs `body` holding the service lock, after finishing any interrupted deployment.
    async fn locked<'d, F, Fut>(
        &'d self,
        spec: &ServiceSpec,
        kind: &'static str,
        wanted: Wanted<'_>,
        body: F,
    ) -> Result<DeployReport, DeployError>
    where
        F: FnOnce(&'d Self) -> Fut,
        Fut: std::future::Future<Output = Result<DeployReport, DeployError>>,
    {
        self.acquire(&spec.name, kind)?;
        let result = match self.store.unfinished(&spec.name) {
            Err(e) => Err(e.into()),
            Ok(Some((record, journal))) => {
                match resume::resume(self, spec, &record, &journal, wanted).await {
                    Ok(None) => body(self).await,
                    // Finishing the interrupted deployment was what the command asked for.
                    Ok(Some(report)) => Ok(report),
                    Err(e) => Err(e),
                }
            }
            Ok(None) => body(self).await,
        };
        self.store.unlock(&spec.name, self.host.pid())?;
        result
    }

    fn acquire(&self, service: &Name, kind: &'static str) -> Result<(), DeployError> {
        let now = self.host.now_ms();
        let mine = Lock {
            service: service.clone(),
            pid: self.host.pid(),
            host: self.host.hostname(),
            deployment: None,
            acquired_ms: now,
            heartbeat_ms: now,
        };
        let held = match self.store.try_lock(&mine, None)? {
            Ok(()) => return Ok(()),
            Err(held) => held,
        };
        let stale = lock_is_stale(&held, self.host, now);
        if stale {
            if let Ok(()) = self.store.try_lock(&mine, Some(&held))? {
                return Ok(());
            }
        }
        let lock = self.store.lock(service)?.unwrap_or(held);
        let age_s = (
            (now - lock.acquired_ms) / 1000,
            (now - lock.heartbeat_ms) / 1000,
        );
        Err(DeployError::Locked {
            kind,
            service: service.clone(),
            lock: Box::new(lock),
            age_s,
        })
    }

    /// Records a new deployment of `spec` (from `old` to `version` in `color`) and says so.
    fn begin(
        &self,
        spec: &ServiceSpec,
        kind: DeployKind,
        strategy: StrategyKind,
        old: Option<&Slot>,
        version: &Version,
        color: Color,
    ) -> Result<DeploymentId, DeployError> {
        let host = self.host;
        let id = self.store.begin(&NewDeployment {
            service: spec.name.clone(),
            kind,
            strategy: strategy.as_str().into(),
            from_version: old.map(|s| s.version.clone()),
            to_version: version.clone(),
            color,
            who: format!("{}@{} (pid {})", host.user(), host.hostname(), host.pid()),
            started_ms: host.now_ms(),
        })?;
        self.observer.event(&Event::Begin {
            deployment: id,
            service: spec.name.to_string(),
            from: old.map(|s| s.version.to_string()),
            to: version.to_string(),
            color,
        });
        Ok(id)
    }

    /// Journals `step` (before acting on it) and refreshes the lock heartbeat.
    fn journal(&self, id: DeploymentId, service: &Name, step: Step) -> Result<(), DeployError> {
        let now = self.host.now_ms();
        self.store.journal(id, now, &step)?;
        self.store.heartbeat(service, self.host.pid(), now)?;
        Ok(())
    }

    /// Records the new slot as active, prunes retained slots beyond `retain`, finishes.
    async fn complete(
        &self,
        spec: &ServiceSpec,
        id: DeploymentId,
        message: &str,
    ) -> Result<(), DeployError> {
        self.store.activate(&spec.name, id)?;
        let record = self.store.service(&spec.name)?;
        for slot in prunable(&record, spec.retain) {
            let ids = slot.instances.iter().map(|i| i.id.clone()).collect();
            self.journal(id, &spec.name, Step::Prune { instances: ids })?;
            for instance in &slot.instances {
                self.runtime.remove(instance).await?;
                self.store
                    .set_instance_state(&instance.id, InstanceState::Removed)?;
                self.observer.event(&Event::Removed {
                    instance: instance.name.clone(),
                });
            }
        }
        self.finish(id, Outcome::Succeeded, message)
    }

    /// Records how deployment `id` ended and says so.
    fn finish(&self, id: DeploymentId, outcome: Outcome, message: &str) -> Result<(), DeployError> {
        self.store
            .finish(id, self.host.now_ms(), outcome, message)?;
        self.observer.event(&Event::Done {
            deployment: id,
            outcome,
            message: message.to_owned(),
        });
        Ok(())
    }
}

/// Retained slots to remove: beyond `retain` distinct versions, and any copy of the active
/// version (redeploying v2 must not push v1, the real rollback target, out).
fn prunable(record: &ServiceRecord, retain: usize) -> Vec<&Slot> {
    let active = record.active.as_ref().map(|s| &s.version);
    let mut kept: Vec<&Version> = Vec::new();
    let mut prune = Vec::new();
    for slot in &record.retained {
        if Some(&slot.version) == active || kept.contains(&&slot.version) || kept.len() >= retain {
            prune.push(slot);
        } else {
            kept.push(&slot.version);
        }
    }
    prune
}

/// A lock is stale when its holder is gone: on this host, a dead pid (a live one is trusted
/// however old its heartbeat, since a slow drain must not lose its lock); from another host
/// sharing the database, a heartbeat older than [`LOCK_STALE_AFTER`].
pub fn lock_is_stale(lock: &Lock, host: &impl Host, now_ms: i64) -> bool {
    if lock.host == host.hostname() {
        !host.process_alive(lock.pid)
    } else {
        now_ms - lock.heartbeat_ms > LOCK_STALE_AFTER.as_millis() as i64
    }
}

pub fn upstream_set(spec: &ServiceSpec, instances: &[Instance]) -> UpstreamSet {
    UpstreamSet {
        service: spec.name.clone(),
        listen: spec.listen,
        backends: instances.iter().map(Instance::addr).collect(),
        canary: None,
    }
}

#[cfg(test)]
mod tests;
