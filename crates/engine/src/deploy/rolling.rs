//! Rolling and in-place deploys: [`Deployer::roll`], and rollbacks of rolling services.
//!
//! A [`Rollout`] moves the instances nginx serves towards one target version in batches
//! planned by [`batches::next`]. Each batch starts its new replicas (restarting retained
//! ones of the target version where they exist) and waits until they are healthy; then one
//! validated, confirmed reload adds them and takes old replicas out; then the old workers
//! drain and only then are the removed replicas stopped. In-place starts each replacement
//! on the port its predecessor freed. The same loop restores the previous version after a
//! failed batch, rolls a rolling service back, and finishes an interrupted rollout, so every
//! one of those respects the same surge and unavailability bounds.
//!
//! Store: the old slot stays `active` and the new replicas `starting` until the last batch;
//! then one `activate` flips them. Until then the journal's `serve` steps say what nginx
//! serves, which is what [`resume`] starts from.

pub mod batches;
mod resume;

use serde::Serialize;
use tokio::time::Instant;

pub(super) use resume::resume;

use super::{created_by, created_in, health, DeployError, DeployReport, Deployer};
use crate::config::{OnFailure, RollingSpec, ServiceSpec, StrategyKind};
use crate::model::*;
use crate::names::Version;
use crate::seams::*;
use batches::{Batch, Counts, Limits};

/// What a rollout did, beside the common [`DeployReport`] fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RolloutReport {
    pub strategy: String,
    pub max_surge: u16,
    pub max_unavailable: u16,
    pub batches: Vec<BatchReport>,
    /// Confirmed nginx reloads.
    pub reloads: u32,
    /// The most instances of the service running at once.
    pub peak_running: usize,
    /// In-place with no replica left in the upstream: from stopping the last old replica
    /// until its replacement was healthy and routed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gap_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BatchReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub healthy_ms: u64,
    /// The reload's confirmation time; `None` when the batch needed no reload.
    pub confirm_ms: Option<u64>,
    pub drained_ms: u64,
}

/// Why a rollout stopped.
pub(super) enum Halt {
    /// A batch failed before its replicas got traffic (start, health, nginx refused).
    Batch(String),
    Env(DeployError),
}

impl From<DeployError> for Halt {
    fn from(e: DeployError) -> Self {
        Halt::Env(e)
    }
}

impl From<StoreError> for Halt {
    fn from(e: StoreError) -> Self {
        Halt::Env(e.into())
    }
}

impl From<RuntimeError> for Halt {
    fn from(e: RuntimeError) -> Self {
        Halt::Env(e.into())
    }
}

/// A rollout of one deployment towards `target`.
pub(super) struct Rollout<'r> {
    spec: &'r ServiceSpec,
    id: DeploymentId,
    pub(super) kind: StrategyKind,
    limits: RollingSpec,
    target: Version,
    color: Color,
    /// Stopped instances of `target` to restart rather than start fresh (a rollback).
    reuse: Vec<Instance>,
    /// Whether the target is this deployment's own instances (a deploy or rollback: restarted
    /// ones join it) or the version that was live (a restore: restarted ones stay in their
    /// slot, and any replica of that version counts).
    own: bool,
    /// Host ports by replica, which in-place replacements take over.
    ports: Vec<(u16, u16)>,
    /// What nginx sends traffic to now.
    pub(super) serving: Vec<Instance>,
    pub(super) report: RolloutReport,
    /// Instances that never count as on the target: a restore's target is the old slot,
    /// not replicas of the same version this deployment started before it failed.
    exclude: Vec<String>,
    /// Old replicas that would not stop (after they left the upstream): not fatal.
    warnings: std::cell::RefCell<Vec<String>>,
    last_reload: Option<Reload>,
    gap_from: Option<Instant>,
}

