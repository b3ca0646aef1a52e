//! The load generator against tiny in-test servers: counting, budgets, re-sends, POSTs,
//! timeouts.
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use super::*;

/// What the test server answers to its `n`th request (from 0): a status and maybe
/// an `x-version`, status 0 to close the connection unanswered, or `None` to never answer.
/// A 3xx redirects to `/`.
type Respond = fn(u64) -> Option<(u16, Option<&'static str>)>;

struct TestServer {
    url: String,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicU64>,
    received: Arc<Mutex<Vec<Received>>>,
}

/// One request as the test server read it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Received {
    method: String,
    content_type: Option<String>,
    body: Vec<u8>,
}

/// A keep-alive HTTP/1.1 server on 127.0.0.1:0, just enough for GETs and POSTs with a
/// `content-length`.
async fn test_server(respond: Respond) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = TestServer {
        url: format!("http://{addr}/"),
        connections: Arc::new(AtomicUsize::new(0)),
        requests: Arc::new(AtomicU64::new(0)),
        received: Arc::new(Mutex::new(Vec::new())),
    };
    let accepted = Arc::clone(&server.connections);
    let (counter, received) = (Arc::clone(&server.requests), Arc::clone(&server.received));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            let (counter, received) = (Arc::clone(&counter), Arc::clone(&received));
            tokio::spawn(serve_connection(stream, respond, counter, received));
        }
    });
    server
}

