//! The one loop every strategy runs: a [`Rollout`] moves the serve set of one deployment
//! towards a target version.
//!
//! Each move starts the replicas it needs (restarting retained ones of the target where they
//! exist, all of one move concurrently; before the first fresh one the runtime is readied
//! for the target, once: Docker pulls its image) and waits until they are healthy; then one
//! journaled, validated, confirmed route change adds them and takes old replicas out; then
//! the old workers drain, and only then are the removed replicas stopped.
//! [`Rollout::converge`] takes its moves from the batch planner ([`batches::next`]):
//! blue-green is the one batch that surges by `replicas`, rolling and in-place are bounded
//! by `max_surge` and `max_unavailable`. A canary ([`super::canary`]) adds a second track to
//! the same serve set and moves its weight between gates. The same loop restores the previous
//! version after a failed move, rolls back, and finishes an interrupted rollout, so all of
//! them respect the same bounds.
//!
//! Store: the old slot stays `active` and the new replicas `starting` until the last move;
//! then one `activate` flips them. Until then the journal's `serve` steps say what nginx
//! serves, which is what [`super::resume`] starts from.

use std::cell::RefCell;

use futures_util::stream::{self, StreamExt};
use tokio::time::Instant;

use super::rolling::batches::{self, Batch, Counts, Limits};
use super::rolling::{BatchReport, RolloutReport};
use super::{health, DeployError, Deployer};
use crate::config::{RollingSpec, ServiceSpec, StrategyKind};
use crate::model::*;
use crate::names::Version;
use crate::seams::*;

/// How many replicas of one move start (or stop) at once.
pub(super) const PARALLEL: usize = 4;

/// Why a rollout stopped.
#[derive(Debug)]
pub(super) enum Halt {
    /// A move failed before its replicas got traffic (start, health, nginx refused), or a
    /// gate failed the canary.
    Move(Failure),
    Env(DeployError),
}

impl From<DeployError> for Halt {
    fn from(e: DeployError) -> Self {
        Halt::Env(e)
    }
}

/// The canary track beside the stable one.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct CanaryTrack {
    pub instances: Vec<Instance>,
    pub weight_bp: u32,
}

/// A rollout of one deployment towards `target`.
pub(super) struct Rollout<'r> {
    pub(super) spec: &'r ServiceSpec,
    pub(super) id: DeploymentId,
    pub(super) kind: StrategyKind,
    limits: RollingSpec,
    pub(super) target: Version,
    pub(super) color: Color,
    /// Stopped instances of `target` to restart rather than start fresh (a rollback).
    pub(super) reuse: Vec<Instance>,
    /// Whether the target is this deployment's own instances (a deploy or rollback: restarted
    /// ones join it) or the version that was live (a restore: restarted ones stay in their
    /// slot, and any replica of that version counts).
    pub(super) own: bool,
    /// Host ports by replica, which in-place replacements take over.
    ports: Vec<(u16, u16)>,
    /// What nginx sends the stable track to now.
    pub(super) serving: Vec<Instance>,
    /// What nginx sends the canary track to now, if anything.
    pub(super) canary: Option<CanaryTrack>,
    pub(super) report: RolloutReport,
    /// Instances that never count as on the target: a restore's target is the old slot,
    /// not replicas of the same version this deployment started before it failed.
    pub(super) exclude: Vec<String>,
    /// Old replicas that would not stop (after they left the upstream): not fatal.
    pub(super) warnings: RefCell<Vec<String>>,
    pub(super) last_reload: Option<Reload>,
    gap_from: Option<Instant>,
    /// The version the runtime was readied for ([`Runtime::prepare`]), once per target.
    pub(super) prepared: Option<Version>,
    /// The version live before this deployment, for its hooks.
    pub(super) previous: Option<Version>,
    /// Whether each batch of new replicas runs the `pre_traffic` hook before it gets
    /// traffic: a deploy's, never a rollback's or a restore's.
    pub(super) smoke: bool,
    /// Whether replicas that leave the upstream are kept running (in `kept`) rather than
    /// stopped: a blue-green flip or a canary's promotion under a post-cutover watch.
    pub(super) keep_old: bool,
    /// The previous version's replicas drained out of the upstream and still running, for
    /// the watch to route back to at once.
    pub(super) kept: Vec<Instance>,
}

impl<'r> Rollout<'r> {
    pub(super) fn new(
        spec: &'r ServiceSpec,
        id: DeploymentId,
        kind: StrategyKind,
        serving: Vec<Instance>,
    ) -> Rollout<'r> {
        let limits = spec.bounds(kind);
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
            canary: None,
            report: RolloutReport {
                strategy: kind.as_str().to_owned(),
                max_surge: limits.max_surge,
                max_unavailable: limits.max_unavailable,
                ..RolloutReport::default()
            },
            exclude: Vec::new(),
            warnings: RefCell::default(),
            last_reload: None,
            gap_from: None,
            prepared: None,
            previous: None,
            smoke: false,
            keep_old: false,
            kept: Vec::new(),
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

