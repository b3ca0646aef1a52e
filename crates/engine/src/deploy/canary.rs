//! The canary strategy: [`Deployer::canary`].
//!
//! The new version starts beside the stable one and, once healthy, gets traffic in steps
//! (`CanarySpec::steps`), each one validated and confirmed reload. During each step's hold
//! the judge checks the canary every `interval` over the trailing `window`: a pass once the
//! hold is over advances; `failure_limit` failed checks, or `inconclusive_limit` checks in a
//! row without a verdict (no data, too few requests, metrics unreachable), roll back; the
//! canary is never promoted blind. `switchyard promote` skips the rest of a hold or a pause,
//! `switchyard abort` rolls back now. Rolling back is one reload to weight 0 (everything on
//! stable), a drain, then the canary's removal; promoting is the blue-green flip to the
//! canary, then the old slot is drained, stopped and kept. Before each reload the workers of
//! the previous one are waited for, so at most one set of old workers drains at a time.

use std::time::Duration;

use tokio::time::Instant;

use super::{health, recover, upstream_set, DeployError, DeployReport, Deployer, Target};
use crate::config::{ServiceSpec, StrategyKind};
use crate::judge::{judge, Measurement, Track, TrackWindow, Verdict};
use crate::model::*;
use crate::names::Version;
use crate::seams::*;

/// How long a rollback waits for the last step's old workers before its own reload.
const ROLLBACK_DRAIN_WAIT: Duration = Duration::from_secs(1);

/// How often a paused canary looks for `promote` or `abort`.
const PAUSE_POLL: Duration = Duration::from_millis(500);

/// How a step's wait ended.
enum StepEnd {
    Passed,
    Promoted,
    RollBack(String),
}

