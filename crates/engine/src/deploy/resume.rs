//! Finishing a deployment whose process was killed, or a paused rollout: [`resume`], one
//! mechanism for every strategy.
//!
//! First the service is made consistent from the journal's [`fold`]: nginx serves the last
//! confirmed serve set (or the intended one, if every replica in it is healthy now), minus any
//! replica that is not healthy now and minus a canary track (a canary is never promoted
//! unjudged, nor left in traffic unwatched), the workers that routed elsewhere are drained,
//! and every other instance the deployment touched is stopped or removed. Then the command
//! that found it decides: `deploy` of the same version finishes it, `rollback` of a rollback
//! finishes that; anything else, and a canary not yet promoted, goes back to the version that
//! was live before, in moves, and (for `deploy` of another version) goes on from there.

use tokio::time::Instant;

use super::fold::{fold, Folded};
use super::health::healthy_only;
use super::rollout::{Halt, Rollout};
use super::run::{restore, rollout_report};
use super::{DeployError, DeployReport, Deployer, Wanted};
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
    let started = Instant::now();
    let id = record.id;
    let live = d.store.service(&spec.name)?.active;
    let before: Vec<Instance> = live.iter().flat_map(|s| s.instances.clone()).collect();
    let folded = fold(id, journal, &before);
    let reason = format!(
        "deployment #{id} ({} to {}) was interrupted after step `{}`",
        record.kind.as_str(),
        record.to_version,
        folded.last_step
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
    // Killed after `activate` (pruning, say): the flip and the stop were done; finish.
    if live.as_ref().is_some_and(|s| s.deployment == id) {
        d.complete(spec, id, &format!("{reason}; completed on resume"))
            .await?;
        return Ok(None);
    }
    let old = live.filter(|s| s.deployment != id);
    let kind = StrategyKind::parse(&record.strategy).unwrap_or(StrategyKind::BlueGreen);
    let mut rollout = reconcile(d, spec, id, &folded, kind, &reason).await?;
    let reuse = match record.kind {
        DeployKind::Deploy => Vec::new(),
        DeployKind::Rollback => retained(d, spec, record)?,
    };
    rollout.towards(&record.to_version, record.color, reuse, true);
    rollout.previous = record.from_version.clone();
    rollout.smoke = record.kind == DeployKind::Deploy;
    let asked = match wanted {
        Wanted::Deploy(v) => record.kind == DeployKind::Deploy && v == &record.to_version,
        Wanted::Rollback => record.kind == DeployKind::Rollback,
    };
    // A canary goes forward only if its promotion had already been routed; a version its
    // watch failed (or an operator aborted) never does.
    let judged_out = matches!(folded.failing, Some((Cause::Watch | Cause::Aborted, _)));
    let finish = asked && !judged_out && (kind != StrategyKind::Canary || rollout.settled());
    // A first deploy that already served has nothing to go back to: it is finished instead.
    let forced = !finish && old.is_none() && !rollout.serving.is_empty();
    if finish || forced {
        // Killed before its pre_deploy hook passed: nothing of it started; run it now.
        if finish && record.kind == DeployKind::Deploy && !super::hooks::passed(journal) {
            d.pre_deploy(spec, id, kind, old.as_ref(), &record.to_version)
                .await?;
        }
        let after = match record.kind {
            DeployKind::Deploy => HookPoint::PostDeploy,
            DeployKind::Rollback => HookPoint::OnRollback,
        };
        let report = go_forward(d, rollout, old, &reason, forced, after).await?;
        return Ok(
            report.map(|r| rollout_report(r, record.kind, record.from_version.clone(), started))
        );
    }
    go_back(d, rollout, record, old, wanted, &reason, started).await
}

/// Restores the version live before the interrupted deployment and finishes that as failed
/// (interrupted). For a `rollback`, undoing it was the rollback: its report is returned.
async fn go_back<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
    d: &Deployer<'_, R, P, N, S, H>,
    mut rollout: Rollout<'_>,
    record: &DeploymentRecord,
    old: Option<Slot>,
    wanted: Wanted<'_>,
    reason: &str,
    started: Instant,
) -> Result<Option<DeployReport>, DeployError> {
    let back_to = old
        .as_ref()
        .map_or("nothing".to_owned(), |s| s.version.to_string());
    let why = match record.strategy == StrategyKind::Canary.as_str() {
        true => "an unfinished canary is not promoted unjudged, so ",
        false => "",
    };
    let message = format!("{reason}; {why}{back_to} was restored");
    let step = Step::Failing {
        cause: Cause::Interrupted,
        reason: message.clone(),
    };
    d.journal(record.id, &rollout.spec.name, step)?;
    restore(d, &mut rollout, old.as_ref(), &message).await?;
    if old.is_some() {
        // Told as a rollback: from the interrupted version to the one restored.
        rollout.previous = Some(record.to_version.clone());
        rollout.after_hook(d, HookPoint::OnRollback).await?;
    }
    match (wanted, old) {
        (Wanted::Rollback, Some(old)) => {
            rollout.target = old.version.clone();
            rollout.color = old.color;
            let from = Some(record.to_version.clone());
            Ok(Some(rollout_report(
                rollout,
                DeployKind::Rollback,
                from,
                started,
            )))
        }
        _ => Ok(None),
    }
}

