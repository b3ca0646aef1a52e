//! The Prometheus text exposition of `/metrics`: [`Family`] builds one metric family (a
//! counter, gauge or histogram with its labelled series) in the `prometheus` crate's data
//! model, [`Histogram`] holds bucket counts over fixed bounds, and [`encode`] writes the
//! families with the crate's `TextEncoder`, which does the escaping and `+Inf`.
//!
//! Most of switchyard's metrics are computed at scrape time from the store or from the
//! tailer's cumulative counts, so they are built as families here rather than kept in the
//! crate's live metric types.

use prometheus::proto::{self, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, TextEncoder};

/// One metric family under construction.
pub struct Family(MetricFamily);

impl Family {
    pub fn counter(name: &str, help: &str) -> Family {
        Family::new(name, help, MetricType::COUNTER)
    }

    pub fn gauge(name: &str, help: &str) -> Family {
        Family::new(name, help, MetricType::GAUGE)
    }

    pub fn histogram(name: &str, help: &str) -> Family {
        Family::new(name, help, MetricType::HISTOGRAM)
    }

    fn new(name: &str, help: &str, kind: MetricType) -> Family {
        let mut family = MetricFamily::default();
        family.set_name(name.to_owned());
        family.set_help(help.to_owned());
        family.set_field_type(kind);
        Family(family)
    }

    /// A counter's or a gauge's series.
    pub fn value(&mut self, labels: &[(&str, &str)], value: f64) {
        let mut metric = Metric::from_label(label_pairs(labels));
        match self.0.get_field_type() {
            MetricType::COUNTER => {
                let mut counter = proto::Counter::default();
                counter.set_value(value);
                metric.set_counter(counter);
            }
            _ => {
                let mut gauge = proto::Gauge::default();
                gauge.set_value(value);
                metric.set_gauge(gauge);
            }
        }
        self.0.mut_metric().push(metric);
    }

    /// A histogram's series: `_bucket{le}` for each bound and `+Inf`, `_sum`, `_count`.
    pub fn histogram_series(&mut self, labels: &[(&str, &str)], h: &Histogram) {
        let mut metric = Metric::from_label(label_pairs(labels));
        let mut out = proto::Histogram::default();
        out.set_sample_count(h.count);
        out.set_sample_sum(h.sum);
        // The encoder writes the `+Inf` bucket from the count; an infinite bound of our own
        // would come out as `le="inf"`.
        let buckets = h
            .cumulative()
            .filter(|(bound, _)| bound.is_finite())
            .map(|(bound, count)| {
                let mut bucket = proto::Bucket::default();
                bucket.set_upper_bound(bound);
                bucket.set_cumulative_count(count);
                bucket
            })
            .collect();
        out.set_bucket(buckets);
        metric.set_histogram(out);
        self.0.mut_metric().push(metric);
    }

    pub fn into_inner(self) -> MetricFamily {
        self.0
    }
}

fn label_pairs(labels: &[(&str, &str)]) -> Vec<LabelPair> {
    labels
        .iter()
        .map(|&(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name(name.to_owned());
            pair.set_value(value.to_owned());
            pair
        })
        .collect()
}

/// Counts of observations per bucket (not cumulative; the last is above the largest
/// bound), with their sum and count.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, value: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&bound| value <= bound)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += value;
        self.count += 1;
    }

    /// Adds per-bucket counts over the same bounds, with their sum and count.
    pub fn add(&mut self, counts: &[u64], sum: f64, count: u64) {
        for (total, n) in self.counts.iter_mut().zip(counts) {
            *total += n;
        }
        self.sum += sum;
        self.count += count;
    }

    /// `(le, cumulative count)`, ending with `(+Inf, count)`.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let bounds = self.bounds.iter().copied().chain([f64::INFINITY]);
        bounds.zip(self.counts.iter().scan(0, |total, &n| {
            *total += n;
            Some(*total)
        }))
    }
}

/// The text exposition of `families`, sorted by name; families without series are left
/// out (the format has no way to show them).
pub fn encode(mut families: Vec<MetricFamily>) -> String {
    families.retain(|f| !f.get_metric().is_empty());
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut out)
        .expect("families with a name and series encode into memory");
    String::from_utf8(out).expect("the text encoder writes UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_histograms_use_the_text_format() {
        let mut requests = Family::counter("x_requests_total", "Requests.");
        requests.value(&[("service", "web"), ("code", "5xx")], 0.0);
        let mut weight = Family::gauge("x_weight", "Share \"of\" traffic.");
        weight.value(&[("track", "canary")], 0.25);
        let mut latency = Family::histogram("x_seconds", "Latency.");
        let mut h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(3.0);
        latency.histogram_series(&[("service", "web")], &h);
        let text = encode(vec![
            weight.into_inner(),
            latency.into_inner(),
            requests.into_inner(),
            Family::counter("x_empty_total", "Nothing.").into_inner(),
        ]);
        assert_eq!(
            text,
            "# HELP x_requests_total Requests.\n\
             # TYPE x_requests_total counter\n\
             x_requests_total{service=\"web\",code=\"5xx\"} 0\n\
             # HELP x_seconds Latency.\n\
             # TYPE x_seconds histogram\n\
             x_seconds_bucket{service=\"web\",le=\"0.1\"} 1\n\
             x_seconds_bucket{service=\"web\",le=\"1\"} 2\n\
             x_seconds_bucket{service=\"web\",le=\"+Inf\"} 3\n\
             x_seconds_sum{service=\"web\"} 3.55\n\
             x_seconds_count{service=\"web\"} 3\n\
             # HELP x_weight Share \"of\" traffic.\n\
             # TYPE x_weight gauge\n\
             x_weight{track=\"canary\"} 0.25\n"
        );
    }

    #[test]
    fn adding_bucket_counts_keeps_the_cumulative_shape() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        h.add(&[2, 0, 1], 1.5, 3);
        h.add(&[0, 4, 0], 2.0, 4);
        assert_eq!(
            h.cumulative().collect::<Vec<_>>(),
            [(0.1, 2), (1.0, 6), (f64::INFINITY, 7)]
        );
        assert_eq!((h.sum, h.count), (3.5, 7));
    }
}
