//! The post-cutover watch (`watch = "2m"`), for every strategy: once the new version takes
//! all traffic, [`Deployer::watch`] keeps judging it every `[service.canary] interval` over
//! the trailing `window`, against the same thresholds, until `watch` is over. Meanwhile the
//! previous version stays ready: blue-green and canary keep its replicas running, out of
//! the upstream and drained; rolling and in-place, whose point is bounded capacity, stopped
//! them batch by batch as their bounds require and keep them stopped.
//!
//! The first failed check is a fast-track rollback ([`Deployer::watch_failed`]): no new
//! analysis, no failure limit. Kept replicas that answer their health check now take all
//! traffic back in one confirmed change, and the new replicas are removed once its workers
//! are gone; otherwise the previous version is restored in moves within the strategy's
//! bounds, as after any failed move. Checks without a verdict (too few requests) are told
//! and journaled but end nothing: the version is live already, and only evidence of harm
//! takes it out. `switchyard promote` ends the watch early; `switchyard abort` rolls back
//! (both looked for every half second, between checks). Each check measures only since the
//! cutover (at most `window`): before it, the stable track was the previous version.
//!
//! Crash safety: a process killed during the watch left a journal whose last change routed
//! to the new replicas, with the old ones out of the upstream, which is what
//! [`super::resume`] finishes (it stops the kept replicas; the watch is not resumed). Killed
//! on the way back, after `failing` (cause `watch` or `aborted`), it is never finished
//! forward: resume goes back to the previous version, even for `deploy` of the same one.

use std::time::Duration;

use tokio::time::Instant;

use super::canary::gate::{Gate, StepEnd};
use super::health::healthy_only;
use super::rollout::{Halt, Rollout};
use super::{DeployError, Deployer};
use crate::judge::{Measurement, Track, TrackWindow, Verdict};
use crate::model::*;
use crate::seams::*;

/// A canary's last step and the watch: the new version has all the traffic.
const ALL: u32 = 10_000;
/// How often a watch looks for `promote` or `abort` between its checks.
const POLL: Duration = Duration::from_millis(500);

/// When the watch a deployment's journal is in ends (ms since the epoch), if the last
/// step other than its checks began one; for `status`.
pub fn watching_until(journal: &[JournalEntry]) -> Option<i64> {
    let last = journal
        .iter()
        .rev()
        .find(|e| !matches!(e.step, Step::Analysis { .. }))?;
    match &last.step {
        Step::Watching { for_ms, .. } => Some(last.at_ms + *for_ms as i64),
        _ => None,
    }
}

/// Why `control` cannot reach the running deployment `d` (of `service`), if it cannot: a
/// canary takes promote, abort and pause; a deployment in its post-cutover watch takes
/// promote (end the watch) and abort (route back); nothing else takes any.
pub fn refuses_control(
    d: &DeploymentRecord,
    journal: &[JournalEntry],
    service: &str,
    control: Control,
) -> Option<String> {
    let watching = watching_until(journal).is_some();
    match (d.strategy.as_str(), watching, control) {
        (_, true, Control::Pause) => Some(format!(
            "deployment #{} of {service} is in its post-cutover watch: it can be promoted (ending the watch) or aborted (routing back), not paused",
            d.id
        )),
        ("canary", _, _) | (_, true, _) => None,
        (strategy, false, _) => Some(format!(
            "deployment #{} of {service} is {strategy}: only a canary, or a deploy in its post-cutover watch (`watch`), can be promoted or aborted, and only a canary paused",
            d.id
        )),
    }
}

/// What a rollout without a watch is given for its metrics: never asked.
pub struct Unwatched;

impl MetricSource for Unwatched {
    async fn measure(&self, _: &TrackWindow) -> Result<Measurement, MetricError> {
        Err(MetricError("no metric source: not watched".into()))
    }
}

