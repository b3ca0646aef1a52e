//! Per-track traffic counted from [`ProxyRecord`]s: [`TrafficCounters`], read by the embedded
//! judge as a trailing [`WindowCounts`] and by the `/metrics` exporter as cumulative totals per
//! status code and a cumulative [`LatencyHistogram`].
//!
//! Everything is counted per upstream attempt: a request retried once counts twice, and an
//! attempt without a response (`-`) counts as a 502. Latency is the attempt's
//! `$upstream_response_time`, the part the upstream's version is responsible for. The trailing
//! window is a ring of [`WINDOW_SECONDS`] one-second slots keyed by each record's own time, so a
//! line read late still lands in its second. Versions are not known here: the exporter maps
//! (service, track) to a version from the store.

use std::collections::BTreeMap;
use std::time::Duration;

use super::parse::{Attempt, ProxyRecord};

/// How far back [`TrafficCounters::window`] can look.
pub const WINDOW_SECONDS: usize = 600;
/// Upper bounds (seconds) of the latency buckets; Prometheus's defaults, plus `+Inf`.
pub const LATENCY_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// The track a record of an upstream named `sy_<service>` counts under.
pub const NO_TRACK: &str = "";

const BUCKETS: usize = LATENCY_BUCKETS.len() + 1;

/// What one track did over a trailing window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WindowCounts {
    /// Upstream attempts.
    pub requests: u64,
    /// Attempts answered 5xx or not at all.
    pub errors: u64,
    /// Seconds, interpolated within a bucket as `histogram_quantile` does; `None` without
    /// latencies in the window.
    pub p99_latency: Option<f64>,
}

/// A latency histogram over [`LATENCY_BUCKETS`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LatencyHistogram {
    /// Per bucket, not cumulative; the last is above the largest bound.
    pub counts: [u64; BUCKETS],
    pub sum: f64,
    pub count: u64,
}

impl LatencyHistogram {
    fn observe(&mut self, seconds: f64) {
        self.counts[bucket(seconds)] += 1;
        self.sum += seconds;
        self.count += 1;
    }

    /// `(le, cumulative count)` per bucket, ending with `(f64::INFINITY, count)`: the
    /// Prometheus exposition's `_bucket` series.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let bounds = LATENCY_BUCKETS.iter().copied().chain([f64::INFINITY]);
        bounds.zip(self.counts.iter().scan(0, |total, &n| {
            *total += n;
            Some(*total)
        }))
    }

    pub fn quantile(&self, q: f64) -> Option<f64> {
        quantile(&self.counts, q)
    }
}

/// All tracks of all services; one per tailer, behind a lock where others read it.
#[derive(Debug, Default)]
pub struct TrafficCounters {
    services: BTreeMap<String, BTreeMap<String, TrackSeries>>,
}

impl TrafficCounters {
    pub fn new() -> TrafficCounters {
        TrafficCounters::default()
    }

    /// Creates the series of a track at zero, so an exporter can show it before its first
    /// request (Prometheus cannot see the first increment of a series born non-zero).
    pub fn declare(&mut self, service: &str, track: &str) {
        self.series(service, track);
    }

    pub fn record(&mut self, r: &ProxyRecord) {
        if r.attempts.is_empty() {
            return;
        }
        let series = self.series(&r.service, r.track.as_deref().unwrap_or(NO_TRACK));
        let second = r.time.floor() as i64;
        for attempt in &r.attempts {
            series.count(second, attempt);
        }
    }

    /// The whole seconds of the trailing `window` up to and including the one holding `now`
    /// (unix seconds): `window` 10 s at `now` 100.5 covers seconds 91 to 100. Records newer
    /// than `now`'s second are left out; `window` is capped at [`WINDOW_SECONDS`].
    pub fn window(&self, service: &str, track: &str, window: Duration, now: f64) -> WindowCounts {
        let Some(series) = self.services.get(service).and_then(|t| t.get(track)) else {
            return WindowCounts::default();
        };
        let seconds = (window.as_secs_f64().ceil() as i64).min(WINDOW_SECONDS as i64);
        let last = now.floor() as i64;
        let mut counts = WindowCounts::default();
        let mut latency = [0u64; BUCKETS];
        for second in (last - seconds + 1)..=last {
            let slot = &series.ring[ring_index(second)];
            if slot.second != second {
                continue;
            }
            counts.requests += u64::from(slot.requests);
            counts.errors += u64::from(slot.errors);
            for (total, &n) in latency.iter_mut().zip(&slot.latency) {
                *total += u64::from(n);
            }
        }
        counts.p99_latency = quantile(&latency, 0.99);
        counts
    }

