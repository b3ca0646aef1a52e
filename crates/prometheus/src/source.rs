//! [`PromSource`]: the engine's [`MetricSource`] answered by Prometheus.
//!
//! An empty result or NaN is *no data* (`None`); several series are added up (the maximum
//! for latency, where a sum means nothing); any [`crate::PromError`] is a [`MetricError`],
//! so the engine holds the step and never promotes on a Prometheus it cannot hear.

use std::time::SystemTime;

use switchyard_engine::judge::{Measurement, TrackWindow};
use switchyard_engine::{MetricError, MetricSource};

use crate::{PromClient, QueryTemplates, Sample};

#[derive(Debug, Clone)]
pub struct PromSource {
    pub client: PromClient,
    pub templates: QueryTemplates,
}

impl PromSource {
    /// Runs one query for `what` ("requests", "errors", …) and folds its samples.
    async fn one(
        &self,
        what: &str,
        template: &str,
        query: &TrackWindow,
        at: SystemTime,
        fold: fn(&[Sample]) -> Option<f64>,
    ) -> Result<Option<f64>, MetricError> {
        let expr = QueryTemplates::render(template, query).map_err(MetricError)?;
        let samples = self.client.query(&expr, Some(at)).await.map_err(|e| {
            MetricError(format!(
                "{what} of {} {}: {e}",
                query.service,
                query.track.as_str()
            ))
        })?;
        Ok(fold(&samples))
    }
}

impl MetricSource for PromSource {
    async fn measure(&self, query: &TrackWindow) -> Result<Measurement, MetricError> {
        // One evaluation time for every query, so requests and errors cover the same scrapes.
        let at = SystemTime::now();
        let t = &self.templates;
        let latency = async {
            match &t.p99_latency {
                Some(template) => self.one("p99 latency", template, query, at, max).await,
                None => Ok(None),
            }
        };
        let (requests, errors, p99_latency) = tokio::join!(
            self.one("requests", &t.requests, query, at, sum),
            self.one("errors", &t.errors, query, at, sum),
            latency,
        );
        Ok(Measurement {
            requests: requests?,
            errors: errors?,
            p99_latency: p99_latency?,
        })
    }
}

/// The sum of the samples; `None` for no samples or a NaN among them.
fn sum(samples: &[Sample]) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    Some(samples.iter().map(|s| s.value).sum::<f64>()).filter(|v| !v.is_nan())
}

/// The largest sample; `None` for no samples or a NaN among them.
fn max(samples: &[Sample]) -> Option<f64> {
    if samples.iter().any(|s| s.value.is_nan()) {
        return None;
    }
    samples.iter().map(|s| s.value).reduce(f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(values: &[f64]) -> Vec<Sample> {
        values
            .iter()
            .map(|&value| Sample {
                labels: Default::default(),
                value,
            })
            .collect()
    }

    #[test]
    fn empty_and_nan_are_no_data_never_zero() {
        for fold in [sum, max] {
            assert_eq!(fold(&[]), None);
            assert_eq!(fold(&samples(&[f64::NAN])), None);
            assert_eq!(fold(&samples(&[3.0, f64::NAN])), None);
        }
    }

    #[test]
    fn counts_add_up_and_latency_takes_the_worst() {
        assert_eq!(sum(&samples(&[0.0])), Some(0.0));
        assert_eq!(sum(&samples(&[2.0, 3.5])), Some(5.5));
        assert_eq!(max(&samples(&[0.2, 0.5, 0.1])), Some(0.5));
        assert_eq!(max(&samples(&[f64::INFINITY])), Some(f64::INFINITY));
    }
}
