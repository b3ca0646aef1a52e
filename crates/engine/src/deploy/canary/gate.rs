//! The gate after each canary step: [`Gate::analyze`] (the judge every interval until the
//! hold is over, or a pause someone asked for), [`Gate::pause`] (waiting for `switchyard
//! promote`, still judging), and [`Gate::control`] (promote or abort requests left in the
//! store; a pause request is taken by `analyze`).

use std::time::Duration;

use tokio::time::Instant;

use crate::config::ServiceSpec;
use crate::deploy::{DeployError, Deployer};
use crate::judge::{judge, Measurement, Track, TrackWindow, Verdict};
use crate::model::*;
use crate::names::Version;
use crate::seams::*;

/// How often a paused canary looks for `promote` or `abort`.
const PAUSE_POLL: Duration = Duration::from_millis(500);

/// How a step's wait ended.
pub(in crate::deploy) enum StepEnd {
    Passed,
    Promoted,
    RollBack(Failure),
}

/// What a gate judges: the canary `canary` of one deployment against the stable version.
pub(in crate::deploy) struct Gate<'g, 'd, R, P, N, S, H, M> {
    pub d: &'g Deployer<'d, R, P, N, S, H>,
    pub spec: &'g ServiceSpec,
    pub id: DeploymentId,
    pub stable: &'g Version,
    pub canary: &'g Version,
    pub metrics: &'g M,
}

impl<R: Runtime, P: Prober, N: Router, S: Store, H: Host, M: MetricSource>
    Gate<'_, '_, R, P, N, S, H, M>
{
    /// Judges the canary every `interval` until the hold is over with a pass, or a limit is
    /// reached, or someone promotes or aborts.
    pub(super) async fn analyze(&self, weight_bp: u32) -> Result<StepEnd, DeployError> {
        let c = &self.spec.canary;
        // The passing check must measure only this step: the hold lasts at least one window.
        let hold_until = Instant::now() + c.hold.max(c.window);
        let (mut failures, mut silent) = (0u32, 0u32);
        let at = percent(weight_bp);
        loop {
            tokio::time::sleep(c.interval).await;
            match self.d.store.take_control(self.id)? {
                Some(Control::Pause) => return Box::pin(self.pause(weight_bp)).await,
                Some(other) => {
                    if let Some(end) = self.end_for(other) {
                        return Ok(end);
                    }
                }
                None => {}
            }
            match self.check(weight_bp).await? {
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
                        let message = format!(
                            "at {at}%: {reason} ({failures} failed check(s), limit {})",
                            c.failure_limit
                        );
                        return Ok(StepEnd::RollBack(Failure::new(Cause::Threshold, message)));
                    }
                }
                Verdict::NoData(reason) | Verdict::Inconclusive(reason) => {
                    silent += 1;
                    if silent >= c.inconclusive_limit {
                        let message = format!(
                            "at {at}%: {silent} checks in a row without a verdict (limit {}), the last: {reason}; a canary is never promoted without data",
                            c.inconclusive_limit
                        );
                        return Ok(StepEnd::RollBack(Failure::new(Cause::NoData, message)));
                    }
                }
            }
        }
    }

    /// One judgement of the canary over the trailing window: measured (with the stable
    /// baseline when configured), journaled and reported.
    async fn check(&self, weight_bp: u32) -> Result<Verdict, DeployError> {
        self.judge_track(weight_bp, Track::Canary, self.spec.canary.window)
            .await
    }

    /// One judgement of the new version on `track` over the trailing `window` (the canary
    /// track during the steps, the stable one once it takes all traffic, where there is no
    /// baseline beside it).
    pub(in crate::deploy) async fn judge_track(
        &self,
        weight_bp: u32,
        track: Track,
        window: Duration,
    ) -> Result<Verdict, DeployError> {
        let c = &self.spec.canary;
        let query = |track, version: &Version| TrackWindow {
            service: self.spec.name.clone(),
            track,
            version: version.clone(),
            window,
        };
        let canary = self.metrics.measure(&query(track, self.canary)).await;
        let baseline = match c.policy.baseline_margin {
            Some(_) if track == Track::Canary => Some(
                self.metrics
                    .measure(&query(Track::Stable, self.stable))
                    .await,
            ),
            _ => None,
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
        self.d.journal(self.id, &self.spec.name, step)?;
        self.d.observer.event(&Event::Analysis {
            weight_bp,
            verdict: verdict.clone(),
            measurement,
        });
        Ok(verdict)
    }

    /// Waits for `switchyard promote` (go on) or `switchyard abort` (roll back), judging the
    /// canary every interval meanwhile: a canary held at a step for hours can still fail, and
    /// `failure_limit` failed checks roll it back.
    pub(super) async fn pause(&self, weight_bp: u32) -> Result<StepEnd, DeployError> {
        let (c, d) = (&self.spec.canary, self.d);
        d.journal(self.id, &self.spec.name, Step::Paused { weight_bp })?;
        d.observer.event(&Event::Paused { weight_bp });
        let mut next_check = Instant::now() + c.interval;
        let mut failures = 0u32;
        loop {
            if let Some(end) = self.control()? {
                return Ok(end);
            }
            if Instant::now() >= next_check {
                next_check += c.interval;
                if let Verdict::Fail(reason) = self.check(weight_bp).await? {
                    failures += 1;
                    if failures >= c.failure_limit {
                        let at = percent(weight_bp);
                        let message = format!(
                            "while paused at {at}%: {reason} ({failures} failed check(s), limit {})",
                            c.failure_limit
                        );
                        return Ok(StepEnd::RollBack(Failure::new(Cause::Threshold, message)));
                    }
                }
            }
            d.store
                .heartbeat(&self.spec.name, d.host.pid(), d.host.now_ms())?;
            tokio::time::sleep(PAUSE_POLL.min(c.interval)).await;
        }
    }

    /// A promote or abort request left for this deployment, if any (a pause request, where
    /// nothing is analyzed or the canary is paused already, is taken and has nothing to do).
    pub(in crate::deploy) fn control(&self) -> Result<Option<StepEnd>, DeployError> {
        Ok(self
            .d
            .store
            .take_control(self.id)?
            .and_then(|c| self.end_for(c)))
    }

    /// How a request ends a step: promote goes on, abort rolls back, pause does not end one.
    fn end_for(&self, control: Control) -> Option<StepEnd> {
        match control {
            Control::Promote => Some(StepEnd::Promoted),
            Control::Abort => Some(StepEnd::RollBack(Failure::new(
                Cause::Aborted,
                "aborted by `switchyard abort`",
            ))),
            Control::Pause => None,
        }
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
