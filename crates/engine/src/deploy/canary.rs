//! The canary strategy: [`Deployer::canary`], moves of the one [`Rollout`] loop with a gate
//! after each.
//!
//! The first move starts every replica of the new version beside the stable ones and waits
//! until they are healthy. Each step (`CanarySpec::steps`) is then one confirmed change of
//! the serve set: the stable track as it was, and the canary track beside it at the step's
//! weight. The gate after it ([`gate`]) judges the canary every `interval` over the trailing
//! `window` until the hold is over: a pass advances; `failure_limit` failed checks, or
//! `inconclusive_limit` checks in a row without a verdict, roll back; the canary is never
//! promoted blind. `switchyard promote` skips the rest of a hold or a pause, `switchyard
//! abort` rolls back now. The last move is the blue-green flip to the canary, after which
//! the stable replicas are drained, stopped and kept. Rolling back is one change back to the
//! stable track alone, a drain, then the canary's removal. Before each change the workers of
//! the previous one are waited for, so at most one set of old workers drains at a time.

pub(super) mod gate;

use std::time::Duration;

use tokio::time::Instant;

use super::health::healthy_only;
use super::rolling::BatchReport;
use super::rollout::{CanaryTrack, Halt, Rollout};
use super::run::rollout_report;
use super::{DeployError, DeployReport, Deployer, Wanted};
use crate::config::{ServiceSpec, StrategyKind};
use crate::model::*;
use crate::names::Version;
use crate::seams::*;
use gate::{Gate, StepEnd};

pub use gate::percent;

/// How long a rollback waits for the last step's old workers before its own change.
const ROLLBACK_DRAIN_WAIT: Duration = Duration::from_secs(1);

