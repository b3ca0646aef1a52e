//! [`TrafficCounters`]: per-attempt counting, the trailing window's second boundaries, and
//! the p99 read from the latency histogram.

use std::time::Duration;

use crate::tailer::{
    Attempt, ProxyRecord, TrafficCounters, WindowCounts, LATENCY_BUCKETS, NO_TRACK, WINDOW_SECONDS,
};

/// A request to `track` of `web` at `time` with one attempt per (status, response time).
fn request(time: f64, track: Option<&str>, attempts: &[(Option<u16>, f64)]) -> ProxyRecord {
    ProxyRecord {
        time,
        service: "web".into(),
        track: track.map(str::to_owned),
        status: attempts.last().and_then(|a| a.0).unwrap_or(502),
        request_time: attempts.iter().map(|a| a.1).sum(),
        attempts: attempts
            .iter()
            .enumerate()
            .map(|(i, &(status, t))| Attempt {
                addr: format!("127.0.0.1:{}", 9000 + i),
                status,
                response_time: Some(t),
            })
            .collect(),
    }
}

const TEN_S: Duration = Duration::from_secs(10);

#[test]
fn a_retried_request_counts_each_attempt() {
    let mut counters = TrafficCounters::new();
    counters.record(&request(
        100.2,
        Some("canary"),
        &[(Some(502), 0.001), (None, 0.002), (Some(200), 0.003)],
    ));
    counters.record(&request(100.7, Some("canary"), &[(Some(200), 0.003)]));
    let w = counters.window("web", "canary", TEN_S, 100.9);
    assert_eq!((w.requests, w.errors), (4, 2));
    let totals: Vec<_> = counters.totals().collect();
    // `-` counts under 502, with the 502 that was answered.
    assert_eq!(
        totals,
        [("web", "canary", 200, 2), ("web", "canary", 502, 2)]
    );
}

#[test]
fn tracks_and_services_are_counted_apart() {
    let mut counters = TrafficCounters::new();
    counters.record(&request(100.0, Some("canary"), &[(Some(500), 0.001)]));
    counters.record(&request(100.0, Some("stable"), &[(Some(200), 0.001)]));
    counters.record(&request(100.0, None, &[(Some(200), 0.001)]));
    let mut other = request(100.0, Some("canary"), &[(Some(200), 0.001)]);
    other.service = "api".into();
    counters.record(&other);
    let at = |service, track| counters.window(service, track, TEN_S, 100.0);
    assert_eq!(
        (at("web", "canary").requests, at("web", "canary").errors),
        (1, 1)
    );
    assert_eq!(
        (at("web", "stable").requests, at("web", "stable").errors),
        (1, 0)
    );
    assert_eq!(at("web", NO_TRACK).requests, 1);
    assert_eq!(at("api", "canary").requests, 1);
    assert_eq!(at("api", "stable"), WindowCounts::default());
    let keys: Vec<_> = counters.totals().map(|(s, t, c, _)| (s, t, c)).collect();
    assert_eq!(
        keys,
        [
            ("api", "canary", 200),
            ("web", "", 200),
            ("web", "canary", 500),
            ("web", "stable", 200)
        ]
    );
}

#[test]
fn the_window_is_whole_seconds_up_to_now() {
    let mut counters = TrafficCounters::new();
    for time in [90.999, 91.0, 95.5, 100.999, 101.0] {
        counters.record(&request(time, Some("canary"), &[(Some(500), 0.001)]));
    }
    let requests = |window, now| counters.window("web", "canary", window, now).requests;
    // 10 s at 100.5: seconds 91..=100; 90.999 is second 90, 101.0 is in the future.
    assert_eq!(requests(TEN_S, 100.5), 3);
    assert_eq!(requests(TEN_S, 100.0), 3);
    assert_eq!(requests(TEN_S, 101.0), 3, "seconds 92..=101");
    assert_eq!(requests(Duration::from_secs(1), 101.0), 1);
    // A fractional window rounds up to whole seconds: 1.5 s is seconds 100..=101.
    assert_eq!(requests(Duration::from_millis(1500), 101.0), 2);
    assert_eq!(requests(Duration::ZERO, 101.0), 0);
    assert_eq!(
        requests(Duration::from_secs(11), 100.0),
        4,
        "seconds 90..=100"
    );
}

#[test]
fn the_window_forgets_what_the_ring_no_longer_holds() {
    let mut counters = TrafficCounters::new();
    let ring = WINDOW_SECONDS as f64;
    counters.record(&request(1000.0, Some("canary"), &[(Some(200), 0.001)]));
    // Same slot of the ring, one lap later: replaces second 1000.
    counters.record(&request(
        1000.0 + ring,
        Some("canary"),
        &[(Some(200), 0.001)],
    ));
    // One lap older than what the slot holds: too old for the window.
    counters.record(&request(1000.0, Some("canary"), &[(Some(200), 0.001)]));
    let all = Duration::from_secs(3600);
    assert_eq!(
        counters
            .window("web", "canary", all, 1000.0 + ring)
            .requests,
        1
    );
    assert_eq!(counters.window("web", "canary", all, 1000.0).requests, 0);
    assert_eq!(counters.totals().map(|t| t.3).sum::<u64>(), 3);
}

#[test]
fn p99_comes_from_the_histogram() {
    let mut counters = TrafficCounters::new();
    assert_eq!(
        counters.window("web", "canary", TEN_S, 100.0).p99_latency,
        None
    );
    for _ in 0..98 {
        counters.record(&request(100.0, Some("canary"), &[(Some(200), 0.004)]));
    }
    for _ in 0..2 {
        counters.record(&request(100.0, Some("canary"), &[(Some(200), 0.3)]));
    }
    // Rank 99 of 100 falls halfway into the 0.25..0.5 bucket (its 2 entries).
    let p99 = counters
        .window("web", "canary", TEN_S, 100.0)
        .p99_latency
        .unwrap();
    assert!((p99 - 0.375).abs() < 1e-9, "p99 {p99}");
    // Above the largest bound: the largest bound, as histogram_quantile answers.
    let mut slow = TrafficCounters::new();
    slow.record(&request(100.0, Some("canary"), &[(Some(200), 60.0)]));
    let p99 = slow.window("web", "canary", TEN_S, 100.0).p99_latency;
    assert_eq!(p99, Some(10.0));
}

#[test]
fn the_cumulative_histogram_is_exposition_ready() {
    let mut counters = TrafficCounters::new();
    counters.declare("web", "stable");
    counters.record(&request(
        100.0,
        Some("canary"),
        &[(Some(502), 0.004), (Some(200), 0.07)],
    ));
    let histograms: Vec<_> = counters.histograms().collect();
    assert_eq!(histograms.len(), 2);
    let (service, track, stable) = histograms[1];
    assert_eq!((service, track, stable.count), ("web", "stable", 0));
    let (_, track, canary) = histograms[0];
    assert_eq!((track, canary.count), ("canary", 2));
    assert!((canary.sum - 0.074).abs() < 1e-9);
    let buckets: Vec<_> = canary.cumulative().collect();
    assert_eq!(buckets.len(), LATENCY_BUCKETS.len() + 1);
    assert_eq!(buckets[0], (0.005, 1));
    assert_eq!(buckets[3], (0.05, 1));
    assert_eq!(buckets[4], (0.1, 2));
    assert_eq!(*buckets.last().unwrap(), (f64::INFINITY, 2));
}
