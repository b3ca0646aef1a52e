//! The demo app's HTTP side: [`router`] builds the routes from a [`Config`], and [`serve`]
//! runs them until a shutdown signal, draining in-flight requests for at most the grace
//! period, closes the connections still open when it runs out, and says how it ended in a
//! [`Stopped`]. [`InFlight`] counts the requests being answered.

use std::future::{Future, IntoFuture};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::config::Config;
use crate::connections::{OpenConnections, TrackedListener};
pub use crate::in_flight::InFlight;

/// Longest delay `/slow` accepts, in milliseconds.
const MAX_SLOW_MS: u64 = 60_000;

#[derive(Clone)]
struct AppState {
    version: HeaderValue,
    build: Option<HeaderValue>,
    latency: std::time::Duration,
    fail_rate: f64,
    health_fail: bool,
    in_flight: InFlight,
    data_dirs: Arc<[PathBuf]>,
}

/// The routes: `GET /`, `GET /slow?ms=N`, `GET /health`, `GET /version`, `GET /data`, and
/// the long-lived ones of [`crate::streams`] (`GET /ws`, `GET /events`, `POST /upload`).
pub fn router(config: &Config, in_flight: InFlight) -> Router {
    let state = AppState {
        version: HeaderValue::from_str(&config.version)
            .expect("Config checks that APP_VERSION is a valid header value"),
        build: config.build.as_deref().map(|b| {
            HeaderValue::from_str(b).expect("Config checks that APP_BUILD is a valid header value")
        }),
        latency: config.latency,
        fail_rate: config.fail_rate,
        health_fail: config.health_fail,
        in_flight: in_flight.clone(),
        data_dirs: config.data_dirs.clone().into(),
    };
    Router::new()
        .route("/", get(root).post(posted))
        .route("/slow", get(slow))
        .route("/health", get(health))
        .route("/version", get(version))
        .route("/data", get(data))
        .route("/headers", get(forwarded_headers))
        .with_state(state)
        .merge(crate::streams::router(&config.version, in_flight))
}

/// A POST to `/`: its body is read in full (so the connection stays reusable), then answered
/// as a GET is.
async fn posted(state: State<AppState>, _body: axum::body::Bytes) -> Response {
    root(state).await
}

async fn root(State(state): State<AppState>) -> Response {
    let _guard = state.in_flight.enter();
    if !state.latency.is_zero() {
        tokio::time::sleep(state.latency).await;
    }
    // `random` is uniform in [0, 1), so 0.0 never fails and 1.0 always does.
    if state.fail_rate > 0.0 && rand::random::<f64>() < state.fail_rate {
        let body = format!("injected failure (FAIL_RATE={})\n", state.fail_rate);
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("x-version", state.version.clone())],
            body,
        )
            .into_response();
    }
    version_response(&state)
}

/// `/slow?ms=N`: the `/` response after N ms (at most [`MAX_SLOW_MS`]), whatever
/// `LATENCY_MS` and `FAIL_RATE` say, so a test can hold one request in flight for as long as
/// it needs.
async fn slow(State(state): State<AppState>, uri: Uri) -> Response {
    let Some(delay) = slow_delay(uri.query()) else {
        let body =
            format!("expected /slow?ms=N, N a whole number of milliseconds up to {MAX_SLOW_MS}\n");
        return (StatusCode::BAD_REQUEST, body).into_response();
    };
    let _guard = state.in_flight.enter();
    tokio::time::sleep(delay).await;
    version_response(&state)
}

fn slow_delay(query: Option<&str>) -> Option<Duration> {
    let ms: u64 = query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("ms="))?
        .parse()
        .ok()?;
    (ms <= MAX_SLOW_MS).then(|| Duration::from_millis(ms))
}

/// 200 with the version in the `x-version` header and a JSON body.
fn version_response(state: &AppState) -> Response {
    let version = state.version.to_str().unwrap_or("dev");
    let body = format!("{{\"version\":\"{version}\"}}\n");
    let mut response = (
        [
            ("x-version", state.version.clone()),
            (
                header::CONTENT_TYPE.as_str(),
                HeaderValue::from_static("application/json"),
            ),
        ],
        body,
    )
        .into_response();
    if let Some(build) = &state.build {
        response.headers_mut().insert("x-build", build.clone());
    }
    response
}