impl<'r> Rollout<'r> {
    pub(super) fn new(
        spec: &'r ServiceSpec,
        id: DeploymentId,
        kind: StrategyKind,
        serving: Vec<Instance>,
    ) -> Rollout<'r> {
        let limits = spec.rolling.for_kind(kind);
        let ports = serving.iter().map(|i| (i.replica, i.host_port)).collect();
        Rollout {
            spec,
            id,
            kind,
            limits,
            target: Version::parse("v0").expect("literal version"),
            color: Color::Blue,
            reuse: Vec::new(),
            own: true,
            ports,
            serving,
            report: RolloutReport {
                strategy: kind.as_str().to_owned(),
                max_surge: limits.max_surge,
                max_unavailable: limits.max_unavailable,
                ..RolloutReport::default()
            },
            exclude: Vec::new(),
            warnings: Default::default(),
            last_reload: None,
            gap_from: None,
        }
    }

    /// Remembers the host port of each replica, for in-place replacements.
    pub(super) fn remember_ports(&mut self, instances: &[Instance]) {
        for i in instances {
            if !self.ports.iter().any(|(r, _)| *r == i.replica) {
                self.ports.push((i.replica, i.host_port));
            }
        }
    }

    /// Aims the rollout at `version`, restarting `reuse` where they fit.
    pub(super) fn towards(
        &mut self,
        version: &Version,
        color: Color,
        reuse: Vec<Instance>,
        own: bool,
    ) {
        self.remember_ports(&reuse);
        self.target = version.clone();
        self.color = color;
        self.reuse = reuse;
        self.own = own;
    }

    fn limits(&self) -> Limits {
        Limits {
            replicas: self.spec.replicas,
            max_surge: self.limits.max_surge,
            max_unavailable: self.limits.max_unavailable,
        }
    }

    /// Serving instances already on the target (one per replica) and those to replace.
    fn split(&self) -> (Vec<Instance>, Vec<Instance>) {
        let mut fresh: Vec<Instance> = Vec::new();
        let mut stale = Vec::new();
        for i in &self.serving {
            let target = if self.own {
                i.deployment == self.id
            } else {
                i.version == self.target
            };
            let keep = target
                && !self.exclude.contains(&i.id)
                && i.replica < self.spec.replicas
                && !fresh.iter().any(|f| f.replica == i.replica);
            if keep {
                fresh.push(i.clone());
            } else {
                stale.push(i.clone());
            }
        }
        (fresh, stale)
    }

    /// Whether the plan from here takes every replica out of the upstream at some point.
    pub(super) fn has_gap(&self) -> bool {
        let (fresh, stale) = self.split();
        fresh.is_empty() && batches::has_gap(self.limits(), stale.len() as u16)
    }

    /// Runs batches until every replica nginx serves is on the target version.
    pub(super) async fn converge<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
        &mut self,
        d: &Deployer<'_, R, P, N, S, H>,
    ) -> Result<(), Halt> {
        loop {
            let (fresh, stale) = self.split();
            let now = Counts {
                fresh: fresh.len() as u16,
                stale: stale.len() as u16,
            };
            let Some(batch) = batches::next(self.limits(), now) else {
                return Ok(());
            };
            self.batch(d, batch, &fresh, stale).await?;
        }
    }

    async fn batch<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
        &mut self,
        d: &Deployer<'_, R, P, N, S, H>,
        batch: Batch,
        fresh: &[Instance],
        mut stale: Vec<Instance>,
    ) -> Result<(), Halt> {
        let number = self.report.batches.len() as u32 + 1;
        let fail = |m: String| Halt::Batch(format!("batch {number}: {m}"));
        // Replicas with no old instance in the upstream first: in-place, their ports are free.
        let mut missing: Vec<u16> = (0..self.spec.replicas)
            .filter(|r| !fresh.iter().any(|f| f.replica == *r))
            .collect();
        missing.sort_by_key(|r| stale.iter().any(|s| s.replica == *r));
        let mut added = Vec::new();
        for &replica in &missing[..usize::from(batch.add)] {
            match self.start_replica(d, replica).await {
                Ok(instance) => added.push(instance),
                Err(Halt::Batch(m)) => {
                    self.discard(d, &added).await?;
                    return Err(fail(m));
                }
                Err(e) => return Err(e),
            }
        }
        let running = self.serving.len() + added.len();
        self.report.peak_running = self.report.peak_running.max(running);
        let mut healthy_ms = 0;
        if !added.is_empty() {
            d.journal(self.id, &self.spec.name, Step::WaitHealthy)?;
            healthy_ms = match health::wait_healthy(d, self.spec, &added).await {
                Ok(ms) => ms,
                Err(m) => {
                    self.discard(d, &added).await?;
                    return Err(fail(m));
                }
            };
            d.journal(
                self.id,
                &self.spec.name,
                Step::Healthy {
                    waited_ms: healthy_ms,
                },
            )?;
            d.observer.event(&Event::Healthy {
                waited_ms: healthy_ms,
            });
        }
        // Old replicas paired with a new one go first, then by replica.
        stale.sort_by_key(|s| (!added.iter().any(|a| a.replica == s.replica), s.replica));
        let removed: Vec<Instance> = stale.drain(..usize::from(batch.remove)).collect();
        let mut next: Vec<Instance> = self
            .serving
            .iter()
            .filter(|i| !removed.iter().any(|r| r.id == i.id))
            .cloned()
            .collect();
        next.extend(added.iter().cloned());
        next.sort_by_key(|i| (i.replica, i.version != self.target));
        let reload = match self.route(d, number, &next).await? {
            Ok(reload) => reload,
            Err(m) => {
                self.discard(d, &added).await?;
                return Err(fail(m));
            }
        };
        self.serving = next;
        let mut report = BatchReport {
            added: added.iter().map(|i| i.name.clone()).collect(),
            removed: removed.iter().map(|i| i.name.clone()).collect(),
            healthy_ms,
            confirm_ms: reload.as_ref().map(|r| r.confirm_ms),
            drained_ms: 0,
        };
        if let Some(reload) = &reload {
            self.last_reload = Some(reload.clone());
            if let Some(from) = self.gap_from.take() {
                self.report.gap_ms = Some(from.elapsed().as_millis() as u64);
            }
            report.drained_ms = self.drain(d, reload).await?;
        } else if self.serving.is_empty() && !removed.is_empty() {
            // Nothing left to route to: nginx keeps the old address, which the
            // replacement takes over. Requests fail until it answers.
            self.gap_from = Some(Instant::now());
        }
        self.retire(d, &removed).await?;
        self.report.batches.push(report);
        Ok(())
    }

    async fn start_replica<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
        &self,
        d: &Deployer<'_, R, P, N, S, H>,
        replica: u16,
    ) -> Result<Instance, Halt> {
        let (id, service) = (self.id, &self.spec.name);
        if let Some(old) = self.reuse.iter().find(|i| i.replica == replica) {
            let instance = if self.own {
                Instance {
                    deployment: id,
                    ..old.clone()
                }
            } else {
                old.clone()
            };
            d.journal(
                id,
                service,
                Step::RestartInstance {
                    instance: instance.clone(),
                },
            )?;
            let restarted = d
                .runtime
                .restart(&instance)
                .await
                .map_err(|e| Halt::Batch(format!("restarting {}: {e}", instance.name)))?;
            let restarted = Instance {
                deployment: instance.deployment,
                ..restarted
            };
            if self.own {
                d.note_started(self.spec, id, &restarted, true)?;
            } else {
                d.observer.event(&Event::Started {
                    instance: restarted.name.clone(),
                    addr: restarted.addr(),
                    reused: true,
                });
            }
            return Ok(restarted);
        }
        let host_port = match self.kind {
            StrategyKind::InPlace => self
                .ports
                .iter()
                .find(|(r, _)| *r == replica)
                .map(|(_, p)| *p),
            _ => None,
        };
        let spec = InstanceSpec {
            service: service.clone(),
            version: self.target.clone(),
            color: self.color,
            deployment: id,
            replica,
            source: self.spec.source_for(&self.target),
            port: self.spec.port,
            env: self.spec.env.clone(),
            host_port,
        };
        let name = spec.instance_name();
        d.journal(
            id,
            service,
            Step::StartInstance {
                replica,
                name: name.clone(),
            },
        )?;
        let instance = d
            .runtime
            .start(&spec)
            .await
            .map_err(|e| Halt::Batch(format!("starting {name}: {e}")))?;
        d.note_started(self.spec, id, &instance, false)?;
        Ok(instance)
    }

    /// One confirmed reload to `next`; `Ok(None)` when `next` is empty (in-place gap).
    /// The inner error means nginx refused or never confirmed it: traffic is unchanged.
    pub(super) async fn route<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
        &mut self,
        d: &Deployer<'_, R, P, N, S, H>,
        batch: u32,
        next: &[Instance],
    ) -> Result<Result<Option<Reload>, String>, DeployError> {
        if next.is_empty() {
            return Ok(Ok(None));
        }
        let set = super::upstream_set(self.spec, next);
        d.journal(
            self.id,
            &self.spec.name,
            Step::Serve {
                batch,
                instances: next.iter().map(|i| i.id.clone()).collect(),
                backends: set.backends.clone(),
            },
        )?;
        let reload = match d.router.apply(&set).await {
            Ok(reload) => reload,
            Err(e) => return Ok(Err(e.to_string())),
        };
        d.journal(
            self.id,
            &self.spec.name,
            Step::Routed {
                generation: reload.generation,
                old_workers: reload.old_workers.clone(),
            },
        )?;
        d.observer.event(&Event::Reloaded {
            generation: reload.generation,
            confirm_ms: reload.confirm_ms,
        });
        self.report.reloads += 1;
        Ok(Ok(Some(reload)))
    }

    /// Waits for the workers of the previous config to exit.
    pub(super) async fn drain<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
        &self,
        d: &Deployer<'_, R, P, N, S, H>,
        reload: &Reload,
    ) -> Result<u64, DeployError> {
        d.journal(self.id, &self.spec.name, Step::Drain)?;
        let drained = d
            .router
            .wait_drained(reload, self.spec.drain_timeout)
            .await
            .map_err(|e| DeployError::Environment(e.to_string()))?;
        d.journal(
            self.id,
            &self.spec.name,
            Step::Drained {
                waited_ms: drained.waited_ms,
                lingering: drained.lingering.clone(),
            },
        )?;
        d.observer.event(&Event::Drained {
            waited_ms: drained.waited_ms,
            lingering: drained.lingering.len(),
        });
        Ok(drained.waited_ms)
    }

    /// Stops replicas nginx no longer sends traffic to. Ones this deployment created are
    /// removed; ones it restarted go back to their slot, stopped; the rest (the version
    /// being replaced) are stopped and kept until `activate` retains them.
    pub(super) async fn retire<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
        &self,
        d: &Deployer<'_, R, P, N, S, H>,
        instances: &[Instance],
    ) -> Result<(), DeployError> {
        if instances.is_empty() {
            return Ok(());
        }
        let ids = instances.iter().map(|i| i.id.clone()).collect();
        d.journal(self.id, &self.spec.name, Step::StopOld { instances: ids })?;
        for instance in instances {
            self.take_away(d, instance).await?;
        }
        d.journal(self.id, &self.spec.name, Step::OldStopped)?;
        Ok(())
    }

    /// Removes an instance this deployment created; stops any other, and one it restarted
    /// goes back to its own slot as retained.
    async fn take_away<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
        &self,
        d: &Deployer<'_, R, P, N, S, H>,
        instance: &Instance,
    ) -> Result<(), DeployError> {
        if created_by(instance, self.id) {
            d.runtime.remove(instance).await?;
            d.store.put_instance(instance, InstanceState::Removed)?;
            d.observer.event(&Event::Removed {
                instance: instance.name.clone(),
            });
            return Ok(());
        }
        let stopped = d.runtime.stop(instance, self.spec.stop_timeout).await;
        if instance.deployment == self.id {
            let origin = Instance {
                deployment: created_in(instance).unwrap_or(instance.deployment),
                ..instance.clone()
            };
            d.store.put_instance(&origin, InstanceState::Retained)?;
        }
        match stopped {
            Ok(()) => d.observer.event(&Event::Stopped {
                instance: instance.name.clone(),
            }),
            // Out of the upstream and drained already: a replica that will not stop is a
            // warning, not a reason to leave the deployment unfinished.
            Err(e) => self
                .warnings
                .borrow_mut()
                .push(format!("stopping {}: {e}", instance.name)),
        }
        Ok(())
    }

    /// Takes away replicas of a failed batch, which never got traffic, and any instance of
    /// this deployment the runtime has that nginx does not serve (killed before journaled).
    pub(super) async fn discard<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
        &self,
        d: &Deployer<'_, R, P, N, S, H>,
        added: &[Instance],
    ) -> Result<(), DeployError> {
        let mut gone: Vec<Instance> = added.to_vec();
        for orphan in d.runtime.list(&self.spec.name).await? {
            let serving = self.serving.iter().any(|s| s.id == orphan.id);
            if created_by(&orphan, self.id) && !serving && !gone.iter().any(|g| g.id == orphan.id) {
                gone.push(orphan);
            }
        }
        if gone.is_empty() {
            return Ok(());
        }
        d.journal(
            self.id,
            &self.spec.name,
            Step::RemoveNew {
                reason: "not in the upstream".into(),
            },
        )?;
        // Without `retire`'s journal pair: these never served.
        for instance in &gone {
            self.take_away(d, instance).await?;
        }
        Ok(())
    }

    /// "v1 on 2 replicas, v2 on 2".
    pub(super) fn describe_serving(&self) -> String {
        let mut versions: Vec<(String, usize)> = Vec::new();
        for i in &self.serving {
            match versions.iter_mut().find(|(v, _)| v == i.version.as_str()) {
                Some((_, n)) => *n += 1,
                None => versions.push((i.version.to_string(), 1)),
            }
        }
        if versions.is_empty() {
            return "no replica".into();
        }
        versions
            .iter()
            .map(|(v, n)| format!("{v} on {n} replica{}", if *n == 1 { "" } else { "s" }))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl<R: Runtime, P: Prober, N: Router, S: Store, H: Host> Deployer<'_, R, P, N, S, H> {
    /// Deploys `version` of `spec` by replacing replicas in batches; `kind` is
    /// [`StrategyKind::Rolling`] or [`StrategyKind::InPlace`].
    pub async fn roll(
        &self,
        spec: &ServiceSpec,
        version: &Version,
        kind: StrategyKind,
    ) -> Result<DeployReport, DeployError> {
        self.locked(
            spec,
            "deploy",
            super::Wanted::Deploy(version),
            |d| async move { d.run_rollout(spec, DeployKind::Deploy, version, kind).await },
        )
        .await
    }

    /// `rollback` of a rolling or in-place service: the newest retained version comes back
    /// in batches, its stopped instances restarted.
    pub(super) async fn run_rollout(
        &self,
        spec: &ServiceSpec,
        kind: DeployKind,
        version: &Version,
        strategy: StrategyKind,
    ) -> Result<DeployReport, DeployError> {
        let started = Instant::now();
        let record = self.store.service(&spec.name)?;
        let old = record.active.clone();
        let (color, reuse) = match kind {
            DeployKind::Deploy => (
                old.as_ref().map_or(Color::Blue, |s| s.color.other()),
                vec![],
            ),
            DeployKind::Rollback => {
                let slot = record
                    .retained
                    .iter()
                    .find(|s| &s.version == version)
                    .ok_or_else(|| DeployError::NoPrevious(format!("{version} is not retained")))?;
                (slot.color, slot.instances.clone())
            }
        };
        // What the store calls active and the runtime still runs (nginx routes to these).
        let mut serving = Vec::new();
        for i in old.iter().flat_map(|s| &s.instances) {
            if matches!(
                self.runtime.status(i).await?,
                InstanceStatus::Running { .. }
            ) {
                serving.push(i.clone());
            }
        }
        let mut probe = Rollout::new(spec, 0, strategy, serving.clone());
        probe.towards(version, color, reuse.clone(), true);
        if probe.has_gap() && !spec.rolling.allow_downtime {
            return Err(DeployError::Refused(format!(
                "{} with {} replica(s), max_surge {} and max_unavailable {} would take every replica out of the upstream at once, so requests would fail for the gap; set allow_downtime = true in [service.rolling] to accept that, or use rolling with max_surge >= 1",
                strategy.as_str(),
                spec.replicas,
                probe.limits.max_surge,
                probe.limits.max_unavailable
            )));
        }
        let id = self.begin(spec, kind, strategy, old.as_ref(), version, color)?;
        let mut rollout = Rollout::new(spec, id, strategy, serving);
        rollout.towards(version, color, reuse, true);
        let halted = match rollout.converge(self).await {
            Ok(()) => None,
            Err(Halt::Env(e)) => return Err(e),
            Err(Halt::Batch(m)) => Some(m),
        };
        if let Some(message) = halted {
            return Err(self
                .after_failed_batch(spec, id, rollout, old, message)
                .await);
        }
        let batches = rollout.report.batches.len();
        self.complete(spec, id, &format!("deployed in {batches} batch(es)"))
            .await?;
        Ok(rollout_report(
            spec,
            id,
            kind,
            old.map(|s| s.version),
            version,
            color,
            rollout,
            started,
        ))
    }

    /// After a failed batch: restore the previous version, or leave the service as it is.
    pub(super) async fn after_failed_batch(
        &self,
        spec: &ServiceSpec,
        id: DeploymentId,
        mut rollout: Rollout<'_>,
        old: Option<Slot>,
        message: String,
    ) -> DeployError {
        if spec.rolling.on_failure == OnFailure::Pause && old.is_some() {
            let reason = format!(
                "{message}; paused with {} (on_failure = \"pause\"): run `switchyard rollback {}` to restore the previous version or `switchyard deploy {}` to finish",
                rollout.describe_serving(),
                spec.name,
                spec.name
            );
            if let Err(e) = self.journal(
                id,
                &spec.name,
                Step::Halted {
                    reason: reason.clone(),
                },
            ) {
                return e;
            }
            return DeployError::Failed {
                deployment: id,
                service: spec.name.clone(),
                stays_on: rollout.describe_serving(),
                message: reason,
            };
        }
        match restore(self, spec, &mut rollout, old.as_ref(), &message).await {
            Ok(stays_on) => DeployError::Failed {
                deployment: id,
                service: spec.name.clone(),
                stays_on,
                message: format!("{message}; the replaced replicas were restored"),
            },
            Err(e) => e,
        }
    }
}

