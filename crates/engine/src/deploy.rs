//! The blue-green deploy state machine: [`Deployer::deploy`] and [`Deployer::rollback`].
//!
//! The order is the cutover protocol of DESIGN.md: start the new slot beside the live one,
//! wait until every replica is healthy, swap nginx to it in one validated and confirmed
//! reload, wait for the old workers to exit, and only then stop the old slot, which is kept
//! for rollback. Every step is journaled before it is acted on, so a process killed anywhere
//! leaves a deployment that [`recover`] finishes or rolls back on the next run.

pub mod canary;
mod health;
mod recover;
pub mod rolling;

use std::time::Duration;

use serde::Serialize;

use crate::config::{ServiceSpec, StrategyKind};
use crate::model::*;
use crate::names::{Name, Version};
use crate::seams::*;

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
        message: String,
    },
    /// Docker, nginx or the store could not be reached or misbehaved.
    #[error("{0}")]
    Environment(String),
}

impl DeployError {
    /// 1: failed and rolled back; 2: refused as asked; 3: environment.
    pub fn exit_code(&self) -> i32 {
        match self {
            DeployError::Failed { .. } => 1,
            DeployError::Locked { .. } | DeployError::NoPrevious(_) | DeployError::Refused(_) => 2,
            DeployError::Environment(_) => 3,
        }
    }
}

impl From<StoreError> for DeployError {
    fn from(e: StoreError) -> Self {
        DeployError::Environment(e.to_string())
    }
}

impl From<RuntimeError> for DeployError {
    fn from(e: RuntimeError) -> Self {
        DeployError::Environment(e.to_string())
    }
}

/// What the command that found an interrupted deployment asked for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wanted<'v> {
    Deploy(&'v Version),
    Rollback,
}

/// What the new slot is made of.
enum Target<'s> {
    Fresh(Version),
    /// A retained slot, restarted for rollback.
    Reuse(&'s Slot),
}

