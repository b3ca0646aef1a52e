//! The entry points that run a [`Rollout`] to a version: [`Deployer::roll`] (blue-green,
//! rolling, in-place) and rollbacks, what a failed move leads to, and [`restore`].

use tokio::time::Instant;

use super::rolling::batches;
use super::rollout::{Halt, Rollout};
use super::watch::Unwatched;
use super::{DeployError, DeployReport, Deployer, Wanted};
use crate::config::{OnFailure, ServiceSpec, StrategyKind};
use crate::model::*;
use crate::names::Version;
use crate::seams::*;

impl<R: Runtime, P: Prober, N: Router, S: Store, H: Host> Deployer<'_, R, P, N, S, H> {
    /// Deploys `version` of `spec` in moves bounded by `kind`: blue-green in one, rolling
    /// and in-place in batches.
    pub async fn roll(
        &self,
        spec: &ServiceSpec,
        version: &Version,
        kind: StrategyKind,
    ) -> Result<DeployReport, DeployError> {
        self.locked(spec, "deploy", Wanted::Deploy(version), |d| async move {
            d.run_rollout(spec, DeployKind::Deploy, version, kind, None::<&Unwatched>)
                .await
        })
        .await
    }

    /// Deploys `version` of `spec` by `kind`, the one entry the CLI, the API and the sandbox
    /// use: a canary is judged by `metrics`, and so is every strategy's post-cutover watch
    /// (`watch`), which needs a previous version to go back to.
    pub async fn run<M: MetricSource>(
        &self,
        spec: &ServiceSpec,
        version: &Version,
        kind: StrategyKind,
        metrics: &M,
    ) -> Result<DeployReport, DeployError> {
        if kind == StrategyKind::Canary {
            return self.canary(spec, version, metrics).await;
        }
        self.locked(spec, "deploy", Wanted::Deploy(version), |d| async move {
            d.run_rollout(spec, DeployKind::Deploy, version, kind, Some(metrics))
                .await
        })
        .await
    }

    /// A rollout to `version` within `strategy`'s bounds: a deploy starts fresh replicas; a
    /// rollback restarts the stopped instances of the retained `version`.
    /// A plan that would empty the upstream is refused unless `allow_downtime` is set.
    /// With `metrics`, a deploy that replaces a live version is watched after its cutover
    /// (`watch`).
    pub(super) async fn run_rollout<M: MetricSource>(
        &self,
        spec: &ServiceSpec,
        kind: DeployKind,
        version: &Version,
        strategy: StrategyKind,
        metrics: Option<&M>,
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
        let serving = self.running(old.as_ref()).await?;
        refuse_gap(spec, strategy, serving.len() as u16)?;
        let id = self.begin(spec, kind, strategy, old.as_ref(), version, color)?;
        if kind == DeployKind::Deploy {
            self.pre_deploy(spec, id, strategy, old.as_ref(), version)
                .await?;
        }
        let mut rollout = Rollout::new(spec, id, strategy, serving);
        rollout.towards(version, color, reuse, true);
        rollout.previous = old.as_ref().map(|s| s.version.clone());
        rollout.smoke = kind == DeployKind::Deploy;
        let watched = match (metrics, &old) {
            (Some(metrics), Some(old)) if !spec.watch.is_zero() => Some((metrics, old.clone())),
            _ => None,
        };
        // Blue-green keeps the previous replicas running for the watch; rolling and in-place
        // stop them as their bounds require.
        rollout.keep_old = watched.is_some() && !strategy.is_rolling();
        match rollout.converge(self).await {
            Ok(()) => {}
            Err(Halt::Env(e)) => return Err(e),
            Err(Halt::Move(failure)) => {
                return Err(self.after_failure(rollout, old, failure).await);
            }
        }
        if let Some((metrics, old)) = watched {
            match self.watch(&mut rollout, &old, metrics).await {
                Ok(()) => {}
                Err(Halt::Env(e)) => return Err(e),
                Err(Halt::Move(failure)) => {
                    return Err(self.watch_failed(rollout, old, failure).await);
                }
            }
        }
        let done = match rollout.reports_batches() {
            true => format!("deployed in {} batch(es)", rollout.report.batches.len()),
            false => "deployed".to_owned(),
        };
        self.complete(spec, id, &done).await?;
        let after = match kind {
            DeployKind::Deploy => HookPoint::PostDeploy,
            DeployKind::Rollback => HookPoint::OnRollback,
        };
        rollout.after_hook(self, after).await?;
        let from = old.map(|s| s.version);
        Ok(rollout_report(rollout, kind, from, started))
    }

    /// What the store calls active and the runtime still runs (nginx routes to these).
    pub(super) async fn running(&self, slot: Option<&Slot>) -> Result<Vec<Instance>, DeployError> {
        let mut serving = Vec::new();
        for i in slot.iter().flat_map(|s| &s.instances) {
            if matches!(
                self.runtime.status(i).await?,
                InstanceStatus::Running { .. }
            ) {
                serving.push(i.clone());
            }
        }
        Ok(serving)
    }

    /// After a failed move: restore the previous version, or leave the service as it is
    /// (`on_failure = "pause"`).
    pub(super) async fn after_failure(
        &self,
        mut rollout: Rollout<'_>,
        old: Option<Slot>,
        failure: Failure,
    ) -> DeployError {
        let (spec, id) = (rollout.spec, rollout.id);
        rollout.keep_old = false;
        // A failed or aborted watch always goes back: the version took all traffic and
        // failed there, or someone asked for the way back (only a watch brings an abort here).
        let paused = spec.bounds(rollout.kind).on_failure == OnFailure::Pause
            && old.is_some()
            && !matches!(failure.cause, Cause::Watch | Cause::Aborted);
        let reason = match paused {
            true => format!(
                "{}; paused with {} (on_failure = \"pause\"): run `switchyard rollback {}` to restore the previous version or `switchyard deploy {}` to finish",
                failure.message,
                rollout.describe_serving(),
                spec.name,
                spec.name
            ),
            false => failure.message.clone(),
        };
        let step = Step::Failing {
            cause: failure.cause,
            reason: reason.clone(),
        };
        if let Err(e) = self.journal(id, &spec.name, step) {
            return e;
        }
        if paused {
            if let Err(e) = self.journal(
                id,
                &spec.name,
                Step::Halted {
                    reason: reason.clone(),
                },
            ) {
                return e;
            }
            return self.failed(&rollout, rollout.describe_serving(), failure.cause, reason);
        }
        let failed_version = rollout.target.clone();
        match restore(self, &mut rollout, old.as_ref(), &reason).await {
            Ok(stays_on) => {
                if old.is_some() {
                    // Told as a rollback: from the failed version to the one restored.
                    rollout.previous = Some(failed_version);
                    if let Err(e) = rollout.after_hook(self, HookPoint::OnRollback).await {
                        return e;
                    }
                }
                let warnings = rollout.warnings_suffix();
                let message = match rollout.reports_batches() {
                    true => format!("{reason}; the replaced replicas were restored{warnings}"),
                    false => format!("{reason}{warnings}"),
                };
                self.failed(&rollout, stays_on, failure.cause, message)
            }
            Err(e) => e,
        }
    }

    pub(super) fn failed(
        &self,
        rollout: &Rollout<'_>,
        stays_on: String,
        cause: Cause,
        message: String,
    ) -> DeployError {
        DeployError::Failed {
            deployment: rollout.id,
            service: rollout.spec.name.clone(),
            stays_on,
            cause,
            message,
        }
    }
}

