//! Finishing a deployment whose process was killed: [`resume`].
//!
//! The journal says how far it got. Before the route step, traffic never moved: the new
//! instances are removed. From the route step on, traffic may be on the new slot: if it is
//! healthy now, the deployment is rolled forward (drain, stop old, activate); if not, the old
//! slot is brought back (restarted if it was already stopped), traffic is routed back to it,
//! and the new instances are removed.

use super::{health, rolling, upstream_set, DeployError, DeployReport, Deployer, Wanted};
use crate::config::{ServiceSpec, StrategyKind};
use crate::model::*;
use crate::seams::*;

pub(super) async fn resume<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
    d: &Deployer<'_, R, P, N, S, H>,
    spec: &ServiceSpec,
    record: &DeploymentRecord,
    journal: &[JournalEntry],
    wanted: Wanted<'_>,
) -> Result<Option<DeployReport>, DeployError> {
    let id = record.id;
    let last = journal.last().map_or("begin", |e| e.step.name());
    let reason = format!(
        "deployment #{id} ({} to {}) was interrupted after step `{last}`",
        record.kind.as_str(),
        record.to_version
    );
    d.journal(
        id,
        &spec.name,
        Step::Resume {
            reason: reason.clone(),
        },
    )?;
    d.observer.event(&Event::Resume {
        deployment: id,
        reason: reason.clone(),
    });

    let service = d.store.service(&spec.name)?;
    // Killed after `activate` (pruning, say): the flip and the stop were done; finish.
    if service.active.as_ref().is_some_and(|s| s.deployment == id) {
        d.complete(spec, id, &format!("{reason}; completed on resume"))
            .await?;
        return Ok(None);
    }
    match StrategyKind::parse(&record.strategy) {
        Ok(kind) if kind.is_rolling() => {
            rolling::resume(d, spec, record, journal, kind, wanted, reason).await
        }
        _ => resume_slot(d, spec, id, service, journal, reason)
            .await
            .map(|()| None),
    }
}

/// Blue-green and canary: finish the flip if the new slot is healthy, otherwise go back.
async fn resume_slot<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
    d: &Deployer<'_, R, P, N, S, H>,
    spec: &ServiceSpec,
    id: DeploymentId,
    record: ServiceRecord,
    journal: &[JournalEntry],
    reason: String,
) -> Result<(), DeployError> {
    let mut new: Vec<Instance> = Vec::new();
    let mut routed = None;
    let (mut route_intent, mut shifted, mut routed_back, mut removing) =
        (false, false, false, false);
    for entry in journal {
        match &entry.step {
            Step::InstanceStarted { instance } | Step::RestartInstance { instance }
                if !new.iter().any(|i| i.id == instance.id) =>
            {
                new.push(instance.clone())
            }
            Step::Route { .. } => route_intent = true,
            Step::Routed {
                generation,
                old_workers,
            } => routed = Some((*generation, old_workers.clone())),
            Step::Shift { .. } => shifted = true,
            Step::RoutedBack { .. } => routed_back = true,
            Step::RemoveNew { .. } => removing = true,
            _ => {}
        }
    }
    let old = record.active.filter(|s| s.deployment != id);
    // Removal starts only once no traffic can reach the new slot.
    if removing || routed_back || (!route_intent && !shifted) {
        return finish_failed(
            d,
            spec,
            id,
            &new,
            old.as_ref(),
            format!("{reason}; traffic is not on it"),
        )
        .await;
    }
    // A canary that was never promoted goes back: promoting it unjudged would be blind.
    if route_intent && slot_healthy_now(d, spec, &new).await {
        let reload = match routed {
            Some((generation, old_workers)) => Reload {
                generation,
                old_workers,
                confirm_ms: 0,
            },
            None => match d.route(spec, id, &new).await? {
                Ok(reload) => reload,
                Err(message) => {
                    let message = format!("{reason}; re-applying its route failed: {message}");
                    return finish_failed(d, spec, id, &new, old.as_ref(), message).await;
                }
            },
        };
        d.retire(spec, id, &reload, old.as_ref()).await?;
        return d
            .complete(spec, id, &format!("{reason}; completed on resume"))
            .await;
    }
    let Some(old) = old else {
        let message = format!(
            "{reason}; its instances are unhealthy and there is no previous version to return to"
        );
        return finish_failed(d, spec, id, &new, None, message).await;
    };
    route_back(d, spec, id, &old).await?;
    let why = if route_intent {
        "its instances were unhealthy on resume"
    } else {
        "an unfinished canary is not promoted unjudged"
    };
    let message = format!(
        "{reason}; {why}, so traffic was routed back to {}",
        old.version
    );
    finish_failed(d, spec, id, &new, Some(&old), message).await
}