/// The request line, headers and body of the next request, or `None` at end of stream.
async fn read_request(reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<Received> {
    let mut line = String::new();
    reader.read_line(&mut line).await.ok()?;
    let method = line
        .split(' ')
        .next()
        .filter(|m| !m.is_empty())?
        .to_string();
    let (mut content_type, mut content_length) = (None, 0);
    loop {
        line.clear();
        if reader.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let Some((name, value)) = line.trim_end().split_once(':') else {
            break;
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-type" => content_type = Some(value.to_string()),
            "content-length" => content_length = value.parse().ok()?,
            _ => {}
        }
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body).await.ok()?;
    Some(Received {
        method,
        content_type,
        body,
    })
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    respond: Respond,
    counter: Arc<AtomicU64>,
    received: Arc<Mutex<Vec<Received>>>,
) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    while let Some(request) = read_request(&mut reader).await {
        received.lock().unwrap().push(request);
        let Some((code, version)) = respond(counter.fetch_add(1, Ordering::SeqCst)) else {
            std::future::pending::<()>().await;
            return;
        };
        // Status 0: close the connection without answering, as an exiting nginx worker
        // does to an idle keep-alive connection.
        if code == 0 {
            return;
        }
        let version = version
            .map(|v| format!("x-version: {v}\r\n"))
            .unwrap_or_default();
        // Every redirect points back here, so a client that followed them would loop.
        let location = if (300..400).contains(&code) {
            "location: /\r\n"
        } else {
            ""
        };
        let response =
            format!("HTTP/1.1 {code} X\r\n{version}{location}content-length: 2\r\n\r\nok");
        if write.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Answers the second request (the first on the reused connection) by closing the
/// connection unanswered, as an nginx worker exiting on reload can; the rest with 200.
fn closes_the_second_request(n: u64) -> Option<(u16, Option<&'static str>)> {
    if n == 1 {
        Some((0, None))
    } else {
        Some((200, Some("v1")))
    }
}

fn config(url: &str, connections: usize, max_requests: u64) -> LoadConfig {
    LoadConfig {
        connections,
        max_requests,
        max_duration: Duration::from_secs(20),
        request_timeout: Duration::from_secs(5),
        ..LoadConfig::new(url)
    }
}

fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test]
async fn counts_ok_failed_and_versions_and_stops_at_max_requests() {
    // Every 4th request fails; the first 100 come from v1, the rest from v2.
    let server = test_server(|n| match n {
        n if n % 4 == 3 => Some((500, Some("v1"))),
        n if n < 100 => Some((200, Some("v1"))),
        _ => Some((200, Some("v2"))),
    })
    .await;
    let report = Load::start(config(&server.url, 4, 200)).wait().await;
    assert_eq!(
        (report.total, report.ok, report.failed),
        (200, 150, 50),
        "{report}"
    );
    assert_eq!(server.requests.load(Ordering::SeqCst), 200);
    assert_eq!(report.failures.len(), MAX_FAILURES_KEPT);
    assert!(report.failures.iter().all(|failure| failure.kind
        == FailureKind::Status {
            code: 500,
            version: Some("v1".to_string())
        }));
    assert_eq!(report.by_version["v1"].count, 75);
    assert_eq!(report.by_version["v2"].count, 75);
    assert_eq!(
        report.failed_by_version["v1"], 50,
        "every failure counted by version, beyond the ones kept"
    );
    assert!(report.by_version["v1"].first <= report.by_version["v2"].last);
    assert_eq!(report.samples.len(), 150);
    assert!(report.percentile(50.0, None).is_some());
    assert!(report.requests_per_second() > 0.0);
}

#[tokio::test]
async fn each_task_keeps_one_keep_alive_connection() {
    let server = test_server(|_| Some((200, None))).await;
    let report = Load::start(config(&server.url, 3, 600)).wait().await;
    assert_eq!(report.ok, 600, "{report}");
    assert!(report.by_version.is_empty());
    // Far fewer connections than requests; a reused connection can race a fresh
    // one in hyper's pool now and then, so not exactly 3.
    let connections = server.connections.load(Ordering::SeqCst);
    assert!((3..=6).contains(&connections), "{connections} connections");
}

#[tokio::test]
async fn stops_at_max_duration_without_being_stopped() {
    let server = test_server(|_| Some((200, Some("v1")))).await;
    let load = Load::start(LoadConfig {
        max_requests: u64::MAX,
        max_duration: Duration::from_millis(300),
        ..config(&server.url, 2, 0)
    });
    let report = tokio::time::timeout(Duration::from_secs(10), load.wait())
        .await
        .expect("load kept going past max_duration");
    assert!(report.ok > 0 && report.failed == 0, "{report}");
    assert!(report.elapsed < Duration::from_secs(5), "{report}");
}

#[tokio::test]
async fn stop_ends_the_load_early() {
    let server = test_server(|_| Some((200, Some("v1")))).await;
    let load = Load::start(LoadConfig {
        max_requests: u64::MAX,
        max_duration: Duration::from_secs(60),
        ..config(&server.url, 2, 0)
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while load.snapshot().ok < 20 {
        assert!(Instant::now() < deadline, "{}", load.snapshot());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!load.is_finished());
    let asked = Instant::now();
    let report = load.stop().await;
    assert!(asked.elapsed() < Duration::from_secs(5));
    assert!(report.ok >= 20 && report.failed == 0, "{report}");
    assert_eq!(report.total, server.requests.load(Ordering::SeqCst));
}

#[tokio::test]
async fn refused_connections_are_failures() {
    let url = format!("http://{}/", closed_port());
    let report = Load::start(config(&url, 1, 5)).wait().await;
    assert_eq!(
        (report.total, report.ok, report.failed),
        (5, 0, 5),
        "{report}"
    );
    let FailureKind::Error(error) = &report.failures[0].kind else {
        panic!("expected a transport error: {report}");
    };
    assert!(error.to_lowercase().contains("refused"), "{error}");
}

#[tokio::test]
async fn unanswered_requests_time_out_as_failures() {
    let server = test_server(|_| None).await;
    let report = Load::start(LoadConfig {
        request_timeout: Duration::from_millis(100),
        ..config(&server.url, 2, 4)
    })
    .wait()
    .await;
    assert_eq!((report.total, report.failed), (4, 4), "{report}");
    let FailureKind::Error(error) = &report.failures[0].kind else {
        panic!("expected a timeout: {report}");
    };
    assert!(error.contains("timed out"), "{error}");
}

#[test]
fn percentile_over_a_window() {
    let started = Instant::now();
    let sample = |at_ms, latency_ms: u32| Sample {
        at_ms,
        latency_us: latency_ms * 1000,
    };
    let report = LoadReport {
        started,
        elapsed: Duration::from_secs(4),
        total: 8,
        ok: 8,
        failed: 0,
        failures: Vec::new(),
        by_version: BTreeMap::new(),
        failed_by_version: BTreeMap::new(),
        // Steady at 10 ms for the first second, then 100–400 ms during a deploy.
        samples: vec![
            sample(0, 10),
            sample(250, 10),
            sample(500, 10),
            sample(750, 10),
            sample(1000, 100),
            sample(1500, 200),
            sample(2000, 300),
            sample(2500, 400),
        ],
        samples_dropped: 0,
        retried: 0,
    };
    let ms = Duration::from_millis;
    let steady = Some((started, started + ms(1000)));
    let deploy = Some((started + ms(1000), started + ms(3000)));
    assert_eq!(report.percentile(99.0, steady), Some(ms(10)));
    assert_eq!(report.percentile(50.0, deploy), Some(ms(200)));
    assert_eq!(report.percentile(100.0, deploy), Some(ms(400)));
    assert_eq!(report.percentile(0.0, None), Some(ms(10)));
    assert_eq!(report.percentile(50.0, None), Some(ms(10)));
    assert_eq!(report.percentile(75.0, None), Some(ms(200)));
    let later = Some((started + ms(5000), started + ms(6000)));
    assert_eq!(report.percentile(50.0, later), None);
    assert_eq!(report.requests_per_second(), 2.0);
}

#[test]
fn failure_display_names_time_connection_and_cause() {
    let failure = Failure {
        at: Duration::from_millis(1500),
        connection: 3,
        kind: FailureKind::Status {
            code: 502,
            version: Some("v2".to_string()),
        },
    };
    assert_eq!(
        failure.to_string(),
        "+1.500s connection 3: HTTP 502 from version v2"
    );
}

#[tokio::test]
async fn without_resend_a_reused_connection_closed_unanswered_is_one_failure() {
    let server = test_server(closes_the_second_request).await;
    let report = Load::start(config(&server.url, 1, 5)).wait().await;
    assert_eq!(
        (report.ok, report.failed, report.retried),
        (4, 1, 0),
        "{report:?}"
    );
    assert_eq!(
        server.requests.load(Ordering::SeqCst),
        5,
        "no request was sent twice"
    );
    assert!(
        report.to_string().contains("1 failed, 0 re-sent"),
        "{report}"
    );
}

#[tokio::test]
async fn with_resend_a_reused_connection_closed_unanswered_is_sent_again_not_failed() {
    let server = test_server(closes_the_second_request).await;
    let report = Load::start(LoadConfig {
        resend: true,
        ..config(&server.url, 1, 5)
    })
    .wait()
    .await;
    assert_eq!(
        (report.ok, report.failed, report.retried),
        (5, 0, 1),
        "{report:?}"
    );
    assert_eq!(server.requests.load(Ordering::SeqCst), 6);
    assert_eq!(
        server.connections.load(Ordering::SeqCst),
        2,
        "the re-send used a fresh connection"
    );
    assert!(
        report.to_string().contains("0 failed, 1 re-sent"),
        "{report}"
    );
}

#[tokio::test]
async fn post_sends_its_body_as_octet_stream() {
    let server = test_server(|_| Some((200, Some("v1")))).await;
    let body: Vec<u8> = (0..=255).cycle().take(3000).collect();
    let report = Load::start(LoadConfig {
        method: Method::Post { body: body.clone() },
        ..config(&server.url, 2, 10)
    })
    .wait()
    .await;
    assert_eq!((report.ok, report.failed), (10, 0), "{report}");
    let received = server.received.lock().unwrap();
    assert_eq!(received.len(), 10);
    let want = Received {
        method: "POST".to_string(),
        content_type: Some("application/octet-stream".to_string()),
        body,
    };
    assert!(received.iter().all(|r| *r == want), "{:?}", received[0]);
}

#[tokio::test]
async fn a_post_is_never_sent_twice_even_with_resend() {
    let server = test_server(closes_the_second_request).await;
    let report = Load::start(LoadConfig {
        method: Method::Post {
            body: b"order".to_vec(),
        },
        resend: true,
        ..config(&server.url, 1, 5)
    })
    .wait()
    .await;
    assert_eq!(
        (report.ok, report.failed, report.retried),
        (4, 1, 0),
        "{report:?}"
    );
    assert_eq!(server.requests.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn redirects_are_failures_not_followed() {
    let server = test_server(|_| Some((302, None))).await;
    let report = Load::start(config(&server.url, 1, 3)).wait().await;
    assert_eq!((report.ok, report.failed), (0, 3), "{report}");
    assert_eq!(server.requests.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_fresh_connection_closed_unanswered_is_a_failure() {
    let server = test_server(|n| {
        if n == 0 {
            Some((0, None))
        } else {
            Some((200, Some("v1")))
        }
    })
    .await;
    let report = Load::start(LoadConfig {
        resend: true,
        ..config(&server.url, 1, 3)
    })
    .wait()
    .await;
    assert_eq!((report.failed, report.retried), (1, 0), "{report:?}");
}