async fn health(State(state): State<AppState>) -> Response {
    if state.health_fail {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy: HEALTH_FAIL is set",
        )
            .into_response()
    } else {
        "ok".into_response()
    }
}

/// The headers a proxy in front says the request came with, one `name: value` line each
/// (`host`, `x-forwarded-*`, `x-real-ip`), so a test can read what the app was told.
async fn forwarded_headers(headers: axum::http::HeaderMap) -> Response {
    let mut lines = String::new();
    for name in [
        "host",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-real-ip",
        "forwarded",
    ] {
        for value in headers.get_all(name) {
            lines.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
        }
    }
    lines.into_response()
}

async fn version(State(state): State<AppState>) -> Response {
    state
        .version
        .to_str()
        .unwrap_or("dev")
        .to_string()
        .into_response()
}

/// The files in `DATA_DIRS` (see [`crate::data`]); 404 when it is not set.
async fn data(State(state): State<AppState>) -> Response {
    if state.data_dirs.is_empty() {
        return (StatusCode::NOT_FOUND, "DATA_DIRS is not set\n").into_response();
    }
    let dirs = Arc::clone(&state.data_dirs);
    match tokio::task::spawn_blocking(move || crate::data::listing(&dirs)).await {
        Ok(Ok(text)) => text.into_response(),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("listing DATA_DIRS: {e}\n"),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// How [`serve`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// What the shutdown future returned, e.g. `"SIGTERM"`.
    pub signal: &'static str,
    /// `/` and `/slow` requests still unanswered when the grace period ran out, left without
    /// a response; 0 when all drained.
    pub abandoned: usize,
}

/// Serves `listener` until `shutdown` completes, then stops accepting and waits for
/// in-flight requests (open websockets and event streams among them), for at most
/// `config.shutdown_grace`. When that runs out it closes
/// every connection still open before returning, so requests in flight get no response,
/// as when the process exits.
pub async fn serve(
    listener: TcpListener,
    config: &Config,
    in_flight: InFlight,
    shutdown: impl Future<Output = &'static str> + Send + 'static,
) -> Stopped {
    let (signalled_tx, signalled_rx) = oneshot::channel();
    let open = OpenConnections::default();
    let listener = TrackedListener::new(listener, open.clone());
    let server = axum::serve(listener, router(config, in_flight.clone()))
        .with_graceful_shutdown(async move {
            let _ = signalled_tx.send(shutdown.await);
        })
        .into_future();
    tokio::pin!(server);
    let mut signalled_rx = signalled_rx;
    let (signal, server_done) = tokio::select! {
        // Draining with nothing in flight can finish in the same poll that saw the signal.
        _ = &mut server => (signalled_rx.try_recv().unwrap_or("shutdown"), true),
        signal = &mut signalled_rx => (signal.unwrap_or("shutdown"), false),
    };
    // axum's graceful shutdown waits for the HTTP connections it serves; an upgraded one (a
    // websocket) left axum when it upgraded, so the in-flight count is waited for too.
    let drained = async {
        if !server_done {
            let _ = (&mut server).await;
        }
        in_flight.drained().await;
    };
    match tokio::time::timeout(config.shutdown_grace, drained).await {
        Ok(()) => Stopped {
            signal,
            abandoned: 0,
        },
        Err(_) => {
            let abandoned = in_flight.get();
            open.close_all();
            Stopped { signal, abandoned }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io;
    use std::net::SocketAddr;
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::task::JoinHandle;

    use super::*;
    use crate::healthcheck::{self, http_get, RawResponse};

    pub(crate) struct Running {
        pub(crate) addr: SocketAddr,
        pub(crate) in_flight: InFlight,
        pub(crate) stop: oneshot::Sender<&'static str>,
        pub(crate) server: JoinHandle<Stopped>,
    }

    pub(crate) async fn start(vars: &[(&str, &str)]) -> Running {
        let config = Config::from_lookup(|name| match name {
            "BIND_ADDR" => Some("127.0.0.1".to_string()),
            "PORT" => Some("0".to_string()),
            _ => vars
                .iter()
                .find(|(var, _)| *var == name)
                .map(|(_, value)| value.to_string()),
        })
        .unwrap();
        let listener = TcpListener::bind(config.addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let in_flight = InFlight::default();
        let (stop, stopped) = oneshot::channel();
        let server = tokio::spawn({
            let in_flight = in_flight.clone();
            async move {
                let shutdown = async move { stopped.await.unwrap_or("test dropped") };
                serve(listener, &config, in_flight, shutdown).await
            }
        });
        Running {
            addr,
            in_flight,
            stop,
            server,
        }
    }

    async fn get(addr: SocketAddr, path: &'static str) -> RawResponse {
        try_get(addr, path, Duration::from_secs(5)).await.unwrap()
    }

    async fn try_get(
        addr: SocketAddr,
        path: &'static str,
        timeout: Duration,
    ) -> io::Result<RawResponse> {
        tokio::task::spawn_blocking(move || http_get(addr, path, timeout))
            .await
            .unwrap()
    }

    pub(crate) async fn wait_for_in_flight(in_flight: &InFlight, want: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while in_flight.get() != want {
            assert!(
                Instant::now() < deadline,
                "in-flight stayed {} instead of {want}",
                in_flight.get()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn root_reports_the_version_in_header_and_body() {
        let app = start(&[("APP_VERSION", "v7")]).await;
        let response = get(app.addr, "/").await;
        assert_eq!(response.status, 200);
        assert_eq!(response.header("x-version"), Some("v7"));
        assert_eq!(response.header("content-type"), Some("application/json"));
        assert_eq!(response.body, "{\"version\":\"v7\"}\n");
        assert_eq!(get(app.addr, "/version").await.body, "v7");
        assert_eq!(response.header("x-build"), None, "no APP_BUILD, no header");
    }

    #[tokio::test]
    async fn root_reports_the_build_baked_into_the_image() {
        let app = start(&[("APP_VERSION", "v1"), ("APP_BUILD", "second")]).await;
        let response = get(app.addr, "/").await;
        assert_eq!(response.header("x-version"), Some("v1"));
        assert_eq!(response.header("x-build"), Some("second"));
    }

    #[tokio::test]
    async fn data_lists_what_every_version_wrote_and_is_absent_without_data_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = dir.path().display().to_string();
        crate::data::write_marker(&[dir.path().to_owned()], "v1").unwrap();
        crate::data::write_marker(&[dir.path().to_owned()], "v2").unwrap();
        let app = start(&[("DATA_DIRS", &dirs)]).await;
        let response = get(app.addr, "/data").await;
        assert_eq!(response.status, 200);
        assert_eq!(response.body, format!("{dirs}: v1 v2\n"));
        let without = start(&[]).await;
        assert_eq!(get(without.addr, "/data").await.status, 404);
    }

    #[tokio::test]
    async fn health_answers_ok() {
        let app = start(&[]).await;
        let response = get(app.addr, "/health").await;
        assert_eq!((response.status, response.body.as_str()), (200, "ok"));
        let addr = app.addr;
        let checked =
            tokio::task::spawn_blocking(move || healthcheck::check(addr, Duration::from_secs(2)));
        assert_eq!(checked.await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn health_fail_answers_503_and_fails_the_healthcheck() {
        let app = start(&[("HEALTH_FAIL", "1")]).await;
        let response = get(app.addr, "/health").await;
        assert_eq!(response.status, 503);
        assert_eq!(response.body, "unhealthy: HEALTH_FAIL is set");
        let addr = app.addr;
        let checked =
            tokio::task::spawn_blocking(move || healthcheck::check(addr, Duration::from_secs(2)));
        let err = checked.await.unwrap().unwrap_err();
        assert!(err.contains("answered 503"), "{err}");
    }

    #[tokio::test]
    async fn fail_rate_one_answers_every_request_with_500() {
        let app = start(&[("FAIL_RATE", "1"), ("APP_VERSION", "bad")]).await;
        for _ in 0..5 {
            let response = get(app.addr, "/").await;
            assert_eq!(response.status, 500);
            assert_eq!(response.header("x-version"), Some("bad"));
        }
        assert_eq!(get(app.addr, "/health").await.status, 200);
    }

    #[tokio::test]
    async fn shutdown_waits_for_the_request_in_flight() {
        let app = start(&[("LATENCY_MS", "300")]).await;
        let addr = app.addr;
        let slow = tokio::spawn(get(addr, "/"));
        wait_for_in_flight(&app.in_flight, 1).await;
        app.stop.send("SIGTERM").unwrap();
        assert_eq!(slow.await.unwrap().status, 200);
        let stopped = app.server.await.unwrap();
        assert_eq!(
            stopped,
            Stopped {
                signal: "SIGTERM",
                abandoned: 0
            }
        );
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn slow_answers_with_the_version_after_the_delay() {
        let app = start(&[("APP_VERSION", "v3"), ("FAIL_RATE", "1")]).await;
        let asked = Instant::now();
        let response = get(app.addr, "/slow?ms=200").await;
        assert!(asked.elapsed() >= Duration::from_millis(200));
        assert_eq!(response.status, 200);
        assert_eq!(response.header("x-version"), Some("v3"));
        assert_eq!(response.body, "{\"version\":\"v3\"}\n");
    }

    #[tokio::test]
    async fn slow_rejects_a_delay_it_cannot_read_or_over_a_minute() {
        let app = start(&[]).await;
        for path in [
            "/slow",
            "/slow?ms=",
            "/slow?ms=60001",
            "/slow?ms=-1",
            "/slow?ms=1.5",
            "/slow?s=1",
        ] {
            let response = get(app.addr, path).await;
            assert_eq!(response.status, 400, "{path}");
            assert!(response.body.contains("up to 60000"), "{path}");
        }
        assert_eq!(get(app.addr, "/slow?x=1&ms=0").await.status, 200);
        assert_eq!(slow_delay(Some("ms=60000")), Some(Duration::from_secs(60)));
    }

    #[tokio::test]
    async fn default_grace_lets_a_slow_request_in_flight_finish() {
        let app = start(&[("APP_VERSION", "v1")]).await;
        let slow = tokio::spawn(get(app.addr, "/slow?ms=300"));
        wait_for_in_flight(&app.in_flight, 1).await;
        app.stop.send("SIGTERM").unwrap();
        let response = slow.await.unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.header("x-version"), Some("v1"));
        let stopped = app.server.await.unwrap();
        assert_eq!(stopped.abandoned, 0);
    }

    #[tokio::test]
    async fn zero_grace_abandons_a_slow_request_in_flight() {
        let app = start(&[("SHUTDOWN_GRACE_MS", "0")]).await;
        let slow = tokio::spawn(try_get(app.addr, "/slow?ms=30000", Duration::from_secs(20)));
        wait_for_in_flight(&app.in_flight, 1).await;
        let asked = Instant::now();
        app.stop.send("SIGTERM").unwrap();
        let stopped = app.server.await.unwrap();
        assert_eq!(
            stopped,
            Stopped {
                signal: "SIGTERM",
                abandoned: 1
            }
        );
        let err = slow
            .await
            .unwrap()
            .expect_err("the abandoned request got a response");
        // The connection closed; the client did not merely give up waiting.
        assert_ne!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(asked.elapsed() < Duration::from_secs(5), "{err}");
    }

    #[tokio::test]
    async fn shutdown_gives_up_after_the_grace_period() {
        let app = start(&[("LATENCY_MS", "60000"), ("SHUTDOWN_GRACE_MS", "100")]).await;
        let mut client = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        wait_for_in_flight(&app.in_flight, 1).await;
        let asked = Instant::now();
        app.stop.send("SIGINT").unwrap();
        let stopped = app.server.await.unwrap();
        assert_eq!(
            stopped,
            Stopped {
                signal: "SIGINT",
                abandoned: 1
            }
        );
        assert!(asked.elapsed() < Duration::from_secs(5));
        // Regression: the abandoned connection used to stay open on axum's task after
        // `serve` returned, and its request was answered once the latency had passed.
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest));
        let read = read.await.expect("the abandoned connection stayed open");
        assert!(read.is_err() || rest.is_empty(), "got {rest:?}");
    }
}