impl<R: Runtime, P: Prober, N: Router, S: Store, H: Host> Deployer<'_, R, P, N, S, H> {
    /// Deploys `version` of `spec` as a canary judged by `metrics`.
    pub async fn canary<M: MetricSource>(
        &self,
        spec: &ServiceSpec,
        version: &Version,
        metrics: &M,
    ) -> Result<DeployReport, DeployError> {
        self.locked(spec, "deploy", Wanted::Deploy(version), |d| async move {
            d.run_canary(spec, version, metrics).await
        })
        .await
    }

    async fn run_canary<M: MetricSource>(
        &self,
        spec: &ServiceSpec,
        version: &Version,
        metrics: &M,
    ) -> Result<DeployReport, DeployError> {
        let Some(old) = self.store.service(&spec.name)?.active else {
            // Nothing stable to compare with or fall back to: the first version goes live whole.
            return self
                .run_rollout(
                    spec,
                    DeployKind::Deploy,
                    version,
                    StrategyKind::BlueGreen,
                    None::<&M>,
                )
                .await;
        };
        let started = Instant::now();
        let color = old.color.other();
        let serving = self.running(Some(&old)).await?;
        let kind = StrategyKind::Canary;
        let id = self.begin(spec, DeployKind::Deploy, kind, Some(&old), version, color)?;
        self.pre_deploy(spec, id, kind, Some(&old), version).await?;
        let mut rollout = Rollout::new(spec, id, kind, serving);
        rollout.towards(version, color, vec![], true);
        rollout.previous = Some(old.version.clone());
        rollout.smoke = true;
        let gate = Gate {
            d: self,
            spec,
            id,
            stable: &old.version,
            canary: version,
            metrics,
        };
        rollout.keep_old = !spec.watch.is_zero();
        match self.canary_moves(&mut rollout, &gate).await {
            Ok(()) => {}
            Err(Halt::Env(e)) => return Err(e),
            Err(Halt::Move(failure)) => {
                return Err(self.roll_back_canary(rollout, &old, failure).await);
            }
        }
        if rollout.keep_old {
            match self.watch(&mut rollout, &old, metrics).await {
                Ok(()) => {}
                Err(Halt::Env(e)) => return Err(e),
                Err(Halt::Move(failure)) => {
                    return Err(self.watch_failed(rollout, old, failure).await);
                }
            }
        }
        self.complete(spec, id, "canary promoted").await?;
        rollout.after_hook(self, HookPoint::PostDeploy).await?;
        let from = Some(old.version);
        Ok(rollout_report(rollout, DeployKind::Deploy, from, started))
    }

    /// Start beside the stable replicas, every weighted step with its gate, then the flip.
    async fn canary_moves<M: MetricSource>(
        &self,
        rollout: &mut Rollout<'_>,
        gate: &Gate<'_, '_, R, P, N, S, H, M>,
    ) -> Result<(), Halt> {
        let spec = rollout.spec;
        let stable = rollout.serving.clone();
        let (added, healthy_ms) = rollout
            .add_healthy(self, spec.replicas, &[], &stable)
            .await?;
        rollout.report.batches.push(BatchReport {
            added: added.iter().map(|i| i.name.clone()).collect(),
            healthy_ms,
            ..BatchReport::default()
        });
        let c = &spec.canary;
        for &weight_bp in c.steps.iter().filter(|&&w| w < 10_000) {
            // An abort that arrived during the health wait or a drain acts before the next step.
            if let Some(StepEnd::RollBack(f)) = gate.control()? {
                return Err(Halt::Move(f));
            }
            self.shift(rollout, &added, weight_bp).await?;
            let end = match gate.analyze(weight_bp).await? {
                StepEnd::Passed if c.pause_after.contains(&weight_bp) => {
                    gate.pause(weight_bp).await?
                }
                end => end,
            };
            if let StepEnd::RollBack(f) = end {
                return Err(Halt::Move(f));
            }
        }
        if let Some(previous) = rollout.last_reload.clone() {
            rollout.drain(self, &previous).await?;
        }
        // Last chances before all traffic moves: an abort sent meanwhile, or a canary replica
        // that stopped being healthy since its last check.
        if let Some(StepEnd::RollBack(f)) = gate.control()? {
            return Err(Halt::Move(f));
        }
        if healthy_only(self, spec, &added).await.len() != added.len() {
            let message = "promoting: a canary replica is not healthy any more";
            return Err(Halt::Move(Failure::new(Cause::Unhealthy, message)));
        }
        let reload = match rollout.route(self, 1, added, None).await? {
            Ok(reload) => reload.expect("the canary has replicas"),
            Err(f) => return Err(Halt::Move(f.context("promoting: nginx refused the flip"))),
        };
        let drained = rollout.drain(self, &reload).await?;
        // The report's one batch is the flip: what it waited for the old workers.
        if let Some(flip) = rollout.report.batches.last_mut() {
            flip.removed = stable.iter().map(|i| i.name.clone()).collect();
            flip.confirm_ms = Some(reload.confirm_ms);
            flip.drained_ms = drained.waited_ms;
        }
        rollout.retire_or_keep(self, stable).await?;
        Ok(())
    }

    /// One step: `weight_bp` to the canary in one confirmed change, after the previous
    /// change's workers are gone.
    async fn shift(
        &self,
        rollout: &mut Rollout<'_>,
        canary: &[Instance],
        weight_bp: u32,
    ) -> Result<(), Halt> {
        if let Some(previous) = rollout.last_reload.clone() {
            rollout.drain(self, &previous).await?;
        }
        let track = CanaryTrack {
            instances: canary.to_vec(),
            weight_bp,
        };
        let stable = rollout.serving.clone();
        match rollout.route(self, 1, stable, Some(track)).await? {
            Ok(_) => Ok(()),
            Err(f) => {
                if rollout.canary.is_none() {
                    rollout.discard(self, canary).await?;
                }
                let at = percent(weight_bp);
                Err(Halt::Move(
                    f.context(&format!("at {at}%: nginx refused the step")),
                ))
            }
        }
    }

    /// Everything back on the stable track in one change, drained, then the canary removed.
    /// The stable replicas served all along, so they are not health-checked first (that
    /// would only delay the rollback, and fail it if one stable replica flaps); the previous
    /// step's workers get at most [`ROLLBACK_DRAIN_WAIT`], so long-lived connections cannot
    /// hold a bad canary in traffic.
    async fn roll_back_canary(
        &self,
        mut rollout: Rollout<'_>,
        old: &Slot,
        failure: Failure,
    ) -> DeployError {
        let (spec, id) = (rollout.spec, rollout.id);
        let step = Step::Failing {
            cause: failure.cause,
            reason: failure.message.clone(),
        };
        if let Err(e) = self.journal(id, &spec.name, step) {
            return e;
        }
        let canary: Vec<Instance> = rollout
            .canary
            .as_ref()
            .map_or(vec![], |c| c.instances.clone());
        if let Err(e) = self.route_stable(&mut rollout, &failure.message).await {
            return DeployError::Environment(format!(
                "{}; routing everything back to {} failed: {e}; `switchyard status` shows the state, the next deploy or rollback finishes it",
                failure.message, old.version
            ));
        }
        let taken = async {
            rollout.discard(self, &canary).await?;
            self.finish(id, Outcome::Failed, &failure.message)
        };
        if let Err(e) = taken.await {
            return DeployError::Environment(format!(
                "{}; cleaning up also failed: {e}",
                failure.message
            ));
        }
        self.rolled_back(rollout, old, failure.cause, failure.message)
            .await
    }

    /// After traffic went back to `old` and the new version was taken away: `on_rollback`
    /// (told as a rollback from the failed version to `old`), and the failed deploy's error.
    pub(super) async fn rolled_back(
        &self,
        mut rollout: Rollout<'_>,
        old: &Slot,
        cause: Cause,
        message: String,
    ) -> DeployError {
        rollout.previous = Some(std::mem::replace(&mut rollout.target, old.version.clone()));
        if let Err(e) = rollout.after_hook(self, HookPoint::OnRollback).await {
            return e;
        }
        let warnings = rollout.warnings_suffix();
        self.failed(
            &rollout,
            old.version.to_string(),
            cause,
            format!("{message}{warnings}"),
        )
    }

    /// Takes the canary track out of traffic, if it had any, and waits for the workers that
    /// routed to it.
    async fn route_stable(
        &self,
        rollout: &mut Rollout<'_>,
        reason: &str,
    ) -> Result<(), DeployError> {
        if rollout.canary.is_none() {
            return Ok(());
        }
        if let Some(previous) = rollout.last_reload.clone() {
            let wait = rollout.spec.drain_timeout.min(ROLLBACK_DRAIN_WAIT);
            rollout.drain_within(self, &previous, wait).await?;
        }
        let stable = rollout.serving.clone();
        let reload = match rollout.route(self, 0, stable, None).await? {
            Ok(reload) => reload.expect("the stable track has replicas"),
            Err(f) => return Err(DeployError::Environment(f.message)),
        };
        rollout.drain(self, &reload).await?;
        self.observer.event(&Event::RolledBack {
            generation: reload.generation,
            reason: reason.to_owned(),
        });
        Ok(())
    }
}
