//! The entry points that run a [`Rollout`]: [`Deployer::roll`], rollbacks of rolling
//! services, what a failed batch leads to, and [`restore`].

use tokio::time::Instant;

use super::{batches, Halt, Rollout};
use crate::config::{OnFailure, ServiceSpec, StrategyKind};
use crate::deploy::{created_by, DeployError, DeployReport, Deployer, Wanted};
use crate::model::*;
use crate::names::Version;
use crate::seams::*;

impl<R: Runtime, P: Prober, N: Router, S: Store, H: Host> Deployer<'_, R, P, N, S, H> {
    /// Deploys `version` of `spec` by replacing replicas in batches; `kind` is
    /// [`StrategyKind::Rolling`] or [`StrategyKind::InPlace`].
    pub async fn roll(
        &self,
        spec: &ServiceSpec,
        version: &Version,
        kind: StrategyKind,
    ) -> Result<DeployReport, DeployError> {
        self.locked(spec, "deploy", Wanted::Deploy(version), |d| async move {
            d.run_rollout(spec, DeployKind::Deploy, version, kind).await
        })
        .await
    }

    /// A rollout to `version` within `strategy`'s bounds: a deploy starts fresh replicas; a
    /// rollback restarts the stopped instances of the retained `version`, in batches too.
    /// A plan that would empty the upstream is refused unless `allow_downtime` is set.
    pub(in crate::deploy) async fn run_rollout(
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
        // Nothing live is on the new deployment yet: the plan starts from every serving replica.
        let bounds = spec.rolling.for_kind(strategy);
        let limits = batches::Limits {
            replicas: spec.replicas,
            max_surge: bounds.max_surge,
            max_unavailable: bounds.max_unavailable,
        };
        if batches::has_gap(limits, serving.len() as u16) && !spec.rolling.allow_downtime {
            return Err(DeployError::Refused(format!(
                "{} with {} replica(s), max_surge {} and max_unavailable {} would take every replica out of the upstream at once, so requests would fail for the gap; set allow_downtime = true in [service.rolling] to accept that, or use rolling with max_surge >= 1",
                strategy.as_str(),
                spec.replicas,
                bounds.max_surge,
                bounds.max_unavailable
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
            Ok(stays_on) => {
                let warnings: String = rollout
                    .warnings
                    .borrow()
                    .iter()
                    .map(|w| format!("; warning: {w}"))
                    .collect();
                DeployError::Failed {
                    deployment: id,
                    service: spec.name.clone(),
                    stays_on,
                    message: format!("{message}; the replaced replicas were restored{warnings}"),
                }
            }
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
    d.finish(id, Outcome::Failed, message)?;
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