impl<R: Runtime, P: Prober, N: Router, S: Store, H: Host> Deployer<'_, R, P, N, S, H> {
    /// Judges the rollout's target for `watch` after it took all traffic, then stops the
    /// replicas the rollout kept running (`rollout.kept`). A failed check or an abort is a
    /// failed move, for [`Deployer::watch_failed`].
    pub(super) async fn watch<M: MetricSource>(
        &self,
        rollout: &mut Rollout<'_>,
        old: &Slot,
        metrics: &M,
    ) -> Result<(), Halt> {
        let (spec, id) = (rollout.spec, rollout.id);
        let kept: Vec<String> = rollout.kept.iter().map(|i| i.id.clone()).collect();
        let step = Step::Watching {
            for_ms: spec.watch.as_millis() as u64,
            kept: kept.clone(),
        };
        self.journal(id, &spec.name, step)?;
        self.observer.event(&Event::Watching {
            for_ms: spec.watch.as_millis() as u64,
            kept: kept.len(),
        });
        let gate = Gate {
            d: self,
            spec,
            id,
            stable: &old.version,
            canary: &rollout.target,
            metrics,
        };
        let cutover = Instant::now();
        let until = cutover + spec.watch;
        let mut next = cutover + spec.canary.interval;
        let mut checks = 0u32;
        let promoted = loop {
            if next > until {
                break false;
            }
            // Between checks: an abort or promote acts within a poll, and the lock stays fresh.
            tokio::time::sleep_until(next.min(Instant::now() + POLL)).await;
            match gate.control()? {
                Some(StepEnd::Promoted) => break true,
                Some(StepEnd::RollBack(f)) => return Err(Halt::Move(f)),
                Some(StepEnd::Passed) | None => {}
            }
            self.store
                .heartbeat(&spec.name, self.host.pid(), self.host.now_ms())
                .map_err(DeployError::from)?;
            if Instant::now() < next {
                continue;
            }
            next += spec.canary.interval;
            checks += 1;
            // Only since the cutover: before it, the stable track was the previous version.
            let window = spec.canary.window.min(cutover.elapsed());
            if let Verdict::Fail(reason) = gate.judge_track(ALL, Track::Stable, window).await? {
                let message = format!(
                    "watching {} after it took all traffic, check {checks}: {reason}",
                    rollout.target
                );
                return Err(Halt::Move(Failure::new(Cause::Watch, message)));
            }
        };
        self.observer.event(&Event::Watched { checks, promoted });
        let kept = std::mem::take(&mut rollout.kept);
        rollout.retire(self, &kept).await?;
        Ok(())
    }

    /// After a failed watch: all traffic back to the kept replicas at once if every one of
    /// them answers its health check, the new replicas removed after the drain; otherwise
    /// the previous version restored in moves ([`Deployer::after_failure`]).
    pub(super) async fn watch_failed(
        &self,
        mut rollout: Rollout<'_>,
        old: Slot,
        failure: Failure,
    ) -> DeployError {
        let kept = std::mem::take(&mut rollout.kept);
        rollout.keep_old = false;
        let ready =
            !kept.is_empty() && healthy_only(self, rollout.spec, &kept).await.len() == kept.len();
        if !ready {
            // The restore journals `failing` first, then restarts the kept replicas (the
            // previous slot's own) and waits until they are healthy, in moves.
            return self.after_failure(rollout, Some(old), failure).await;
        }
        let message = format!(
            "{}; all traffic routed back to {} at once (fast-track rollback, no new analysis)",
            failure.message, old.version
        );
        match self.route_back(&mut rollout, kept, &failure, &message).await {
            Ok(()) => {}
            Err(e) => {
                return DeployError::Environment(format!(
                    "{message}; routing back failed: {e}; `switchyard status` shows the state, the next deploy or rollback finishes it"
                ))
            }
        }
        self.rolled_back(rollout, &old, failure.cause, message)
            .await
    }

    /// One confirmed change back to `kept`, its drain, the new replicas removed, finished
    /// as failed.
    async fn route_back(
        &self,
        rollout: &mut Rollout<'_>,
        kept: Vec<Instance>,
        failure: &Failure,
        message: &str,
    ) -> Result<(), DeployError> {
        let (spec, id) = (rollout.spec, rollout.id);
        let step = Step::Failing {
            cause: failure.cause,
            reason: message.to_owned(),
        };
        self.journal(id, &spec.name, step)?;
        let new = rollout.serving.clone();
        let reload = match rollout.route(self, 0, kept, None).await? {
            Ok(reload) => reload.expect("the kept replicas are not empty"),
            Err(f) => return Err(DeployError::Environment(f.message)),
        };
        rollout.drain(self, &reload).await?;
        self.observer.event(&Event::RolledBack {
            generation: reload.generation,
            reason: failure.message.clone(),
        });
        rollout.discard(self, &new).await?;
        self.finish(id, Outcome::Failed, message)
    }
}