impl<R: Runtime, P: Prober, N: Router, S: Store, H: Host> Deployer<'_, R, P, N, S, H> {
    /// Deploys `version` of `spec` blue-green.
    pub async fn deploy(
        &self,
        spec: &ServiceSpec,
        version: &Version,
    ) -> Result<DeployReport, DeployError> {
        self.locked(spec, "deploy", Wanted::Deploy(version), |d| async move {
            d.run(spec, DeployKind::Deploy, Target::Fresh(version.clone()))
                .await
        })
        .await
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
            let kind = match live_strategy {
                Some(StrategyKind::InPlace) => StrategyKind::InPlace,
                _ => spec.strategy,
            };
            if kind.is_rolling() {
                let version = slot.version.clone();
                return d
                    .run_rollout(spec, DeployKind::Rollback, &version, kind)
                    .await;
            }
            d.run(spec, DeployKind::Rollback, Target::Reuse(slot)).await
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
                match recover::resume(self, spec, &record, &journal, wanted).await {
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

    async fn run(
        &self,
        spec: &ServiceSpec,
        kind: DeployKind,
        target: Target<'_>,
    ) -> Result<DeployReport, DeployError> {
        let started = tokio::time::Instant::now();
        let record = self.store.service(&spec.name)?;
        let old = record.active.clone();
        let (version, color) = match &target {
            Target::Fresh(v) => (
                v.clone(),
                old.as_ref().map_or(Color::Blue, |s| s.color.other()),
            ),
            Target::Reuse(slot) => (slot.version.clone(), slot.color),
        };
        let id = self.begin(
            spec,
            kind,
            StrategyKind::BlueGreen,
            old.as_ref(),
            &version,
            color,
        )?;

        let mut new = Vec::new();
        let started_new = match &target {
            Target::Fresh(v) => self.start_fresh(spec, id, v, color, &mut new).await,
            Target::Reuse(slot) => self.restart_retained(spec, id, slot, &mut new).await,
        };
        if let Err(message) = started_new {
            return Err(self.abort(spec, id, &new, old.as_ref(), message).await);
        }

        let healthy_ms = match health::journaled(self, spec, id, &new).await? {
            Ok(ms) => ms,
            Err(message) => return Err(self.abort(spec, id, &new, old.as_ref(), message).await),
        };

        let reload = match self.route(spec, id, &new).await? {
            Ok(reload) => reload,
            Err(message) => return Err(self.abort(spec, id, &new, old.as_ref(), message).await),
        };
        let (drained, warnings) = self.retire(spec, id, &reload, old.as_ref()).await?;
        self.complete(spec, id, "deployed").await?;
        Ok(DeployReport {
            deployment: id,
            service: spec.name.clone(),
            kind,
            from: old.map(|s| s.version),
            to: version,
            color,
            healthy_ms,
            reload,
            drained,
            total_ms: started.elapsed().as_millis() as u64,
            warnings,
            rollout: None,
        })
    }

    async fn start_fresh(
        &self,
        spec: &ServiceSpec,
        id: DeploymentId,
        version: &Version,
        color: Color,
        new: &mut Vec<Instance>,
    ) -> Result<(), String> {
        for replica in 0..spec.replicas {
            let instance_spec = InstanceSpec {
                service: spec.name.clone(),
                version: version.clone(),
                color,
                deployment: id,
                replica,
                source: spec.source_for(version),
                port: spec.port,
                env: spec.env.clone(),
                host_port: None,
            };
            let name = instance_spec.instance_name();
            self.journal(
                id,
                &spec.name,
                Step::StartInstance {
                    replica,
                    name: name.clone(),
                },
            )
            .map_err(|e| e.to_string())?;
            let instance = self
                .runtime
                .start(&instance_spec)
                .await
                .map_err(|e| format!("starting replica {replica}: {e}"))?;
            self.note_started(spec, id, &instance, false)
                .map_err(|e| e.to_string())?;
            new.push(instance);
        }
        Ok(())
    }

    async fn restart_retained(
        &self,
        spec: &ServiceSpec,
        id: DeploymentId,
        slot: &Slot,
        new: &mut Vec<Instance>,
    ) -> Result<(), String> {
        for old in &slot.instances {
            let instance = Instance {
                deployment: id,
                ..old.clone()
            };
            self.journal(
                id,
                &spec.name,
                Step::RestartInstance {
                    instance: instance.clone(),
                },
            )
            .map_err(|e| e.to_string())?;
            let restarted = self
                .runtime
                .restart(&instance)
                .await
                .map_err(|e| format!("restarting {}: {e}", instance.name))?;
            let restarted = Instance {
                deployment: id,
                ..restarted
            };
            self.note_started(spec, id, &restarted, true)
                .map_err(|e| e.to_string())?;
            new.push(restarted);
        }
        Ok(())
    }

    fn note_started(
        &self,
        spec: &ServiceSpec,
        id: DeploymentId,
        instance: &Instance,
        reused: bool,
    ) -> Result<(), DeployError> {
        self.journal(
            id,
            &spec.name,
            Step::InstanceStarted {
                instance: instance.clone(),
            },
        )?;
        self.store.put_instance(instance, InstanceState::Starting)?;
        self.observer.event(&Event::Started {
            instance: instance.name.clone(),
            addr: instance.addr(),
            reused,
        });
        Ok(())
    }

    /// Moves all traffic to `new`. The inner error means nginx refused or never confirmed
    /// the change, and traffic is where it was.
    async fn route(
        &self,
        spec: &ServiceSpec,
        id: DeploymentId,
        new: &[Instance],
    ) -> Result<Result<Reload, String>, DeployError> {
        let set = upstream_set(spec, new);
        self.journal(
            id,
            &spec.name,
            Step::Route {
                backends: set.backends.clone(),
            },
        )?;
        match self.router.apply(&set).await {
            Ok(reload) => {
                self.journal(
                    id,
                    &spec.name,
                    Step::Routed {
                        generation: reload.generation,
                        old_workers: reload.old_workers.clone(),
                    },
                )?;
                self.observer.event(&Event::Reloaded {
                    generation: reload.generation,
                    confirm_ms: reload.confirm_ms,
                });
                Ok(Ok(reload))
            }
            // Every router error leaves the previous config live: the new slot is removed.
            Err(e) => Ok(Err(e.to_string())),
        }
    }

    /// After the flip: wait for the old workers, then stop the old slot and keep it.
    async fn retire(
        &self,
        spec: &ServiceSpec,
        id: DeploymentId,
        reload: &Reload,
        old: Option<&Slot>,
    ) -> Result<(Drained, Vec<String>), DeployError> {
        self.journal(id, &spec.name, Step::Drain)?;
        let drained = self
            .router
            .wait_drained(reload, spec.drain_timeout)
            .await
            .map_err(|e| DeployError::Environment(e.to_string()))?;
        self.journal(
            id,
            &spec.name,
            Step::Drained {
                waited_ms: drained.waited_ms,
                lingering: drained.lingering.clone(),
            },
        )?;
        self.observer.event(&Event::Drained {
            waited_ms: drained.waited_ms,
            lingering: drained.lingering.len(),
        });
        let mut warnings = Vec::new();
        if !drained.lingering.is_empty() {
            warnings.push(format!(
                "old nginx workers {:?} still running after the drain timeout ({:?})",
                drained.lingering, spec.drain_timeout
            ));
        }
        let Some(old) = old.filter(|o| o.deployment != id) else {
            return Ok((drained, warnings));
        };
        let ids = old.instances.iter().map(|i| i.id.clone()).collect();
        self.journal(id, &spec.name, Step::StopOld { instances: ids })?;
        for instance in &old.instances {
            match self.runtime.stop(instance, spec.stop_timeout).await {
                Ok(()) => self.observer.event(&Event::Stopped {
                    instance: instance.name.clone(),
                }),
                Err(e) => warnings.push(format!("stopping {}: {e}", instance.name)),
            }
        }
        self.journal(id, &spec.name, Step::OldStopped)?;
        Ok((drained, warnings))
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

    /// Takes a failed deployment's instances away, before any traffic reached them: fresh
    /// ones are removed, restarted retained ones stopped and kept. Finishes as failed.
    async fn abort(
        &self,
        spec: &ServiceSpec,
        id: DeploymentId,
        new: &[Instance],
        old: Option<&Slot>,
        message: String,
    ) -> DeployError {
        match self.remove_new(spec, id, new, &message).await {
            Ok(()) => {}
            Err(e) => {
                return DeployError::Environment(format!("{message}; cleaning up also failed: {e}"))
            }
        }
        if let Err(e) = self.finish(id, Outcome::Failed, &message) {
            return e;
        }
        DeployError::Failed {
            deployment: id,
            service: spec.name.clone(),
            stays_on: old.map_or("no version (nothing was live)".to_owned(), |s| {
                s.version.to_string()
            }),
            message,
        }
    }

    async fn remove_new(
        &self,
        spec: &ServiceSpec,
        id: DeploymentId,
        new: &[Instance],
        reason: &str,
    ) -> Result<(), DeployError> {
        self.journal(
            id,
            &spec.name,
            Step::RemoveNew {
                reason: reason.to_owned(),
            },
        )?;
        // Instances created but killed before they were journaled carry the deployment label.
        let mut all: Vec<Instance> = new.to_vec();
        for orphan in self.runtime.list(&spec.name).await? {
            if orphan.deployment == id && !all.iter().any(|i| i.id == orphan.id) {
                all.push(orphan);
            }
        }
        for instance in &all {
            if created_by(instance, id) {
                self.runtime.remove(instance).await?;
                self.store.put_instance(instance, InstanceState::Removed)?;
                self.observer.event(&Event::Removed {
                    instance: instance.name.clone(),
                });
            } else {
                self.runtime.stop(instance, spec.stop_timeout).await?;
                // Back into the slot it came from, so a retried rollback finds it whole.
                let origin = Instance {
                    deployment: created_in(instance).unwrap_or(instance.deployment),
                    ..instance.clone()
                };
                self.store.put_instance(&origin, InstanceState::Retained)?;
                self.observer.event(&Event::Stopped {
                    instance: instance.name.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Whether deployment `id` created `instance`, rather than restarting a retained one.
fn created_by(instance: &Instance, id: DeploymentId) -> bool {
    created_in(instance) == Some(id)
}

/// The deployment that created `instance`, from its name (`…-d<id>-r<replica>`).
fn created_in(instance: &Instance) -> Option<DeploymentId> {
    let rest = instance
        .name
        .strip_suffix(&format!("-r{}", instance.replica))?;
    rest.rsplit_once("-d")?.1.parse().ok()
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
