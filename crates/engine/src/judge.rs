//! Judging a canary from measurements: [`judge`] turns a [`Measurement`] of the canary track
//! (and optionally of the stable track, the baseline) into a [`Verdict`] under a [`Policy`].
//!
//! Missing data is never a pass: an empty result or NaN from Prometheus arrives here as
//! `None` and makes the verdict [`Verdict::NoData`]; too few requests make it
//! [`Verdict::Inconclusive`]. Both hold the step; the caller fails the canary after its
//! limits. The measurements come through the [`crate::MetricSource`] seam.

use std::time::Duration;

use serde::Serialize;

use crate::names::{Name, Version};

/// Which side of a split a request went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Track {
    Stable,
    Canary,
}

impl Track {
    pub fn as_str(self) -> &'static str {
        match self {
            Track::Stable => "stable",
            Track::Canary => "canary",
        }
    }
}

/// One track of one service over a trailing window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrackWindow {
    pub service: Name,
    pub track: Track,
    pub version: Version,
    pub window: Duration,
}

/// What a metric source measured; `None` is *no data* (empty result, NaN, failed scrape).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Measurement {
    pub requests: Option<f64>,
    /// Requests answered 5xx (counted per upstream attempt).
    pub errors: Option<f64>,
    /// 99th percentile latency in seconds.
    pub p99_latency: Option<f64>,
}

impl Measurement {
    /// errors / requests, or None when either is missing or there were no requests.
    pub fn error_rate(&self) -> Option<f64> {
        match (self.errors, self.requests) {
            (Some(e), Some(r)) if r > 0.0 && e.is_finite() && r.is_finite() => Some(e / r),
            _ => None,
        }
    }
}

/// The thresholds a canary step must meet.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Policy {
    pub max_error_rate: f64,
    pub max_p99_latency: Option<Duration>,
    pub min_requests: f64,
    /// With a baseline: the canary may exceed the stable error rate by at most this much
    /// (absolute), and `max_error_rate` still applies.
    pub baseline_margin: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "lowercase")]
pub enum Verdict {
    Pass(String),
    /// Empty result or NaN: never a pass.
    NoData(String),
    /// Fewer requests than `min_requests`.
    Inconclusive(String),
    Fail(String),
}

pub fn judge(canary: &Measurement, stable: Option<&Measurement>, policy: &Policy) -> Verdict {
    let Some(requests) = canary.requests.filter(|r| r.is_finite()) else {
        return Verdict::NoData("no request count for the canary".into());
    };
    if requests < policy.min_requests {
        return Verdict::Inconclusive(format!(
            "{requests:.0} requests, fewer than the {:.0} needed",
            policy.min_requests
        ));
    }
    let Some(rate) = canary.error_rate() else {
        return Verdict::NoData("no error count for the canary".into());
    };
    if rate > policy.max_error_rate {
        return Verdict::Fail(format!(
            "error rate {:.2}% over {requests:.0} requests exceeds the maximum {:.2}%",
            rate * 100.0,
            policy.max_error_rate * 100.0
        ));
    }
    if let (Some(margin), Some(stable)) = (policy.baseline_margin, stable) {
        match stable.error_rate() {
            None => return Verdict::NoData("no error rate for the stable baseline".into()),
            Some(base) if rate > base + margin => {
                return Verdict::Fail(format!(
                    "error rate {:.2}% exceeds the stable track's {:.2}% by more than {:.2} points",
                    rate * 100.0,
                    base * 100.0,
                    margin * 100.0
                ))
            }
            Some(_) => {}
        }
    }
    if let Some(max) = policy.max_p99_latency {
        match canary.p99_latency.filter(|l| l.is_finite()) {
            None => return Verdict::NoData("no p99 latency for the canary".into()),
            Some(p99) if p99 > max.as_secs_f64() => {
                return Verdict::Fail(format!(
                    "p99 latency {:.0} ms exceeds the maximum {} ms",
                    p99 * 1000.0,
                    max.as_millis()
                ))
            }
            Some(_) => {}
        }
    }
    Verdict::Pass(format!(
        "error rate {:.2}% over {requests:.0} requests",
        rate * 100.0
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            max_error_rate: 0.01,
            max_p99_latency: None,
            min_requests: 100.0,
            baseline_margin: None,
        }
    }

    fn m(requests: Option<f64>, errors: Option<f64>) -> Measurement {
        Measurement {
            requests,
            errors,
            p99_latency: None,
        }
    }

    #[test]
    fn missing_or_nan_data_never_passes() {
        for canary in [
            m(None, None),
            m(Some(f64::NAN), Some(0.0)),
            m(Some(500.0), None),
            m(Some(500.0), Some(f64::NAN)),
        ] {
            assert!(
                matches!(judge(&canary, None, &policy()), Verdict::NoData(_)),
                "{canary:?}"
            );
        }
    }

    #[test]
    fn too_few_requests_is_inconclusive() {
        assert!(matches!(
            judge(&m(Some(99.0), Some(0.0)), None, &policy()),
            Verdict::Inconclusive(_)
        ));
    }

    #[test]
    fn error_rate_over_the_threshold_fails_with_the_figures() {
        let Verdict::Fail(reason) = judge(&m(Some(1000.0), Some(300.0)), None, &policy()) else {
            panic!()
        };
        assert_eq!(
            reason,
            "error rate 30.00% over 1000 requests exceeds the maximum 1.00%"
        );
        assert!(matches!(
            judge(&m(Some(1000.0), Some(10.0)), None, &policy()),
            Verdict::Pass(_)
        ));
    }

    #[test]
    fn baseline_comparison_allows_a_noisy_service_its_noise_only() {
        let p = Policy {
            max_error_rate: 0.10,
            baseline_margin: Some(0.01),
            ..policy()
        };
        let stable = m(Some(10_000.0), Some(500.0)); // 5%
        assert!(matches!(
            judge(&m(Some(1000.0), Some(55.0)), Some(&stable), &p),
            Verdict::Pass(_)
        ));
        assert!(matches!(
            judge(&m(Some(1000.0), Some(70.0)), Some(&stable), &p),
            Verdict::Fail(_)
        ));
        assert!(matches!(
            judge(&m(Some(1000.0), Some(0.0)), Some(&m(None, None)), &p),
            Verdict::NoData(_)
        ));
    }

    #[test]
    fn latency_threshold_needs_data_and_is_enforced() {
        let p = Policy {
            max_p99_latency: Some(Duration::from_millis(200)),
            ..policy()
        };
        let mut canary = m(Some(1000.0), Some(0.0));
        assert!(matches!(judge(&canary, None, &p), Verdict::NoData(_)));
        canary.p99_latency = Some(0.25);
        assert!(matches!(judge(&canary, None, &p), Verdict::Fail(_)));
        canary.p99_latency = Some(0.05);
        assert!(matches!(judge(&canary, None, &p), Verdict::Pass(_)));
    }
}
