//! The `[service.canary]` table: [`CanarySpec`], merged field by field over the compiled-in
//! `strategies/canary.toml` preset and validated with the same line-and-field errors.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::Checker;
use crate::judge::Policy;
use crate::names::{RequestKey, RouteMatch};

/// How a canary moves and is judged.
#[derive(Debug, Clone, PartialEq)]
pub struct CanarySpec {
    /// Traffic shares in hundredths of a percent, strictly increasing, ending at 10_000.
    pub steps: Vec<u32>,
    pub hold: Duration,
    pub interval: Duration,
    pub window: Duration,
    pub policy: Policy,
    pub failure_limit: u32,
    pub inconclusive_limit: u32,
    /// Keeps each user on one side across steps; None splits per request.
    pub sticky: Option<RequestKey>,
    /// Requests that always go to the canary (testers first).
    pub route: Option<RouteMatch>,
    /// Steps (in hundredths of a percent) after which the deploy waits for `promote`.
    pub pause_after: Vec<u32>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCanary {
    steps: Option<Spanned<Vec<f64>>>,
    hold: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    window: Option<Spanned<String>>,
    max_error_rate: Option<Spanned<f64>>,
    max_p99_latency: Option<Spanned<String>>,
    min_requests: Option<Spanned<u32>>,
    failure_limit: Option<Spanned<u32>>,
    inconclusive_limit: Option<Spanned<u32>>,
    baseline_margin: Option<Spanned<f64>>,
    sticky: Option<Spanned<RawKey>>,
    route: Option<Spanned<RawRoute>>,
    pause: Option<Spanned<Vec<f64>>>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawKey {
    header: Option<String>,
    cookie: Option<String>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    header: Option<String>,
    cookie: Option<String>,
    value: String,
}

impl RawCanary {
    /// The service's value where it set one, the preset's otherwise.
    pub(super) fn over(self, preset: RawCanary) -> RawCanary {
        RawCanary {
            steps: self.steps.or(preset.steps),
            hold: self.hold.or(preset.hold),
            interval: self.interval.or(preset.interval),
            window: self.window.or(preset.window),
            max_error_rate: self.max_error_rate.or(preset.max_error_rate),
            max_p99_latency: self.max_p99_latency.or(preset.max_p99_latency),
            min_requests: self.min_requests.or(preset.min_requests),
            failure_limit: self.failure_limit.or(preset.failure_limit),
            inconclusive_limit: self.inconclusive_limit.or(preset.inconclusive_limit),
            baseline_margin: self.baseline_margin.or(preset.baseline_margin),
            sticky: self.sticky.or(preset.sticky),
            route: self.route.or(preset.route),
            pause: self.pause.or(preset.pause),
        }
    }
}

const STEP_BELOW_100: &str =
    "a canary needs a step below 100: it is judged there before it gets all traffic";

fn key(header: &Option<String>, cookie: &Option<String>) -> Result<RequestKey, String> {
    match (header, cookie) {
        (Some(h), None) => RequestKey::header(h),
        (None, Some(c)) => RequestKey::cookie(c),
        _ => Err("set exactly one of `header` or `cookie`".into()),
    }
}

/// Percentages to hundredths of a percent: 0 < p <= 100, two decimals at most.
fn basis_points(percents: &[f64]) -> Result<Vec<u32>, String> {
    percents
        .iter()
        .map(|&p| {
            let bp = (p * 100.0).round();
            if p > 0.0 && p <= 100.0 && (p * 100.0 - bp).abs() < 1e-6 {
                Ok(bp as u32)
            } else {
                Err(format!(
                    "{p} is not a percentage in (0, 100] with at most two decimals"
                ))
            }
        })
        .collect()
}

/// Where every `[service.canary]` error points.
const F: &str = "service.canary";

impl Checker<'_> {
    pub(super) fn canary(&mut self, raw: RawCanary) -> CanarySpec {
        let (steps, pause_after) = self.canary_steps(&raw);
        let (hold, interval, window) = self.canary_timing(&raw);
        let policy = self.canary_policy(&raw);
        let sticky = raw
            .sticky
            .as_ref()
            .and_then(|k| self.check(k, &format!("{F}.sticky"), |k| key(&k.header, &k.cookie)));
        let route = raw.route.as_ref().and_then(|r| {
            self.check(r, &format!("{F}.route"), |r| {
                RouteMatch::new(key(&r.header, &r.cookie)?, &r.value)
            })
        });
        CanarySpec {
            steps: steps.unwrap_or_else(|| vec![10_000]),
            hold,
            interval,
            window,
            policy,
            failure_limit: raw.failure_limit.map_or(1, |l| l.into_inner().max(1)),
            inconclusive_limit: raw.inconclusive_limit.map_or(12, |l| l.into_inner().max(1)),
            sticky,
            route,
            pause_after: pause_after.unwrap_or_default(),
        }
    }

    /// `steps` and `pause`, in basis points; every pause must be one of the steps below 100.
    fn canary_steps(&mut self, raw: &RawCanary) -> (Option<Vec<u32>>, Option<Vec<u32>>) {
        let steps = raw.steps.as_ref().and_then(|s| {
            self.check(s, &format!("{F}.steps"), |p| {
                let steps = basis_points(p)?;
                if steps.windows(2).any(|w| w[0] >= w[1]) {
                    return Err("steps must increase".into());
                }
                if steps.last() != Some(&10_000) {
                    return Err("the last step must be 100".into());
                }
                if steps.len() < 2 {
                    return Err(STEP_BELOW_100.into());
                }
                Ok(steps)
            })
        });
        let pause_after = raw
            .pause
            .as_ref()
            .and_then(|p| self.check(p, &format!("{F}.pause"), |p| basis_points(p)));
        if let (Some(steps), Some(pause), Some(raw_pause)) = (&steps, &pause_after, &raw.pause) {
            if let Some(bad) = pause.iter().find(|p| !steps.contains(p) || **p == 10_000) {
                self.push(
                    Some(raw_pause.span()),
                    &format!("{F}.pause"),
                    format!("{} is not one of the steps below 100", *bad as f64 / 100.0),
                );
            }
        }
        (steps, pause_after)
    }

    /// `hold`, `interval` (more than 0) and `window`, each 30s when unset.
    fn canary_timing(&mut self, raw: &RawCanary) -> (Duration, Duration, Duration) {
        let duration = |c: &mut Self, v: &Option<Spanned<String>>, name: &str| {
            c.duration(v, &format!("{F}.{name}"), Duration::from_secs(30))
        };
        let hold = duration(self, &raw.hold, "hold");
        let interval = duration(self, &raw.interval, "interval");
        if interval.is_zero() {
            if let Some(i) = &raw.interval {
                self.push(
                    Some(i.span()),
                    &format!("{F}.interval"),
                    "must be more than 0".into(),
                );
            }
        }
        let window = duration(self, &raw.window, "window");
        (hold, interval, window)
    }

    /// The judge's thresholds: `max_error_rate`, `baseline_margin`, `max_p99_latency` and
    /// `min_requests`.
    fn canary_policy(&mut self, raw: &RawCanary) -> Policy {
        let max_error_rate = self.fraction(&raw.max_error_rate, "max_error_rate");
        let baseline_margin = self.fraction(&raw.baseline_margin, "baseline_margin");
        let max_p99_latency = raw.max_p99_latency.as_ref().and_then(|l| {
            self.check(l, &format!("{F}.max_p99_latency"), |l| {
                super::parse_duration(l)
            })
        });
        Policy {
            max_error_rate: max_error_rate.unwrap_or(0.01),
            max_p99_latency,
            min_requests: f64::from(raw.min_requests.as_ref().map_or(100, |m| *m.get_ref())),
            baseline_margin,
        }
    }

    /// A fraction in [0, 1] at `service.canary.<name>`.
    fn fraction(&mut self, v: &Option<Spanned<f64>>, name: &str) -> Option<f64> {
        v.as_ref().and_then(|v| {
            self.check(v, &format!("{F}.{name}"), |&v| {
                if (0.0..=1.0).contains(&v) {
                    Ok(v)
                } else {
                    Err(format!("{v} is not a fraction in [0, 1]"))
                }
            })
        })
    }
}
