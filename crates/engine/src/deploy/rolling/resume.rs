//! Finishing a rollout that was killed or paused: [`resume`].
//!
//! First the service is made consistent: nginx serves the last confirmed `serve` set (or the
//! intended one, if every replica in it is healthy now), minus any replica that is not
//! healthy now, and every other instance the deployment touched is stopped or removed.
//! Then the command that found it decides: `deploy` of the same version finishes the
//! rollout, `rollback` of a rollback finishes that; anything else restores the version that
//! was live before, in batches, and (for `deploy` of another version) goes on from there.

use tokio::time::Instant;

use super::run::{restore, rollout_report};
use super::{Halt, Rollout};
use crate::config::{ServiceSpec, StrategyKind};
use crate::deploy::recover::instance_healthy as healthy;
use crate::deploy::{DeployError, DeployReport, Deployer, Wanted};
use crate::model::*;
use crate::seams::*;

pub(in crate::deploy) async fn resume<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
    d: &Deployer<'_, R, P, N, S, H>,
    spec: &ServiceSpec,
    record: &DeploymentRecord,
    journal: &[JournalEntry],
    kind: StrategyKind,
    wanted: Wanted<'_>,
    reason: String,
) -> Result<Option<DeployReport>, DeployError> {
    let started = Instant::now();
    let id = record.id;
    let old = d.store.service(&spec.name)?.active;
    let mut rollout = reconcile(d, spec, record, journal, kind, old.as_ref(), &reason).await?;

    let finish = match wanted {
        Wanted::Deploy(v) => record.kind == DeployKind::Deploy && v == &record.to_version,
        Wanted::Rollback => record.kind == DeployKind::Rollback,
    };
    // A first deploy that already served has nothing to go back to: it is finished instead.
    let forced = !finish && old.is_none() && !rollout.serving.is_empty();
    if finish || forced {
        let reuse: Vec<Instance> = match record.kind {
            DeployKind::Deploy => Vec::new(),
            DeployKind::Rollback => d
                .store
                .service(&spec.name)?
                .retained
                .iter()
                .filter(|s| s.version == record.to_version)
                .flat_map(|s| s.instances.iter().cloned())
                .collect(),
        };
        rollout.towards(&record.to_version, record.color, reuse, true);
        if rollout.has_gap() && !spec.rolling.allow_downtime && old.is_some() {
            // The config changed since: finishing would empty the upstream. Go back instead.
            let message = format!("{reason}; finishing it would leave no replica in the upstream (allow_downtime is not set), so the previous version was restored");
            let old_version = old.as_ref().map(|s| s.version.to_string());
            restore(d, spec, &mut rollout, old.as_ref(), &message).await?;
            return Err(DeployError::Failed {
                deployment: id,
                service: spec.name.clone(),
                stays_on: old_version.unwrap_or_default(),
                message,
            });
        }
        match rollout.converge(d).await {
            Ok(()) => {}
            Err(Halt::Env(e)) => return Err(e),
            Err(Halt::Batch(m)) => {
                let message = format!("{reason}; {m}");
                let err = d.after_failed_batch(spec, id, rollout, old, message).await;
                // Finishing it was not what this command asked: its failure is history.
                if forced && matches!(err, DeployError::Failed { .. }) {
                    return Ok(None);
                }
                return Err(err);
            }
        }
        let batches = rollout.report.batches.len();
        d.complete(
            spec,
            id,
            &format!("{reason}; finished on resume in {batches} batch(es)"),
        )
        .await?;
        if forced {
            return Ok(None);
        }
        return Ok(Some(rollout_report(
            spec,
            id,
            record.kind,
            record.from_version.clone(),
            &record.to_version,
            record.color,
            rollout,
            started,
        )));
    }
    let back_to = old
        .as_ref()
        .map_or("nothing".to_owned(), |s| s.version.to_string());
    let message = format!("{reason}; {back_to} was restored");
    restore(d, spec, &mut rollout, old.as_ref(), &message).await?;
    match (wanted, old) {
        // Undoing the interrupted rollout was the rollback.
        (Wanted::Rollback, Some(old)) => Ok(Some(rollout_report(
            spec,
            id,
            DeployKind::Rollback,
            Some(record.to_version.clone()),
            &old.version,
            old.color,
            rollout,
            started,
        ))),
        _ => Ok(None),
    }
}

