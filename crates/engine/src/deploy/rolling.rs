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
mod run;
mod steps;

use serde::Serialize;
use tokio::time::Instant;

pub(super) use resume::resume;

use super::{health, DeployError, Deployer};
use crate::config::{RollingSpec, ServiceSpec, StrategyKind};
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

    /// Starts `count` replicas of the target and waits until they are healthy; on failure
    /// they are taken away again. Returns them and the wait.
    async fn add_healthy<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
        &mut self,
        d: &Deployer<'_, R, P, N, S, H>,
        count: u16,
        fresh: &[Instance],
        stale: &[Instance],
    ) -> Result<(Vec<Instance>, u64), Halt> {
        // Replicas with no old instance in the upstream first: in-place, their ports are free.
        let mut missing: Vec<u16> = (0..self.spec.replicas)
            .filter(|r| !fresh.iter().any(|f| f.replica == *r))
            .collect();
        missing.sort_by_key(|r| stale.iter().any(|s| s.replica == *r));
        let mut added = Vec::new();
        for &replica in &missing[..usize::from(count)] {
            match self.start_replica(d, replica).await {
                Ok(instance) => added.push(instance),
                Err(e) => {
                    self.discard(d, &added).await?;
                    return Err(e);
                }
            }
        }
        let running = self.serving.len() + added.len();
        self.report.peak_running = self.report.peak_running.max(running);
        if added.is_empty() {
            return Ok((added, 0));
        }
        match health::journaled(d, self.spec, self.id, &added).await? {
            Ok(healthy_ms) => Ok((added, healthy_ms)),
            Err(m) => {
                self.discard(d, &added).await?;
                Err(Halt::Batch(m))
            }
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
        let (added, healthy_ms) = match self.add_healthy(d, batch.add, fresh, &stale).await {
            Ok(added) => added,
            Err(Halt::Batch(m)) => return Err(fail(m)),
            Err(e) => return Err(e),
        };
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