/// Brings the upstream back to `old` in batches and finishes the deployment as failed.
/// Returns what traffic stays on.
pub(super) async fn restore<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
    d: &Deployer<'_, R, P, N, S, H>,
    spec: &ServiceSpec,
    rollout: &mut Rollout<'_>,
    old: Option<&Slot>,
    message: &str,
) -> Result<String, DeployError> {
    let id = rollout.id;
    let stays_on = match old {
        Some(old) => {
            d.journal(
                id,
                &spec.name,
                Step::Restore {
                    version: old.version.to_string(),
                    reason: message.to_owned(),
                },
            )?;
            rollout.exclude = rollout
                .serving
                .iter()
                .filter(|i| created_by(i, id))
                .map(|i| i.id.clone())
                .collect();
            rollout.towards(&old.version, old.color, old.instances.clone(), false);
            match rollout.converge(d).await {
                Ok(()) => {}
                Err(Halt::Env(e)) => return Err(e),
                Err(Halt::Batch(m)) => {
                    return Err(DeployError::Environment(format!(
                        "{message}; restoring {} failed too: {m}; deployment #{id} stays unfinished and the next deploy or rollback of {} resumes it",
                        old.version, spec.name
                    )))
                }
            }
            // Replicas the old slot lacked were started fresh: they join it.
            for i in rollout.serving.iter().filter(|i| i.deployment == id) {
                let joined = Instance {
                    deployment: old.deployment,
                    ..i.clone()
                };
                d.store.put_instance(&joined, InstanceState::Active)?;
            }
            // Old replicas the restore did not bring back (beyond `replicas` now) go, so the
            // store's active slot is exactly what nginx serves.
            for i in old
                .instances
                .iter()
                .filter(|i| !rollout.serving.iter().any(|s| s.id == i.id))
            {
                // Retired (and drained) by the converge already; a stuck one is not fatal.
                if let Err(e) = d.runtime.remove(i).await {
                    rollout
                        .warnings
                        .borrow_mut()
                        .push(format!("removing {}: {e}", i.name));
                }
                d.store.put_instance(i, InstanceState::Removed)?;
            }
            old.version.to_string()
        }
        // Nothing to go back to. What already serves stays: tearing it down would leave
        // nginx with nothing.
        None if !rollout.serving.is_empty() => {
            d.store.activate(&spec.name, id)?;
            format!(
                "{} (nothing was live before, so what already served stays)",
                rollout.describe_serving()
            )
        }
        None => "no version (nothing was live)".to_owned(),
    };
    rollout.discard(d, &[]).await?;
    d.store
        .finish(id, d.host.now_ms(), Outcome::Failed, message)?;
    d.observer.event(&Event::Done {
        deployment: id,
        outcome: Outcome::Failed,
        message: message.to_owned(),
    });
    Ok(stays_on)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn rollout_report(
    spec: &ServiceSpec,
    id: DeploymentId,
    kind: DeployKind,
    from: Option<Version>,
    to: &Version,
    color: Color,
    rollout: Rollout<'_>,
    started: Instant,
) -> DeployReport {
    let r = rollout.report;
    DeployReport {
        deployment: id,
        service: spec.name.clone(),
        kind,
        from,
        to: to.clone(),
        color,
        healthy_ms: r.batches.iter().map(|b| b.healthy_ms).sum(),
        reload: rollout.last_reload.unwrap_or(Reload {
            generation: 0,
            old_workers: vec![],
            confirm_ms: 0,
        }),
        drained: Drained {
            waited_ms: r.batches.iter().map(|b| b.drained_ms).sum(),
            lingering: vec![],
        },
        total_ms: started.elapsed().as_millis() as u64,
        warnings: rollout.warnings.into_inner(),
        rollout: Some(r),
    }
}
