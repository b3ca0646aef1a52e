//! The Prometheus metric source against a real Prometheus (Debian's 2.42) scraping a
//! `/metrics` endpoint served here, whose counters each test drives: no traffic is never a
//! pass, a good canary passes, a bad one fails, a stopped Prometheus is an error, and a
//! malformed expression comes back as `bad_data`.
//!
//! Where `/usr/bin/prometheus` is missing these fail under `CI` and skip loudly elsewhere.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::get;
use switchyard_engine::judge::{judge, Measurement, Policy, Track, TrackWindow, Verdict};
use switchyard_engine::{MetricSource, Name, Version};
use switchyard_prometheus::testing::{start_or_skip, TestPrometheus};
use switchyard_prometheus::{check_window, PromError, PromSource, QueryTemplates};

const SCRAPE: Duration = Duration::from_secs(1);
const WINDOW: Duration = Duration::from_secs(5);

/// The canary's counters, exported like switchyard's tailer exports them: every series
/// exists at 0 before its first increment.
#[derive(Default)]
struct Traffic {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Whether a `code="500"` series is exported at all (a track that never failed has none).
    export_5xx: bool,
}

impl Traffic {
    fn exposition(&self) -> String {
        let ok = self.ok.load(Ordering::SeqCst);
        let failed = self.failed.load(Ordering::SeqCst);
        let series = |track: &str, version: &str, code: &str, value: u64| {
            format!(
                "switchyard_proxy_requests_total{{service=\"web\",track=\"{track}\",version=\"{version}\",code=\"{code}\"}} {value}\n"
            )
        };
        let mut text = String::from("# TYPE switchyard_proxy_requests_total counter\n");
        text += &series("canary", "v2", "200", ok);
        if self.export_5xx {
            text += &series("canary", "v2", "500", failed);
        }
        text += &series("stable", "v1", "200", 0);
        // Every request took 30 ms.
        let all = ok + failed;
        let labels = r#"service="web",track="canary",version="v2""#;
        text += "# TYPE switchyard_proxy_request_duration_seconds histogram\n";
        for le in ["0.01", "0.05", "0.1", "+Inf"] {
            let count = if le == "0.01" { 0 } else { all };
            text += &format!(
                "switchyard_proxy_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {count}\n"
            );
        }
        text += &format!(
            "switchyard_proxy_request_duration_seconds_sum{{{labels}}} {}\n",
            all as f64 * 0.03
        );
        text += &format!("switchyard_proxy_request_duration_seconds_count{{{labels}}} {all}\n");
        text
    }

    /// Adds `ok` good and `failed` 5xx requests every 50 ms until the task is aborted.
    fn drive(self: &Arc<Self>, ok: u64, failed: u64) -> tokio::task::JoinHandle<()> {
        let traffic = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tick.tick().await;
                traffic.ok.fetch_add(ok, Ordering::SeqCst);
                traffic.failed.fetch_add(failed, Ordering::SeqCst);
            }
        })
    }
}

/// Serves `traffic` on `http://127.0.0.1:<port>/metrics` for the rest of the test.
async fn serve(traffic: Arc<Traffic>) -> SocketAddr {
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|State(t): State<Arc<Traffic>>| async move { t.exposition() }),
        )
        .with_state(traffic);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn canary() -> TrackWindow {
    TrackWindow {
        service: Name::parse("web").unwrap(),
        track: Track::Canary,
        version: Version::parse("v2").unwrap(),
        window: WINDOW,
    }
}

fn source(prom: &TestPrometheus) -> PromSource {
    PromSource {
        client: prom.client(Duration::from_secs(2)),
        templates: QueryTemplates::default(),
    }
}