/// The retained instances of the version a rollback was bringing back.
fn retained<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
    d: &Deployer<'_, R, P, N, S, H>,
    spec: &ServiceSpec,
    record: &DeploymentRecord,
) -> Result<Vec<Instance>, DeployError> {
    Ok(d.store
        .service(&spec.name)?
        .retained
        .iter()
        .filter(|s| s.version == record.to_version)
        .flat_map(|s| s.instances.iter().cloned())
        .collect())
}

/// Finishes the interrupted rollout towards its own target. Returns the rollout when
/// finishing it was what the command asked for (not `forced`).
async fn go_forward<'r, R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
    d: &Deployer<'_, R, P, N, S, H>,
    mut rollout: Rollout<'r>,
    old: Option<Slot>,
    reason: &str,
    forced: bool,
    after: HookPoint,
) -> Result<Option<Rollout<'r>>, DeployError> {
    let (spec, id) = (rollout.spec, rollout.id);
    if rollout.has_gap() && !spec.rolling.allow_downtime && old.is_some() {
        // The config changed since: finishing would empty the upstream. Go back instead.
        let message = format!("{reason}; finishing it would leave no replica in the upstream (allow_downtime is not set), so the previous version was restored");
        let failure = Failure::new(Cause::Interrupted, message);
        return Err(d.after_failure(rollout, old, failure).await);
    }
    match rollout.converge(d).await {
        Ok(()) => {}
        Err(Halt::Env(e)) => return Err(e),
        Err(Halt::Move(f)) => {
            let failure = f.context(reason);
            let err = d.after_failure(rollout, old, failure).await;
            // Finishing it was not what this command asked: its failure is history.
            return match err {
                DeployError::Failed { .. } if forced => Ok(None),
                err => Err(err),
            };
        }
    }
    let done = match rollout.reports_batches() {
        true => format!(
            "{reason}; finished on resume in {} batch(es)",
            rollout.report.batches.len()
        ),
        false => format!("{reason}; completed on resume"),
    };
    d.complete(spec, id, &done).await?;
    rollout.after_hook(d, after).await?;
    Ok((!forced).then_some(rollout))
}

/// Makes the service consistent: nginx serves healthy replicas the journal says it served
/// (or was about to) on the stable track, the workers that routed elsewhere are gone, and
/// every other instance the deployment touched is stopped or removed. Returns the rollout
/// from there.
async fn reconcile<'r, R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
    d: &Deployer<'_, R, P, N, S, H>,
    spec: &'r ServiceSpec,
    id: DeploymentId,
    folded: &Folded,
    kind: StrategyKind,
    reason: &str,
) -> Result<Rollout<'r>, DeployError> {
    let (candidate, serving) = choose(d, spec, folded).await;
    let reapply = folded.pending.is_some()
        || folded.confirmed.canary.is_some()
        || serving.len() != candidate.len();
    let mut rollout = Rollout::new(spec, id, kind, folded.instances(&folded.confirmed.stable));
    rollout.remember_ports(&folded.known);
    if reapply && !serving.is_empty() {
        match rollout.route(d, 0, serving.clone(), None).await? {
            Ok(Some(reload)) => {
                rollout.drain(d, &reload).await?;
            }
            Ok(None) => {}
            Err(f) => {
                return Err(DeployError::Environment(format!(
                    "{reason}; re-applying what nginx served failed: {}",
                    f.message
                )))
            }
        }
    }
    rollout.serving = serving.clone();
    // Nothing that left the upstream stops before the workers that routed to it are gone.
    if let (false, Some(reload)) = (reapply, &folded.undrained) {
        rollout.drain(d, reload).await?;
    }
    let mut strays = Vec::new();
    for i in folded
        .known
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

/// What nginx is to serve on resume, and the set it came from. A change killed before its
/// confirmation left nginx on one of the two sets: the intended one if all of it is healthy
/// (and it puts no canary in traffic), else the confirmed one; of either, only the replicas
/// healthy now.
async fn choose<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
    d: &Deployer<'_, R, P, N, S, H>,
    spec: &ServiceSpec,
    folded: &Folded,
) -> (Vec<Instance>, Vec<Instance>) {
    let confirmed = folded.instances(&folded.confirmed.stable);
    let intended = folded
        .pending
        .as_ref()
        .filter(|p| p.canary.is_none())
        .map(|p| folded.instances(&p.stable))
        .filter(|i| !i.is_empty());
    if let Some(intended) = intended {
        let up = healthy_only(d, spec, &intended).await;
        if up.len() == intended.len() {
            return (intended, up);
        }
    }
    let up = healthy_only(d, spec, &confirmed).await;
    (confirmed, up)
}