    pub(super) fn port_of(&self, replica: u16) -> Option<u16> {
        self.ports
            .iter()
            .find(|(r, _)| *r == replica)
            .map(|(_, p)| *p)
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

    /// Rolling and in-place report their batches; blue-green and canary are one flip.
    pub(super) fn reports_batches(&self) -> bool {
        self.kind.is_rolling()
    }

    fn limits(&self) -> Limits {
        Limits {
            replicas: self.spec.replicas,
            max_surge: self.limits.max_surge,
            max_unavailable: self.limits.max_unavailable,
        }
    }

    /// Whether `i` counts as a replica of the target.
    fn on_target(&self, i: &Instance) -> bool {
        let target = if self.own {
            i.deployment == self.id
        } else {
            i.version == self.target
        };
        target && !self.exclude.contains(&i.id) && i.replica < self.spec.replicas
    }

    /// Serving instances already on the target (one per replica) and those to replace.
    pub(super) fn split(&self) -> (Vec<Instance>, Vec<Instance>) {
        let mut fresh: Vec<Instance> = Vec::new();
        let mut stale = Vec::new();
        for i in &self.serving {
            if self.on_target(i) && !fresh.iter().any(|f| f.replica == i.replica) {
                fresh.push(i.clone());
            } else {
                stale.push(i.clone());
            }
        }
        (fresh, stale)
    }

    /// Whether every replica nginx serves is on the target, with nothing left to replace.
    pub(super) fn settled(&self) -> bool {
        let (fresh, stale) = self.split();
        fresh.len() == usize::from(self.spec.replicas) && stale.is_empty()
    }

    /// Whether the plan from here takes every replica out of the upstream at some point.
    pub(super) fn has_gap(&self) -> bool {
        let (fresh, stale) = self.split();
        fresh.is_empty() && batches::has_gap(self.limits(), stale.len() as u16)
    }

    /// Runs moves until every replica nginx serves is on the target version.
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

    /// Starts `count` replicas of the target, concurrently, and waits until they are
    /// healthy; on failure they are taken away again. Returns them and the wait.
    pub(super) async fn add_healthy<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
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
        let missing = &missing[..usize::from(count)];
        // Before anything starts: a pull that fails leaves nothing to take away.
        let fresh_replica = missing
            .iter()
            .find(|r| !self.reuse.iter().any(|i| i.replica == **r));
        if let Some(&replica) = fresh_replica {
            self.prepare(d, replica).await?;
        }
        let this = &*self;
        let started: Vec<Result<Instance, Halt>> = stream::iter(missing)
            .map(|&replica| this.start_replica(d, replica))
            .buffered(PARALLEL)
            .collect()
            .await;
        let mut added = Vec::new();
        let mut failed = None;
        for result in started {
            match result {
                Ok(instance) => added.push(instance),
                Err(e) if failed.is_none() => failed = Some(e),
                Err(_) => {}
            }
        }
        if let Some(e) = failed {
            self.discard(d, &added).await?;
            return Err(e);
        }
        let running = self.running() + added.len();
        self.report.peak_running = self.report.peak_running.max(running);
        if added.is_empty() {
            return Ok((added, 0));
        }
        let healthy = match health::journaled(d, self.spec, self.id, &added).await? {
            Ok(healthy_ms) => match self.pre_traffic(d, &added).await? {
                None => Ok(healthy_ms),
                Some(failure) => Err(failure),
            },
            Err(failure) => Err(failure),
        };
        match healthy {
            Ok(healthy_ms) => Ok((added, healthy_ms)),
            Err(failure) => {
                self.discard(d, &added).await?;
                Err(Halt::Move(failure))
            }
        }
    }

    /// Stops replicas that left the upstream, or keeps them running for the watch.
    pub(super) async fn retire_or_keep<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
        &mut self,
        d: &Deployer<'_, R, P, N, S, H>,
        removed: Vec<Instance>,
    ) -> Result<(), DeployError> {
        if self.keep_old {
            self.kept.extend(removed);
            return Ok(());
        }
        self.retire(d, &removed).await
    }

    /// Instances of the service nginx routes to, on either track.
    fn running(&self) -> usize {
        self.serving.len() + self.canary.as_ref().map_or(0, |c| c.instances.len())
    }

    async fn batch<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
        &mut self,
        d: &Deployer<'_, R, P, N, S, H>,
        batch: Batch,
        fresh: &[Instance],
        mut stale: Vec<Instance>,
    ) -> Result<(), Halt> {
        let number = self.report.batches.len() as u32 + 1;
        let batches = self.reports_batches();
        let context = |f: Failure| match batches {
            true => f.context(&format!("batch {number}")),
            false => f,
        };
        let (added, healthy_ms) = match self.add_healthy(d, batch.add, fresh, &stale).await {
            Ok(added) => added,
            Err(Halt::Move(f)) => return Err(Halt::Move(context(f))),
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
        let reload = match self.route(d, number, next, None).await? {
            Ok(reload) => reload,
            Err(f) => {
                self.discard(d, &added).await?;
                return Err(Halt::Move(context(f)));
            }
        };
        let mut report = BatchReport {
            added: added.iter().map(|i| i.name.clone()).collect(),
            removed: removed.iter().map(|i| i.name.clone()).collect(),
            healthy_ms,
            confirm_ms: reload.as_ref().map(|r| r.confirm_ms),
            drained_ms: 0,
        };
        if let Some(reload) = &reload {
            if let Some(from) = self.gap_from.take() {
                self.report.gap_ms = Some(from.elapsed().as_millis() as u64);
            }
            report.drained_ms = self.drain(d, reload).await?.waited_ms;
        } else if self.serving.is_empty() && !removed.is_empty() {
            // Nothing left to route to: nginx keeps the old address, which the
            // replacement takes over. Requests fail until it answers.
            self.gap_from = Some(Instant::now());
        }
        self.retire_or_keep(d, removed).await?;
        self.report.batches.push(report);
        Ok(())
    }

    /// The non-fatal problems so far, each as "; warning: …", to end a message with.
    pub(super) fn warnings_suffix(&self) -> String {
        self.warnings
            .borrow()
            .iter()
            .map(|w| format!("; warning: {w}"))
            .collect()
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