impl<R: Runtime, P: Prober, N: Router, S: Store, H: Host> Deployer<'_, R, P, N, S, H> {
    /// Deploys `version` of `spec` as a canary judged by `metrics`.
    pub async fn canary<M: MetricSource>(
        &self,
        spec: &ServiceSpec,
        version: &Version,
        metrics: &M,
    ) -> Result<DeployReport, DeployError> {
        self.locked(
            spec,
            "deploy",
            super::Wanted::Deploy(version),
            |d| async move { d.run_canary(spec, version, metrics).await },
        )
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
                .run(spec, DeployKind::Deploy, Target::Fresh(version.clone()))
                .await;
        };
        let started = Instant::now();
        let color = old.color.other();
        let id = self.begin(
            spec,
            DeployKind::Deploy,
            StrategyKind::Canary,
            Some(&old),
            version,
            color,
        )?;
        let mut new = Vec::new();
        if let Err(message) = self.start_fresh(spec, id, version, color, &mut new).await {
            return Err(self.abort(spec, id, &new, Some(&old), message).await);
        }
        let healthy_ms = match health::journaled(self, spec, id, &new).await? {
            Ok(ms) => ms,
            Err(message) => return Err(self.abort(spec, id, &new, Some(&old), message).await),
        };

        let c = &spec.canary;
        let mut live: Option<Reload> = None;
        for &weight_bp in c.steps.iter().filter(|&&w| w < 10_000) {
            // An abort that arrived during the health wait or a drain acts before the next step.
            if let Some(StepEnd::RollBack(reason)) = self.control(id)? {
                return Err(self
                    .roll_back_canary(spec, id, &old, &new, live.as_ref(), reason)
                    .await);
            }
            let reload = match self
                .shift(spec, id, &old, &new, weight_bp, live.as_ref())
                .await?
            {
                Ok(reload) => reload,
                Err(message) => {
                    let reason = format!(
                        "at {}%: nginx refused the step: {message}",
                        percent(weight_bp)
                    );
                    return Err(self
                        .roll_back_canary(spec, id, &old, &new, live.as_ref(), reason)
                        .await);
                }
            };
            live = Some(reload);
            let end = match self
                .analyze(spec, id, &old, version, weight_bp, metrics)
                .await?
            {
                StepEnd::Passed if c.pause_after.contains(&weight_bp) => {
                    self.pause(spec, id, &old, version, weight_bp, metrics)
                        .await?
                }
                end => end,
            };
            if let StepEnd::RollBack(reason) = end {
                return Err(self
                    .roll_back_canary(spec, id, &old, &new, live.as_ref(), reason)
                    .await);
            }
        }

        if let Some(previous) = &live {
            self.drain(spec, previous).await?;
        }
        // Last chances before all traffic moves: an abort sent meanwhile, or a canary replica
        // that stopped being healthy since its last check.
        if let Some(StepEnd::RollBack(reason)) = self.control(id)? {
            return Err(self
                .roll_back_canary(spec, id, &old, &new, live.as_ref(), reason)
                .await);
        }
        if !recover::slot_healthy_now(self, spec, &new).await {
            let reason = "promoting: a canary replica is not healthy any more".to_owned();
            return Err(self
                .roll_back_canary(spec, id, &old, &new, live.as_ref(), reason)
                .await);
        }
        let reload = match self.route(spec, id, &new).await? {
            Ok(reload) => reload,
            Err(message) => {
                let reason = format!("promoting: nginx refused the flip: {message}");
                return Err(self
                    .roll_back_canary(spec, id, &old, &new, live.as_ref(), reason)
                    .await);
            }
        };
        let (drained, warnings) = self.retire(spec, id, &reload, Some(&old)).await?;
        self.complete(spec, id, "canary promoted").await?;
        Ok(DeployReport {
            deployment: id,
            service: spec.name.clone(),
            kind: DeployKind::Deploy,
            from: Some(old.version),
            to: version.clone(),
            color,
            healthy_ms,
            reload,
            drained,
            total_ms: started.elapsed().as_millis() as u64,
            warnings,
            rollout: None,
        })
    }

    async fn drain(&self, spec: &ServiceSpec, reload: &Reload) -> Result<Drained, DeployError> {
        self.router
            .wait_drained(reload, spec.drain_timeout)
            .await
            .map_err(|e| DeployError::Environment(e.to_string()))
    }

    /// One step: `weight_bp` to the canary, in one confirmed reload, after the previous
    /// reload's workers are gone. The inner error means nginx refused and nothing changed.
    async fn shift(
        &self,
        spec: &ServiceSpec,
        id: DeploymentId,
        old: &Slot,
        new: &[Instance],
        weight_bp: u32,
        previous: Option<&Reload>,
    ) -> Result<Result<Reload, String>, DeployError> {
        if let Some(previous) = previous {
            self.drain(spec, previous).await?;
        }
        let set = canary_set(spec, old, new, weight_bp);
        let backends = new.iter().map(Instance::addr).collect();
        self.journal(
            id,
            &spec.name,
            Step::Shift {
                weight_bp,
                backends,
            },
        )?;
        match self.router.apply(&set).await {
            Ok(reload) => {
                let step = Step::Shifted {
                    weight_bp,
                    generation: reload.generation,
                    old_workers: reload.old_workers.clone(),
                };
                self.journal(id, &spec.name, step)?;
                self.observer.event(&Event::Shifted {
                    weight_bp,
                    generation: reload.generation,
                    confirm_ms: reload.confirm_ms,
                });
                Ok(Ok(reload))
            }
            Err(e) => Ok(Err(e.to_string())),
        }
    }

    /// Judges the canary every `interval` until the hold is over with a pass, or a limit is
    /// reached, or someone promotes or aborts.
    async fn analyze<M: MetricSource>(
        &self,
        spec: &ServiceSpec,
        id: DeploymentId,
        old: &Slot,
        version: &Version,
        weight_bp: u32,
        metrics: &M,
    ) -> Result<StepEnd, DeployError> {
        let c = &spec.canary;
        // The passing check must measure only this step: the hold lasts at least one window.
        let hold_until = Instant::now() + c.hold.max(c.window);
        let (mut failures, mut silent) = (0u32, 0u32);
        loop {
            tokio::time::sleep(c.interval).await;
            if let Some(end) = self.control(id)? {
                return Ok(end);
            }
            let verdict = self
                .check(spec, id, old, version, weight_bp, metrics)
                .await?;
            let at = percent(weight_bp);
            match verdict {
                Verdict::Pass(_) => {
                    silent = 0;
                    if Instant::now() >= hold_until {
                        return Ok(StepEnd::Passed);
                    }
                }
                Verdict::Fail(reason) => {
                    silent = 0;
                    failures += 1;
                    if failures >= c.failure_limit {
                        return Ok(StepEnd::RollBack(format!(
                            "at {at}%: {reason} ({failures} failed check(s), limit {})",
                            c.failure_limit
                        )));
                    }
                }
                Verdict::NoData(reason) | Verdict::Inconclusive(reason) => {
                    silent += 1;
                    if silent >= c.inconclusive_limit {
                        return Ok(StepEnd::RollBack(format!(
                            "at {at}%: {silent} checks in a row without a verdict (limit {}), the last: {reason}; a canary is never promoted without data",
                            c.inconclusive_limit
                        )));
                    }
                }
            }
        }
    }

    /// One judgement of the canary over the trailing window: measured (with the stable
    /// baseline when configured), journaled and reported.
    async fn check<M: MetricSource>(
        &self,
        spec: &ServiceSpec,
        id: DeploymentId,
        old: &Slot,
        version: &Version,
        weight_bp: u32,
        metrics: &M,
    ) -> Result<Verdict, DeployError> {
        let c = &spec.canary;
        let query = |track, version: &Version| TrackWindow {
            service: spec.name.clone(),
            track,
            version: version.clone(),
            window: c.window,
        };
        let canary = metrics.measure(&query(Track::Canary, version)).await;
        let baseline = match c.policy.baseline_margin {
            Some(_) => Some(metrics.measure(&query(Track::Stable, &old.version)).await),
            None => None,
        };
        let (verdict, measurement) = match (canary, baseline) {
            (Err(e), _) | (_, Some(Err(e))) => {
                (Verdict::NoData(e.to_string()), Measurement::default())
            }
            (Ok(m), baseline) => (
                judge(&m, baseline.and_then(Result::ok).as_ref(), &c.policy),
                m,
            ),
        };
        let (name, reason) = verdict_parts(&verdict);
        let step = Step::Analysis {
            weight_bp,
            verdict: name.to_owned(),
            detail: reason.to_owned(),
        };
        self.journal(id, &spec.name, step)?;
        self.observer.event(&Event::Analysis {
            weight_bp,
            verdict: verdict.clone(),
            measurement,
        });
        Ok(verdict)
    }

    /// Waits for `switchyard promote` (go on) or `switchyard abort` (roll back), judging the
    /// canary every interval meanwhile: a canary held at a step for hours can still fail, and
    /// `failure_limit` failed checks roll it back.
    #[allow(clippy::too_many_arguments)]
    async fn pause<M: MetricSource>(
        &self,
        spec: &ServiceSpec,
        id: DeploymentId,
        old: &Slot,
        version: &Version,
        weight_bp: u32,
        metrics: &M,
    ) -> Result<StepEnd, DeployError> {
        let c = &spec.canary;
        self.journal(id, &spec.name, Step::Paused { weight_bp })?;
        self.observer.event(&Event::Paused { weight_bp });
        let mut next_check = Instant::now() + c.interval;
        let mut failures = 0u32;
        loop {
            if let Some(end) = self.control(id)? {
                return Ok(end);
            }
            if Instant::now() >= next_check {
                next_check += c.interval;
                if let Verdict::Fail(reason) = self
                    .check(spec, id, old, version, weight_bp, metrics)
                    .await?
                {
                    failures += 1;
                    if failures >= c.failure_limit {
                        let at = percent(weight_bp);
                        return Ok(StepEnd::RollBack(format!("while paused at {at}%: {reason} ({failures} failed check(s), limit {})", c.failure_limit)));
                    }
                }
            }
            self.store
                .heartbeat(&spec.name, self.host.pid(), self.host.now_ms())?;
            tokio::time::sleep(PAUSE_POLL.min(c.interval)).await;
        }
    }

    fn control(&self, id: DeploymentId) -> Result<Option<StepEnd>, DeployError> {
        Ok(self.store.take_control(id)?.map(|c| match c {
            Control::Promote => StepEnd::Promoted,
            Control::Abort => StepEnd::RollBack("aborted by `switchyard abort`".into()),
        }))
    }

    /// Everything back on the stable slot in one reload, drained, then the canary removed.
    /// The stable slot served all along, so it is not health-checked first (that would only
    /// delay the rollback, and fail it if one stable replica flaps); the previous step's
    /// workers get at most [`ROLLBACK_DRAIN_WAIT`], so long-lived connections cannot hold a
    /// bad canary in traffic.
    async fn roll_back_canary(
        &self,
        spec: &ServiceSpec,
        id: DeploymentId,
        old: &Slot,
        new: &[Instance],
        live: Option<&Reload>,
        reason: String,
    ) -> DeployError {
        if let Some(previous) = live {
            let wait = spec.drain_timeout.min(ROLLBACK_DRAIN_WAIT);
            if let Err(e) = self.router.wait_drained(previous, wait).await {
                return DeployError::Environment(e.to_string());
            }
            let set = upstream_set(spec, &old.instances);
            let back = async {
                self.journal(
                    id,
                    &spec.name,
                    Step::RouteBack {
                        backends: set.backends.clone(),
                    },
                )?;
                let reload = self
                    .router
                    .apply(&set)
                    .await
                    .map_err(|e| DeployError::Environment(e.to_string()))?;
                self.observer.event(&Event::Reloaded {
                    generation: reload.generation,
                    confirm_ms: reload.confirm_ms,
                });
                self.drain(spec, &reload).await?;
                self.journal(
                    id,
                    &spec.name,
                    Step::RoutedBack {
                        generation: reload.generation,
                    },
                )?;
                // All traffic on stable and the workers that routed to the canary gone.
                self.observer.event(&Event::RolledBack {
                    generation: reload.generation,
                    reason: reason.clone(),
                });
                Ok::<(), DeployError>(())
            };
            if let Err(e) = back.await {
                return DeployError::Environment(format!(
                    "{reason}; routing everything back to {} failed: {e}; `switchyard status` shows the state, the next deploy or rollback finishes it",
                    old.version
                ));
            }
        }
        self.abort(spec, id, new, Some(old), reason).await
    }
}

/// The stable slot beside the canary, `weight_bp` to the canary.
pub fn canary_set(spec: &ServiceSpec, old: &Slot, new: &[Instance], weight_bp: u32) -> UpstreamSet {
    UpstreamSet {
        service: spec.name.clone(),
        listen: spec.listen,
        backends: old.instances.iter().map(Instance::addr).collect(),
        canary: Some(CanaryRoute {
            backends: new.iter().map(Instance::addr).collect(),
            weight_bp,
            sticky: spec.canary.sticky.clone(),
            route: spec.canary.route.clone(),
        }),
    }
}

fn verdict_parts(v: &Verdict) -> (&'static str, &str) {
    match v {
        Verdict::Pass(r) => ("pass", r),
        Verdict::NoData(r) => ("no_data", r),
        Verdict::Inconclusive(r) => ("inconclusive", r),
        Verdict::Fail(r) => ("fail", r),
    }
}

/// `525` hundredths of a percent as `5.25`, `2500` as `25`.
pub fn percent(weight_bp: u32) -> String {
    let text = format!("{}.{:02}", weight_bp / 100, weight_bp % 100);
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}
