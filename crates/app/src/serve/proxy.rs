//! The proxy metrics: [`ProxySeries`] turns the tailer's cumulative per-(service, track)
//! counts into `switchyard_proxy_requests_total{service,track,version,code}` and
//! `switchyard_proxy_request_duration_seconds{service,track,version}`.
//!
//! The tailer does not know versions, so what it counted since the last look (every
//! [`super::ATTRIBUTE_EVERY`] and at every scrape) is added to the series of the version
//! each track serves then ([`TrackState`]). Requests in the interval in which a track
//! changes version may land under its neighbour; none is lost or counted twice, and every
//! series only grows.
//!
//! Every series is created at 0 first and *held* at 0 until one scrape has shown it:
//! Prometheus cannot see the first increment of a series born non-zero (prometheus #12967).
//! The current version's series of both tracks and all four code classes exist from the
//! first scrape; a new version's series appear at 0 when the store first names it, and
//! the track's counts wait for them. Tracks other than `stable` and `canary`, and services
//! not in the config, are not exported.

use std::collections::BTreeMap;

use prometheus::proto::MetricFamily;
use switchyard_nginx::tailer::{LatencyHistogram, TrafficCounters, LATENCY_BUCKETS};

use super::exposition::{Family, Histogram};
use super::tracks::TrackState;

pub const REQUESTS: &str = "switchyard_proxy_requests_total";
pub const DURATION: &str = "switchyard_proxy_request_duration_seconds";
pub const TRACKS: [&str; 2] = ["stable", "canary"];
pub const CODE_CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

/// `503` → `5xx`. nginx logs an attempt without a response as 502.
pub fn code_class(code: u16) -> &'static str {
    match code {
        0..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

type TrackKey = (String, String);
/// (service, track, version).
type VersionKey = (String, String, String);

/// What the tailer had counted for one track when last attributed.
#[derive(Debug, Clone, Default)]
struct Seen {
    codes: BTreeMap<&'static str, u64>,
    latency: LatencyHistogram,
}

#[derive(Debug)]
struct Exported<T> {
    value: T,
    /// Shown by a scrape: from then on it may grow.
    shown: bool,
}

#[derive(Debug, Default)]
pub struct ProxySeries {
    seen: BTreeMap<TrackKey, Seen>,
    requests: BTreeMap<(VersionKey, &'static str), Exported<u64>>,
    latency: BTreeMap<VersionKey, Exported<Histogram>>,
}

impl ProxySeries {
    /// Attributes what `counters` counted since the last call to the versions of `tracks`
    /// (one entry per configured service).
    pub fn attribute(&mut self, counters: &TrafficCounters, tracks: &BTreeMap<String, TrackState>) {
        for (service, state) in tracks {
            for track in TRACKS {
                let version = state.version(track).expect("a known track");
                self.declare(&key(service, track, version), &CODE_CLASSES);
            }
        }
        for ((service, track), now) in totals(counters) {
            let Some(version) = tracks.get(&service).and_then(|s| s.version(&track)) else {
                continue;
            };
            let key = key(&service, &track, version);
            let seen = self.seen.entry((service, track)).or_default();
            let classes: Vec<&'static str> = now
                .codes
                .iter()
                .filter(|(class, &n)| n > seen.codes.get(*class).copied().unwrap_or(0))
                .map(|(&class, _)| class)
                .collect();
            let grew = !classes.is_empty() || now.latency.count > seen.latency.count;
            if !grew {
                continue;
            }
            let seen = seen.clone();
            if !self.declare(&key, &classes) {
                continue;
            }
            for class in classes {
                let before = seen.codes.get(class).copied().unwrap_or(0);
                let series = self
                    .requests
                    .get_mut(&(key.clone(), class))
                    .expect("declared above");
                series.value += now.codes[class].saturating_sub(before);
            }
            let delta: Vec<u64> = now
                .latency
                .counts
                .iter()
                .zip(&seen.latency.counts)
                .map(|(n, s)| n.saturating_sub(*s))
                .collect();
            let latency = self.latency.get_mut(&key).expect("declared above");
            latency.value.add(
                &delta,
                (now.latency.sum - seen.latency.sum).max(0.0),
                now.latency.count.saturating_sub(seen.latency.count),
            );
            self.seen.insert((key.0.clone(), key.1.clone()), now);
        }
    }

    /// Creates the series of `key` for `classes` (and its histogram) at 0 where missing;
    /// returns whether all of them have been shown by a scrape already.
    fn declare(&mut self, key: &VersionKey, classes: &[&'static str]) -> bool {
        let mut shown = true;
        for &class in classes {
            let series = self
                .requests
                .entry((key.clone(), class))
                .or_insert(Exported {
                    value: 0,
                    shown: false,
                });
            shown &= series.shown;
        }
        let latency = self.latency.entry(key.clone()).or_insert(Exported {
            value: Histogram::new(&LATENCY_BUCKETS),
            shown: false,
        });
        shown && latency.shown
    }

    /// Both families; every series in them counts as shown from now on.
    pub fn expose(&mut self) -> Vec<MetricFamily> {
        let mut requests = Family::counter(
            REQUESTS,
            "Upstream attempts proxied by nginx, from its access log, by status class.",
        );
        for (((service, track, version), code), series) in &mut self.requests {
            let labels = [
                ("service", service.as_str()),
                ("track", track.as_str()),
                ("version", version.as_str()),
                ("code", *code),
            ];
            requests.value(&labels, series.value as f64);
            series.shown = true;
        }
        let mut duration = Family::histogram(
            DURATION,
            "Upstream response time of proxied attempts ($upstream_response_time), in seconds.",
        );
        for ((service, track, version), series) in &mut self.latency {
            let labels = [
                ("service", service.as_str()),
                ("track", track.as_str()),
                ("version", version.as_str()),
            ];
            duration.histogram_series(&labels, &series.value);
            series.shown = true;
        }
        vec![requests.into_inner(), duration.into_inner()]
    }
}

fn key(service: &str, track: &str, version: &str) -> VersionKey {
    (service.to_owned(), track.to_owned(), version.to_owned())
}

/// The tailer's cumulative counts per (service, track), by code class.
fn totals(counters: &TrafficCounters) -> BTreeMap<TrackKey, Seen> {
    let mut out: BTreeMap<TrackKey, Seen> = BTreeMap::new();
    for (service, track, code, n) in counters.totals() {
        let seen = out
            .entry((service.to_owned(), track.to_owned()))
            .or_default();
        *seen.codes.entry(code_class(code)).or_default() += n;
    }
    for (service, track, latency) in counters.histograms() {
        out.entry((service.to_owned(), track.to_owned()))
            .or_default()
            .latency = latency.clone();
    }
    out
}