/// Refuses a plan that would take every replica out of the upstream at once, unless the
/// config accepts the gap.
fn refuse_gap(spec: &ServiceSpec, strategy: StrategyKind, serving: u16) -> Result<(), DeployError> {
    let bounds = spec.bounds(strategy);
    let limits = batches::Limits {
        replicas: spec.replicas,
        max_surge: bounds.max_surge,
        max_unavailable: bounds.max_unavailable,
    };
    if !batches::has_gap(limits, serving) || spec.rolling.allow_downtime {
        return Ok(());
    }
    Err(DeployError::Refused(format!(
        "{} with {} replica(s), max_surge {} and max_unavailable {} would take every replica out of the upstream at once, so requests would fail for the gap; set allow_downtime = true in [service.rolling] to accept that, or use rolling with max_surge >= 1",
        strategy.as_str(),
        spec.replicas,
        bounds.max_surge,
        bounds.max_unavailable
    )))
}

/// Brings the upstream back to `old` in moves and finishes the deployment as failed.
/// Returns what traffic stays on.
pub(super) async fn restore<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
    d: &Deployer<'_, R, P, N, S, H>,
    rollout: &mut Rollout<'_>,
    old: Option<&Slot>,
    message: &str,
) -> Result<String, DeployError> {
    let (spec, id) = (rollout.spec, rollout.id);
    let stays_on = match old {
        Some(old) => {
            go_back(d, rollout, old, message).await?;
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
    rollout.canary = None;
    rollout.discard(d, &[]).await?;
    d.finish(id, Outcome::Failed, message)?;
    Ok(stays_on)
}

/// Routes the service back to `old`'s version, restarting what of it was stopped, and puts
/// the store's active slot right: exactly what nginx serves.
async fn go_back<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
    d: &Deployer<'_, R, P, N, S, H>,
    rollout: &mut Rollout<'_>,
    old: &Slot,
    message: &str,
) -> Result<(), DeployError> {
    let (spec, id) = (rollout.spec, rollout.id);
    let step = Step::Restore {
        version: old.version.to_string(),
        reason: message.to_owned(),
    };
    d.journal(id, &spec.name, step)?;
    rollout.exclude = rollout
        .serving
        .iter()
        .filter(|i| i.origin == id)
        .map(|i| i.id.clone())
        .collect();
    rollout.towards(&old.version, old.color, old.instances.clone(), false);
    rollout.smoke = false;
    match rollout.converge(d).await {
        Ok(()) => {}
        Err(Halt::Env(e)) => return Err(e),
        Err(Halt::Move(f)) => {
            return Err(DeployError::Environment(format!(
                "{message}; restoring {} failed too: {}; deployment #{id} stays unfinished and the next deploy or rollback of {} resumes it",
                old.version, f.message, spec.name
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
    Ok(())
}

/// The report of a finished rollout.
pub(super) fn rollout_report(
    rollout: Rollout<'_>,
    kind: DeployKind,
    from: Option<Version>,
    started: Instant,
) -> DeployReport {
    let batches = rollout.reports_batches();
    let r = rollout.report;
    DeployReport {
        deployment: rollout.id,
        service: rollout.spec.name.clone(),
        kind,
        from,
        to: rollout.target,
        color: rollout.color,
        healthy_ms: r.batches.iter().map(|b| b.healthy_ms).sum(),
        reload: rollout.last_reload.unwrap_or(Reload {
            generation: 0,
            drain: DrainHandle::default(),
            confirm_ms: 0,
        }),
        drained: Drained {
            waited_ms: r.batches.iter().map(|b| b.drained_ms).sum(),
            lingering: None,
        },
        total_ms: started.elapsed().as_millis() as u64,
        warnings: rollout.warnings.into_inner(),
        rollout: batches.then_some(r),
    }
}