    /// Cumulative attempts per (service, track, status code), in order.
    pub fn totals(&self) -> impl Iterator<Item = (&str, &str, u16, u64)> + '_ {
        self.tracks().flat_map(|(service, track, series)| {
            series
                .codes
                .iter()
                .map(move |&(code, n)| (service, track, code, n))
        })
    }

    /// The cumulative latency histogram per (service, track), in order.
    pub fn histograms(&self) -> impl Iterator<Item = (&str, &str, &LatencyHistogram)> + '_ {
        self.tracks()
            .map(|(service, track, series)| (service, track, &series.latency))
    }

    fn tracks(&self) -> impl Iterator<Item = (&str, &str, &TrackSeries)> + '_ {
        self.services.iter().flat_map(|(service, tracks)| {
            tracks
                .iter()
                .map(move |(track, series)| (service.as_str(), track.as_str(), series))
        })
    }

    /// Looks up before inserting, so the hot path allocates nothing.
    fn series(&mut self, service: &str, track: &str) -> &mut TrackSeries {
        if !self.services.contains_key(service) {
            self.services.insert(service.to_owned(), BTreeMap::new());
        }
        let tracks = self.services.get_mut(service).expect("inserted above");
        if !tracks.contains_key(track) {
            tracks.insert(track.to_owned(), TrackSeries::new());
        }
        tracks.get_mut(track).expect("inserted above")
    }
}

#[derive(Debug)]
struct TrackSeries {
    ring: Box<[Slot]>,
    /// Sorted by code; a handful of codes per track.
    codes: Vec<(u16, u64)>,
    latency: LatencyHistogram,
}

/// One second of one track.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Unix second this slot holds; a slot holding another second is stale.
    second: i64,
    requests: u32,
    errors: u32,
    latency: [u32; BUCKETS],
}

impl Slot {
    const EMPTY: Slot = Slot {
        second: i64::MIN,
        requests: 0,
        errors: 0,
        latency: [0; BUCKETS],
    };
}

impl TrackSeries {
    fn new() -> TrackSeries {
        TrackSeries {
            ring: vec![Slot::EMPTY; WINDOW_SECONDS].into_boxed_slice(),
            codes: Vec::new(),
            latency: LatencyHistogram::default(),
        }
    }

    fn count(&mut self, second: i64, attempt: &Attempt) {
        let code = attempt.code();
        match self.codes.binary_search_by_key(&code, |&(c, _)| c) {
            Ok(i) => self.codes[i].1 += 1,
            Err(i) => self.codes.insert(i, (code, 1)),
        }
        let latency = attempt.response_time.filter(|t| t.is_finite() && *t >= 0.0);
        if let Some(t) = latency {
            self.latency.observe(t);
        }
        let slot = &mut self.ring[ring_index(second)];
        if slot.second > second {
            // Older than the ring reaches: only the totals keep it.
            return;
        }
        if slot.second < second {
            *slot = Slot {
                second,
                ..Slot::EMPTY
            };
        }
        slot.requests = slot.requests.saturating_add(1);
        slot.errors = slot.errors.saturating_add(u32::from(attempt.is_error()));
        if let Some(t) = latency {
            let n = &mut slot.latency[bucket(t)];
            *n = n.saturating_add(1);
        }
    }
}

fn ring_index(second: i64) -> usize {
    second.rem_euclid(WINDOW_SECONDS as i64) as usize
}

fn bucket(seconds: f64) -> usize {
    LATENCY_BUCKETS
        .iter()
        .position(|&bound| seconds <= bound)
        .unwrap_or(LATENCY_BUCKETS.len())
}

/// The `q` quantile of per-bucket counts, interpolated linearly within its bucket; the `+Inf`
/// bucket answers the largest finite bound, as Prometheus's `histogram_quantile` does.
fn quantile<N: Copy + Into<u64>>(counts: &[N; BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().map(|&n| n.into()).sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, &n) in counts.iter().enumerate() {
        let n: u64 = n.into();
        if n > 0 && (below + n) as f64 >= rank {
            let Some(&upper) = LATENCY_BUCKETS.get(i) else {
                return Some(LATENCY_BUCKETS[LATENCY_BUCKETS.len() - 1]);
            };
            let lower = if i == 0 { 0.0 } else { LATENCY_BUCKETS[i - 1] };
            return Some(lower + (upper - lower) * (rank - below as f64) / n as f64);
        }
        below += n;
    }
    Some(LATENCY_BUCKETS[LATENCY_BUCKETS.len() - 1])
}