/// Aborts the interrupted deployment; its failure is history, not this run's error.
async fn finish_failed<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
    d: &Deployer<'_, R, P, N, S, H>,
    spec: &ServiceSpec,
    id: DeploymentId,
    new: &[Instance],
    old: Option<&Slot>,
    message: String,
) -> Result<(), DeployError> {
    match d.abort(spec, id, new, old, message).await {
        DeployError::Failed { .. } => Ok(()),
        other => Err(other),
    }
}

pub(super) async fn slot_healthy_now<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
    d: &Deployer<'_, R, P, N, S, H>,
    spec: &ServiceSpec,
    instances: &[Instance],
) -> bool {
    instances.len() == usize::from(spec.replicas) && all_healthy(d, spec, instances).await
}

pub(super) async fn all_healthy<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
    d: &Deployer<'_, R, P, N, S, H>,
    spec: &ServiceSpec,
    instances: &[Instance],
) -> bool {
    for instance in instances {
        if !instance_healthy(d, spec, instance).await {
            return false;
        }
    }
    true
}

/// Running (and Docker-healthy, where the image has a check) and passing the health path.
pub(super) async fn instance_healthy<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
    d: &Deployer<'_, R, P, N, S, H>,
    spec: &ServiceSpec,
    instance: &Instance,
) -> bool {
    let running = matches!(
        d.runtime.status(instance).await,
        Ok(InstanceStatus::Running {
            health: RuntimeHealth::None | RuntimeHealth::Healthy
        })
    );
    running
        && d.prober
            .probe(instance.addr(), &spec.health.path, spec.health.timeout)
            .await
            .ok
}

/// Restarts the old slot where it was stopped, waits until healthy, routes all traffic to
/// it and waits for the workers that routed elsewhere to exit.
pub(super) async fn route_back<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
    d: &Deployer<'_, R, P, N, S, H>,
    spec: &ServiceSpec,
    id: DeploymentId,
    old: &Slot,
) -> Result<Reload, DeployError> {
    let set = upstream_set(spec, &old.instances);
    d.journal(
        id,
        &spec.name,
        Step::RouteBack {
            backends: set.backends.clone(),
        },
    )?;
    for instance in &old.instances {
        if !matches!(
            d.runtime.status(instance).await?,
            InstanceStatus::Running { .. }
        ) {
            d.runtime.restart(instance).await?;
        }
    }
    health::wait_healthy(d, spec, &old.instances)
        .await
        .map_err(|m| {
            DeployError::Environment(format!(
                "previous version {} is not healthy either: {m}",
                old.version
            ))
        })?;
    let reload = d
        .router
        .apply(&set)
        .await
        .map_err(|e| DeployError::Environment(e.to_string()))?;
    d.observer.event(&Event::Reloaded {
        generation: reload.generation,
        confirm_ms: reload.confirm_ms,
    });
    d.router
        .wait_drained(&reload, spec.drain_timeout)
        .await
        .map_err(|e| DeployError::Environment(e.to_string()))?;
    d.journal(
        id,
        &spec.name,
        Step::RoutedBack {
            generation: reload.generation,
        },
    )?;
    Ok(reload)
}