/// Makes the service consistent: nginx serves healthy replicas the journal says it served
/// (or was about to), the workers that routed elsewhere are gone, and every other instance
/// the deployment touched is stopped or removed. Returns the rollout from there.
async fn reconcile<'r, R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
    d: &Deployer<'_, R, P, N, S, H>,
    spec: &'r ServiceSpec,
    record: &DeploymentRecord,
    journal: &[JournalEntry],
    kind: StrategyKind,
    old: Option<&Slot>,
    reason: &str,
) -> Result<Rollout<'r>, DeployError> {
    let id = record.id;
    let mut known: Vec<Instance> = old.map_or(Vec::new(), |s| s.instances.clone());
    let mut confirmed: Vec<String> = known.iter().map(|i| i.id.clone()).collect();
    let mut pending: Option<Vec<String>> = None;
    // The last confirmed reload whose old workers may still be draining.
    let mut undrained: Option<Reload> = None;
    for entry in journal {
        match &entry.step {
            Step::Routed {
                generation,
                old_workers,
            } if pending.is_some() => {
                undrained = Some(Reload {
                    generation: *generation,
                    old_workers: old_workers.clone(),
                    confirm_ms: 0,
                });
                confirmed = pending.take().expect("checked");
            }
            Step::Drained { .. } => undrained = None,
            Step::InstanceStarted { instance } | Step::RestartInstance { instance } => {
                known.retain(|k| k.id != instance.id);
                known.push(instance.clone());
            }
            Step::Serve { instances, .. } => pending = Some(instances.clone()),
            _ => {}
        }
    }
    let pending_seen = pending.is_some();
    let find = |ids: &[String]| -> Vec<Instance> {
        ids.iter()
            .filter_map(|id| known.iter().find(|k| &k.id == id).cloned())
            .collect()
    };
    let confirmed = find(&confirmed);
    // A reload killed before its confirmation left nginx on one of the two sets: the
    // intended one if all of it is healthy, else the confirmed one; either way re-applied.
    let (candidate, serving) = match pending.map(|p| find(&p)) {
        Some(intended) if !intended.is_empty() => {
            let up = healthy_only(d, spec, &intended).await;
            if up.len() == intended.len() {
                (intended, up)
            } else {
                let up = healthy_only(d, spec, &confirmed).await;
                (confirmed, up)
            }
        }
        _ => {
            let up = healthy_only(d, spec, &confirmed).await;
            (confirmed, up)
        }
    };
    let reapply = pending_seen || serving.len() != candidate.len();

    let mut rollout = Rollout::new(spec, id, kind, serving.clone());
    rollout.remember_ports(&known);
    if reapply && !serving.is_empty() {
        match rollout.route(d, 0, &serving).await? {
            Ok(Some(reload)) => {
                rollout.drain(d, &reload).await?;
            }
            Ok(None) => {}
            Err(m) => {
                return Err(DeployError::Environment(format!(
                    "{reason}; re-applying what nginx served failed: {m}"
                )))
            }
        }
    }
    // Nothing that left the upstream stops before the workers that routed to it are gone.
    if let (false, Some(reload)) = (reapply, &undrained) {
        rollout.drain(d, reload).await?;
    }
    let mut strays = Vec::new();
    for i in known
        .iter()
        .filter(|k| !serving.iter().any(|s| s.id == k.id))
    {
        if matches!(d.runtime.status(i).await?, InstanceStatus::Running { .. }) {
            strays.push(i.clone());
        }
    }
    rollout.retire(d, &strays).await?;
    rollout.discard(d, &[]).await?;
    Ok(rollout)
}

/// The instances of `list` that are healthy now, each probed once.
async fn healthy_only<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
    d: &Deployer<'_, R, P, N, S, H>,
    spec: &ServiceSpec,
    list: &[Instance],
) -> Vec<Instance> {
    let mut up = Vec::new();
    for i in list {
        if healthy(d, spec, i).await {
            up.push(i.clone());
        }
    }
    up
}