fn policy(min_requests: f64) -> Policy {
    Policy {
        max_error_rate: 0.05,
        max_p99_latency: Some(Duration::from_millis(200)),
        min_requests,
        baseline_margin: None,
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `timeout`.
async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let since = Instant::now();
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            since.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Measures until the judge has enough data to decide (neither no data nor inconclusive),
/// as the canary gate would, and returns the decisive verdict with its measurement.
async fn analyse(source: &PromSource, policy: &Policy) -> (Verdict, Measurement) {
    eventually(Duration::from_secs(20), "a decisive verdict", || async {
        let m = source.measure(&canary()).await.expect("prometheus answers");
        match judge(&m, None, policy) {
            Verdict::NoData(_) | Verdict::Inconclusive(_) => None,
            decisive => Some((decisive, m)),
        }
    })
    .await
}

#[tokio::test]
async fn no_traffic_is_never_a_pass() {
    check_window(WINDOW, SCRAPE).unwrap();
    let traffic = Arc::new(Traffic {
        export_5xx: true,
        ..Traffic::default()
    });
    let Some(prom) = start_or_skip(serve(traffic).await, SCRAPE).await else {
        return;
    };
    let source = source(&prom);
    let client = prom.client(Duration::from_secs(2));
    // Two scrapes inside the window, so increase() has something to work on.
    eventually(Duration::from_secs(15), "two scrapes in the window", || async {
        let expr = r#"count_over_time(switchyard_proxy_requests_total{track="canary",code="200"}[5s]) >= 2"#;
        let samples = client.query(expr, None).await.ok()?;
        (!samples.is_empty()).then_some(())
    })
    .await;

    let m = source.measure(&canary()).await.unwrap();
    assert_eq!(m.requests, Some(0.0), "{m:?}");
    assert_eq!(m.errors, Some(0.0), "{m:?}");
    // histogram_quantile over zero rates is NaN: no data, not 0 s.
    assert_eq!(m.p99_latency, None, "{m:?}");
    assert!(
        matches!(judge(&m, None, &policy(0.0)), Verdict::NoData(_)),
        "{:?}",
        judge(&m, None, &policy(0.0))
    );
    assert!(matches!(
        judge(&m, None, &policy(1.0)),
        Verdict::Inconclusive(_)
    ));

    // The error ratio itself, as a dashboard would write it: 0/0 is NaN or nothing.
    let ratio = r#"sum(rate(switchyard_proxy_requests_total{track="canary",code=~"5.."}[5s])) / sum(rate(switchyard_proxy_requests_total{track="canary"}[5s]))"#;
    let samples = client.query(ratio, None).await.unwrap();
    assert!(
        samples.iter().all(|s| s.value.is_nan()),
        "a ratio with no traffic must be no data: {samples:?}"
    );

    // A service Prometheus has never seen: no data everywhere, never a fallback zero.
    let unknown = TrackWindow {
        service: Name::parse("ghost").unwrap(),
        ..canary()
    };
    let m = source.measure(&unknown).await.unwrap();
    assert_eq!(m, Measurement::default());
    assert!(matches!(judge(&m, None, &policy(0.0)), Verdict::NoData(_)));
}

#[tokio::test]
async fn a_good_canary_passes() {
    // Only 200s, and no 5xx series at all: errors must still come back as 0, not no data.
    let traffic = Arc::new(Traffic::default());
    let Some(prom) = start_or_skip(serve(Arc::clone(&traffic)).await, SCRAPE).await else {
        return;
    };
    let _driver = AbortOnDrop(traffic.drive(10, 0));
    let source = source(&prom);
    let started = Instant::now();
    let (verdict, m) = analyse(&source, &policy(20.0)).await;
    eprintln!(
        "good canary: {verdict:?} {m:?} after {:?}",
        started.elapsed()
    );
    assert!(matches!(verdict, Verdict::Pass(_)), "{verdict:?} {m:?}");
    assert!(m.requests.unwrap() >= 20.0, "{m:?}");
    assert_eq!(m.errors, Some(0.0), "{m:?}");
    let p99 = m.p99_latency.unwrap();
    assert!(
        p99 > 0.01 && p99 <= 0.05,
        "p99 {p99} outside the 30 ms bucket"
    );

    // {version} reaches Prometheus too: the same requests counted by version label.
    let by_version = PromSource {
        templates: QueryTemplates {
            requests: r#"sum(increase(switchyard_proxy_requests_total{service="{service}",version="{version}"}[{window}]))"#.into(),
            ..QueryTemplates::default()
        },
        ..source.clone()
    };
    let requests = by_version.measure(&canary()).await.unwrap().requests;
    assert!(requests.is_some_and(|r| r > 0.0), "{requests:?}");
    let other = TrackWindow {
        version: Version::parse("v9").unwrap(),
        ..canary()
    };
    assert_eq!(by_version.measure(&other).await.unwrap().requests, None);
}

#[tokio::test]
async fn a_canary_failing_30_percent_fails() {
    let traffic = Arc::new(Traffic {
        export_5xx: true,
        ..Traffic::default()
    });
    let Some(prom) = start_or_skip(serve(Arc::clone(&traffic)).await, SCRAPE).await else {
        return;
    };
    let _driver = AbortOnDrop(traffic.drive(7, 3));
    let started = Instant::now();
    let (verdict, m) = analyse(&source(&prom), &policy(20.0)).await;
    eprintln!(
        "bad canary: {verdict:?} {m:?} after {:?}",
        started.elapsed()
    );
    let Verdict::Fail(reason) = &verdict else {
        panic!("a 30% failing canary was not failed: {verdict:?} {m:?}")
    };
    let rate = m.error_rate().unwrap();
    assert!((0.25..0.35).contains(&rate), "error rate {rate}: {m:?}");
    assert!(reason.contains("exceeds the maximum 5.00%"), "{reason}");
}

#[tokio::test]
async fn prometheus_stopped_mid_analysis_is_an_error_not_a_promotion() {
    let traffic = Arc::new(Traffic::default());
    let Some(mut prom) = start_or_skip(serve(Arc::clone(&traffic)).await, SCRAPE).await else {
        return;
    };
    let _driver = AbortOnDrop(traffic.drive(10, 0));
    let source = source(&prom);
    let (verdict, _) = analyse(&source, &policy(20.0)).await;
    assert!(matches!(verdict, Verdict::Pass(_)), "{verdict:?}");

    let pid = prom.pid().unwrap();
    prom.stop();
    assert_eq!(prom.pid(), None);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "prometheus pid {pid} still running after stop"
    );
    let err = source.measure(&canary()).await.unwrap_err();
    assert!(
        err.0.contains("unreachable") && err.0.contains(prom.url()),
        "{err}"
    );
}

#[tokio::test]
async fn a_malformed_expression_is_bad_data_naming_the_expression() {
    let Some(prom) = start_or_skip(serve(Arc::new(Traffic::default())).await, SCRAPE).await else {
        return;
    };
    let expr = "sum(rate(switchyard_proxy_requests_total[5s])";
    let err = prom
        .client(Duration::from_secs(2))
        .query(expr, None)
        .await
        .unwrap_err();
    let PromError::Query {
        status, error_type, ..
    } = &err
    else {
        panic!("not a query error: {err:?}")
    };
    assert_eq!((*status, error_type.as_str()), (400, "bad_data"), "{err}");
    assert!(err.to_string().contains(expr), "{err}");
}

#[tokio::test]
async fn the_harness_scrapes_its_target_and_stops_by_pid() {
    let started = Instant::now();
    let Some(mut prom) = start_or_skip(serve(Arc::new(Traffic::default())).await, SCRAPE).await
    else {
        return;
    };
    let ready = started.elapsed();
    prom.wait_scraped(Duration::from_secs(10)).await.unwrap();
    eprintln!(
        "prometheus ready after {ready:?}, first scrape after {:?}",
        started.elapsed()
    );
    assert!(prom.log().contains("Server is ready"), "{}", prom.log());
    let pid = prom.pid().unwrap();
    prom.stop();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "prometheus pid {pid} still running after stop"
    );
    assert!(prom.log().contains("See you next time"), "{}", prom.log());
}

/// Stops a background task when the test ends, whether it passed or not.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
