//! serve's authenticated API (`/api/v1`) end to end: serve runs in-process on `127.0.0.1:0`
//! beside a sandbox (real nginx, the demo-app as local processes, the real SQLite store).
//! Requests without the token or with a wrong one change nothing; with it, a deploy runs
//! detached inside serve under non-retrying load while its event stream reports each
//! step; promote and abort reach a paused canary; a token file others can read is refused.
//! The HTTP clients here are written over `TcpStream` by hand: nothing pools or retries.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard_app::live::Live;
use switchyard_app::load::{Load, LoadConfig};
use switchyard_app::progress::Progress;
use switchyard_app::sandbox::{Sandbox, SandboxOptions, SERVICE};
use switchyard_app::serve::{self, ServeOptions, Server};
use switchyard_app::settings;
use switchyard_engine::config::RuntimeChoice;
use switchyard_engine::{Name, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::ServeChild;
use crate::support::{assert_no_failures, eventually, require_dynamic, require_e2e};

pub(crate) const TOKEN: &str = "test-token-9f2c1d";
/// The longest one API exchange or event stream may take.
const PATIENCE: Duration = Duration::from_secs(60);

/// A 0600 token file in a directory of its own (the sandbox's config names it absolutely).
pub(crate) fn token_file(mode: u32) -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("api.token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
    (dir, file)
}

/// `canary`: the lines of `[service.canary]`. The sandbox's config names `token`.
async fn sandbox(canary: &str, token: &Path) -> Option<Sandbox> {
    sandbox_serving(canary, token, "").await
}

/// [`sandbox`] with more lines of `[serve]` (`serve_lines`).
pub(crate) async fn sandbox_serving(
    canary: &str,
    token: &Path,
    serve_lines: &str,
) -> Option<Sandbox> {
    start(options(canary, token, serve_lines).await?).await
}

/// The options of [`sandbox_serving`], for a test to add to.
async fn options(canary: &str, token: &Path, serve_lines: &str) -> Option<SandboxOptions> {
    let app = require_e2e(RuntimeChoice::Process).await?;
    let mut options = SandboxOptions::new(RuntimeChoice::Process, app)
        .replicas(2)
        .env("LATENCY_MS", "2");
    options.canary = canary.to_owned();
    options.tables = format!(
        "[serve]\ntoken_file = {:?}\n{serve_lines}",
        token.display().to_string()
    );
    Some(options)
}

/// A sandbox started with `options`, if nginx can route without reloads.
async fn start(options: SandboxOptions) -> Option<Sandbox> {
    let sandbox = Sandbox::start(&options).await.expect("sandbox starts");
    require_dynamic(&sandbox.live().router).then_some(sandbox)
}

/// serve with its own live clients, as `switchyard serve` would run beside the CLI.
pub(crate) async fn serve_with(config: switchyard_engine::Config) -> Server {
    let live = Live::open_lazy(config).unwrap();
    let options = ServeOptions {
        supervise: false,
        ..ServeOptions::new("127.0.0.1:0".parse().unwrap())
    };
    serve::start_with(live, options)
        .await
        .expect("serve starts")
}

pub(crate) fn load(sandbox: &Sandbox) -> Load {
    let mut config = LoadConfig::new(sandbox.url());
    config.connections = 4;
    config.max_requests = 1_000_000;
    config.max_duration = Duration::from_secs(90);
    Load::start(config)
}

/// One request on a fresh connection: (status, JSON body). `token` None sends no
/// `Authorization` header.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let body = body.unwrap_or("");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    };
    let response = tokio::time::timeout(PATIENCE, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within {PATIENCE:?}"));
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("a complete response");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
    let json = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}: not JSON: {body:?}"));
    (status, json)
}

async fn authed(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    call(addr, method, path, Some(TOKEN), body).await
}

/// One server-sent event and when it arrived.
#[derive(Debug)]
struct Received {
    name: String,
    data: Value,
    at: Instant,
}

/// Reads `GET path` (an event stream, chunked) until its `end` event.
async fn events(addr: SocketAddr, path: &str) -> Vec<Received> {
    tokio::time::timeout(PATIENCE, read_events(addr, path))
        .await
        .unwrap_or_else(|_| panic!("{path}: no `end` event within {PATIENCE:?}"))
}

async fn read_events(addr: SocketAddr, path: &str) -> Vec<Received> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Accept: text/event-stream\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut body = Vec::new();
    let mut head_done = false;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    // Bounded by the caller's timeout and by the server closing the connection.
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "{path}: closed before `end`: {received:?}");
        raw.extend_from_slice(&buf[..n]);
        if !head_done {
            let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&raw[..end]).into_owned();
            assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
            assert!(head.contains("text/event-stream"), "{head}");
            raw.drain(..end + 4);
            head_done = true;
        }
        // De-chunk what is complete.
        while let Some(line) = raw.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(std::str::from_utf8(&raw[..line]).unwrap().trim(), 16)
                .expect("a chunk size");
            if raw.len() < line + 2 + size + 2 {
                break;
            }
            body.extend_from_slice(&raw[line + 2..line + 2 + size]);
            raw.drain(..line + 2 + size + 2);
        }
        let text = String::from_utf8(body.clone()).unwrap();
        let Some(last) = text.rfind("\n\n") else {
            continue;
        };
        for block in text[..last].split("\n\n").filter(|b| !b.trim().is_empty()) {
            let mut name = String::from("message");
            let mut data = String::new();
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_owned();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            if data.is_empty() {
                continue; // a keep-alive comment
            }
            let data: Value = serde_json::from_str(&data).unwrap();
            assert_eq!(data["schema"], 1, "{data}");
            received.push(Received {
                name,
                data,
                at: Instant::now(),
            });
        }
        body.drain(..last + 2);
        if received.last().is_some_and(|r| r.name == "end") {
            return received;
        }
    }
}

fn names(events: &[Received]) -> Vec<&str> {
    events.iter().map(|e| e.name.as_str()).collect()
}

pub(crate) fn deployments(sandbox: &Sandbox) -> usize {
    let store = &sandbox.live().store;
    store.history(None, 100).unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_token_or_with_a_wrong_one_the_api_answers_401_and_changes_nothing() {
    let (_dir, token) = token_file(0o600);
    let Some(sandbox) = sandbox("", &token).await else {
        return;
    };
    let config = settings::load(&sandbox.config_path).unwrap();
    let server = serve_with(config.clone()).await;
    let addr = server.addr();
    let deploy = Some(r#"{"version": "v1"}"#);
    let deploy_path = format!("/api/v1/services/{SERVICE}/deploy");

    for token in [
        None,
        Some("wrong"),
        Some(&TOKEN[..TOKEN.len() - 1]),
        Some(""),
    ] {
        let (status, body) = call(addr, "POST", &deploy_path, token, deploy).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert_eq!(body["schema"], 1, "{body}");
        assert!(body["error"].is_string(), "{body}");
        assert!(!body.to_string().contains(TOKEN), "{body}");
        let (status, _) = call(addr, "POST", "/api/v1/services/web/rollback", token, None).await;
        assert_eq!(status, 401);
        let (status, _) = call(addr, "POST", "/api/v1/services/web/promote", token, None).await;
        assert_eq!(status, 401);
        let (status, _) = call(addr, "GET", "/api/v1/status", token, None).await;
        assert_eq!(status, 401);
        let (status, _) = call(addr, "GET", "/api/v1/deployments/1/events", token, None).await;
        assert_eq!(status, 401);
    }
    // A refused deploy never reached the store, and nothing runs.
    assert_eq!(deployments(&sandbox), 0);
    let name = Name::parse(SERVICE).unwrap();
    assert!(sandbox.live().store.lock(&name).unwrap().is_none());
    // Prometheus' and the supervisor's endpoints stay open.
    assert_eq!(crate::support::get(addr, "/healthz").await.0, 200);
    assert_eq!(crate::support::get(addr, "/metrics").await.0, 200);

    // With the token: read endpoints answer, bad input is a 400 that changes nothing.
    let (status, body) = authed(addr, "GET", "/api/v1/status", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["schema"], 1, "{body}");
    assert_eq!(body["services"][0]["service"], SERVICE, "{body}");
    let (status, body) = authed(addr, "GET", "/api/v1/history?limit=5", None).await;
    assert_eq!(
        (status, body["deployments"].as_array().unwrap().len()),
        (200, 0)
    );
    let bad = Some(r#"{"version": "v1;rm -rf"}"#);
    let (status, body) = authed(addr, "POST", &deploy_path, bad).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("version"),
        "{body}"
    );
    let (status, _) = authed(addr, "POST", "/api/v1/services/nope/deploy", deploy).await;
    assert_eq!(status, 404);
    let (status, _) = authed(addr, "GET", "/api/v1/deployments/42", None).await;
    assert_eq!(status, 404);
    assert_eq!(deployments(&sandbox), 0);
    server.shutdown().await.unwrap();

    // Without `[serve] token_file` the API is closed, and says what to set.
    let mut closed = config;
    closed.serve.token_file = None;
    let server = serve_with(closed).await;
    let (status, body) = authed(server.addr(), "POST", &deploy_path, deploy).await;
    assert_eq!(status, 401, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("[serve] token_file"), "{body}");
    assert_eq!(deployments(&sandbox), 0);
    server.shutdown().await.unwrap();
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_deploy_under_load_finishes_while_its_event_stream_reports_each_step() {
    let (_dir, token) = token_file(0o600);
    // Replicas that take a second to listen: the deploy still runs (and holds the lock)
    // when the test asks for a second one, however slow the machine.
    let Some(options) = options("", &token, "").await else {
        return;
    };
    let Some(sandbox) = start(options.env("START_DELAY_MS", "1000")).await else {
        return;
    };
    sandbox
        .deploy("v1", &Progress::new(false))
        .await
        .expect("v1 deploys");
    let server = serve_with(settings::load(&sandbox.config_path).unwrap()).await;
    let addr = server.addr();
    let traffic = load(&sandbox);
    crate::support::responses_from(&traffic, "v1", 50).await;

    let deploy_path = format!("/api/v1/services/{SERVICE}/deploy");
    let asked = Instant::now();
    let (status, body) = authed(addr, "POST", &deploy_path, Some(r#"{"version": "v2"}"#)).await;
    assert_eq!(status, 202, "{body}");
    let answered = asked.elapsed();
    let id = body["deployment"].as_i64().expect("a deployment id");
    // Followed from now, while the deploy runs (connected later, on a slow machine, the
    // stream could only replay a finished deploy).
    let path = format!("/api/v1/deployments/{id}/events");
    let stream = tokio::spawn(async move { events(addr, &path).await });
    // Answered at Begin, not at the end: the deploy still runs and holds the lock, which a
    // second deploy (API or CLI alike) finds taken.
    let (status, body) = authed(addr, "POST", &deploy_path, Some(r#"{"version": "v3"}"#)).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("lock"), "{body}");
    let cli = sandbox.deploy("v3", &Progress::new(false)).await;
    assert!(cli.is_err_and(|e| e.code == 2 && e.message.contains("lock")));

    let stream = stream.await.expect("the event stream's task");
    let seen = names(&stream);
    assert_eq!(seen.first(), Some(&"begin"), "{seen:?}");
    assert_eq!(&seen[seen.len() - 2..], ["done", "end"], "{seen:?}");
    for step in ["started", "healthy", "drained", "stopped"] {
        assert!(seen.contains(&step), "no {step} in {seen:?}");
    }
    assert!(
        stream.iter().all(|e| e.data["deployment"] == id),
        "{stream:?}"
    );
    let begin = &stream[0];
    assert_eq!(
        (begin.data["from"].as_str(), begin.data["to"].as_str()),
        (Some("v1"), Some("v2"))
    );
    let done = &stream[stream.len() - 2];
    assert_eq!(done.data["outcome"], "succeeded", "{:?}", done.data);
    let end = &stream[stream.len() - 1].data;
    assert!(end["error"].is_null() && end["code"] == 0, "{end}");
    // Streamed as they happened, not replayed at the end: after Begin the deploy still had
    // two health passes 100 ms apart to wait for. (A replay arrives within microseconds.)
    let took = done.at - begin.at;
    assert!(
        took > Duration::from_millis(20),
        "all at once after {took:?}"
    );
    assert!(answered < Duration::from_secs(5), "202 after {answered:?}");

    let report = traffic.stop().await;
    assert_no_failures(&report);
    assert!(
        report.by_version.get("v2").is_some_and(|v| v.count > 0),
        "{report}"
    );

    let (status, body) = authed(addr, "GET", &format!("/api/v1/deployments/{id}"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"], "succeeded", "{body}");
    assert_eq!(body["deployment"]["to_version"], "v2", "{body}");
    assert!(body["journal"].as_array().unwrap().len() > 3, "{body}");
    let (_, history) = authed(addr, "GET", "/api/v1/history?service=web&limit=1", None).await;
    assert_eq!(history["deployments"][0]["id"], id, "{history}");
    // An API deploy keeps its disruption like a CLI one: none failed at the proxy.
    let summary = history["deployments"][0]["disruption_summary"].as_str();
    assert!(summary.is_some_and(|s| s.starts_with("0 of ")), "{history}");
    assert!(body["deployment"]["disruption"].is_object(), "{body}");
    let (_, status) = authed(addr, "GET", "/api/v1/status", None).await;
    assert_eq!(status["services"][0]["active"]["version"], "v2", "{status}");

    // A deployment serve did not run (v1, by the "CLI"): its journal, then the end.
    let v1 = history_id(addr, "v1").await;
    let replay = events(addr, &format!("/api/v1/deployments/{v1}/events")).await;
    let seen = names(&replay);
    assert!(
        seen.len() > 3 && seen[..seen.len() - 1].iter().all(|n| *n == "step"),
        "{seen:?}"
    );
    let end = &replay.last().unwrap().data;
    assert_eq!(
        (end["outcome"].as_str(), end["code"].as_i64()),
        (Some("succeeded"), Some(0))
    );
    server.shutdown().await.unwrap();
    sandbox.shutdown().await.unwrap();
}

async fn history_id(addr: SocketAddr, version: &str) -> i64 {
    let (_, history) = authed(addr, "GET", "/api/v1/history", None).await;
    let found = history["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["to_version"] == version && d["outcome"] == "succeeded");
    found
        .and_then(|d| d["id"].as_i64())
        .expect("the deployment in history")
}

/// A canary that pauses after its 50 % step, judged by the embedded metrics.
const PAUSING_CANARY: &str = r#"
steps = [50, 100]
pause = [50]
hold = "1s"
interval = "500ms"
window = "5s"
min_requests = 5
"#;

/// Deploys `version` as a canary through the API and waits until it pauses at 50 %.
async fn paused_canary(addr: SocketAddr, version: &str) -> i64 {
    let body = format!(r#"{{"version": "{version}", "strategy": "canary"}}"#);
    let path = format!("/api/v1/services/{SERVICE}/deploy");
    let (status, answer) = authed(addr, "POST", &path, Some(&body)).await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["deployment"].as_i64().unwrap();
    eventually(
        Duration::from_secs(30),
        "the canary to pause at 50%",
        || async {
            let (_, status) = authed(addr, "GET", "/api/v1/status", None).await;
            let running = &status["services"][0]["deployment"];
            running["id"] == id && running["paused"] == true
        },
    )
    .await;
    id
}

/// `POST /api/v1/services/web/{what}` (promote, abort, pause) with the token.
async fn control(addr: SocketAddr, what: &str) -> (u16, Value) {
    let path = format!("/api/v1/services/{SERVICE}/{what}");
    authed(addr, "POST", &path, None).await
}

async fn outcome(addr: SocketAddr, id: i64) -> Value {
    let path = format!("/api/v1/deployments/{id}");
    let path = &path;
    eventually(
        Duration::from_secs(30),
        &format!("deployment #{id} to end"),
        || async move { authed(addr, "GET", path, None).await.1["outcome"] != "running" },
    )
    .await;
    authed(addr, "GET", path, None).await.1["outcome"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_and_abort_through_the_api_drive_a_paused_canary() {
    let (_dir, token) = token_file(0o600);
    let Some(sandbox) = sandbox(PAUSING_CANARY, &token).await else {
        return;
    };
    sandbox
        .deploy("v1", &Progress::new(false))
        .await
        .expect("v1 deploys");
    let server = serve_with(settings::load(&sandbox.config_path).unwrap()).await;
    let addr = server.addr();
    let traffic = load(&sandbox);
    let (status, body) = control(addr, "promote").await;
    assert_eq!(status, 409, "nothing runs yet: {body}");

    let id = paused_canary(addr, "v2").await;
    // Paused already: a pause request is taken and changes nothing.
    let (status, body) = control(addr, "pause").await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = control(addr, "promote").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        (body["deployment"].as_i64(), body["control"].as_str()),
        (Some(id), Some("promote"))
    );
    assert_eq!(outcome(addr, id).await, "succeeded");
    let (_, status) = authed(addr, "GET", "/api/v1/status", None).await;
    assert_eq!(status["services"][0]["active"]["version"], "v2", "{status}");

    let id = paused_canary(addr, "v3").await;
    let (status, body) = control(addr, "abort").await;
    assert_eq!(status, 202, "{body}");
    let stream = events(addr, &format!("/api/v1/deployments/{id}/events")).await;
    let seen = names(&stream);
    assert!(
        seen.contains(&"paused") && seen.contains(&"rolled_back"),
        "{seen:?}"
    );
    assert_eq!(
        stream[stream.len() - 2].data["outcome"],
        "failed",
        "{seen:?}"
    );
    assert_eq!(outcome(addr, id).await, "failed");
    let (_, status) = authed(addr, "GET", "/api/v1/status", None).await;
    assert_eq!(status["services"][0]["active"]["version"], "v2", "{status}");
    assert!(status["services"][0]["deployment"].is_null(), "{status}");

    let report = traffic.stop().await;
    assert_no_failures(&report);
    server.shutdown().await.unwrap();
    sandbox.shutdown().await.unwrap();
}

/// A blue-green deploy in its post-cutover watch, driven through the API: status says it is
/// watching, `pause` is refused (a watch has no step to hold), `abort` routes back to v1 at
/// once, under a non-retrying load that loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_through_the_api_routes_a_watched_deploy_back() {
    let (_dir, token) = token_file(0o600);
    let Some(options) = options(crate::canary::FAST, &token, "").await else {
        return;
    };
    let Some(sandbox) = start(options.service_keys("watch = \"60s\"")).await else {
        return;
    };
    sandbox
        .deploy("v1", &Progress::new(false))
        .await
        .expect("v1 deploys");
    let server = serve_with(settings::load(&sandbox.config_path).unwrap()).await;
    let addr = server.addr();
    let traffic = load(&sandbox);
    let path = format!("/api/v1/services/{SERVICE}/deploy");
    let (status, answer) = authed(addr, "POST", &path, Some(r#"{"version": "v2"}"#)).await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["deployment"].as_i64().unwrap();
    eventually(Duration::from_secs(30), "v2 to be watched", || async {
        let (_, status) = authed(addr, "GET", "/api/v1/status", None).await;
        let running = &status["services"][0]["deployment"];
        running["id"] == id && running["watching_until_ms"].is_i64()
    })
    .await;
    let (status, body) = control(addr, "pause").await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("post-cutover watch"),
        "{body}"
    );
    let (status, body) = control(addr, "abort").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(outcome(addr, id).await, "failed");
    let (_, status) = authed(addr, "GET", "/api/v1/status", None).await;
    assert_eq!(status["services"][0]["active"]["version"], "v1", "{status}");
    crate::support::responses_from(
        &traffic,
        "v1",
        traffic.snapshot().by_version["v1"].count + 100,
    )
    .await;
    assert_no_failures(&traffic.stop().await);
    server.shutdown().await.unwrap();
    sandbox.shutdown().await.unwrap();
}

#[test]
fn a_token_file_readable_by_others_is_refused_at_load() {
    let (dir, token) = token_file(0o640);
    let config = dir.path().join("switchyard.toml");
    let text = r#"[proxy]
prefix = "nginx"
[runtime]
kind = "process"
[serve]
token_file = "api.token"
[[service]]
name = "web"
listen = "127.0.0.1:18080"
command = ["/bin/true"]
"#;
    std::fs::write(&config, text).unwrap();
    let err = settings::load(&config).unwrap_err();
    assert_eq!(err.code, 2, "{err}");
    assert!(err.message.contains(&config.display().to_string()), "{err}");
    assert!(err.message.contains("serve.token_file"), "{err}");
    assert!(err.message.contains(&token.display().to_string()), "{err}");
    assert!(err.message.contains("mode 640"), "{err}");
    assert!(!err.message.contains(TOKEN), "{err}");

    // The binary says the same and exits 2.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--config")
        .arg(&config)
        .arg("validate")
        .output()
        .unwrap();
    crate::support::assert_exit(&out, 2);
    assert!(crate::support::text(&out.stderr).contains("mode 640"));

    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let loaded = settings::load(&config).unwrap();
    assert_eq!(loaded.serve.token_file, Some(token));
}

/// `switchyard --remote http://ADDR …` with `args`, run without blocking the in-process serve.
async fn remote(addr: SocketAddr, token: &Path, args: &[&str]) -> std::process::Output {
    remote_at(&format!("http://{addr}"), token, args, &[]).await
}

/// `switchyard --remote URL …` with `args` and `env`, run without blocking the in-process
/// serve.
pub(crate) async fn remote_at(
    url: &str,
    token: &Path,
    args: &[&str],
    env: &[(&str, &Path)],
) -> std::process::Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--remote")
        .arg(url)
        .arg("--token-file")
        .arg(token)
        .args(args)
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(PATIENCE, run)
        .await
        .expect("the remote command ends")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_deploys_through_a_remote_serve_and_exits_as_a_local_deploy() {
    use crate::support::{assert_exit, text};
    let (_dir, token) = token_file(0o600);
    let Some(sandbox) = sandbox("", &token).await else {
        return;
    };
    sandbox
        .deploy("v1", &Progress::new(false))
        .await
        .expect("v1 deploys");
    let server = serve_with(settings::load(&sandbox.config_path).unwrap()).await;
    let addr = server.addr();
    let traffic = load(&sandbox);

    let out = remote(addr, &token, &["deploy", SERVICE, "--version", "v2"]).await;
    assert_exit(&out, 0);
    let said = text(&out.stderr);
    assert!(said.contains(": web v1 -> v2 (green slot)"), "{said}");
    assert!(said.contains("all replicas healthy after"), "{said}");
    assert!(said.contains("succeeded"), "{said}");
    assert!(!said.contains(TOKEN), "{said}");
    let report = traffic.stop().await;
    assert_no_failures(&report);
    let (_, status) = authed(addr, "GET", "/api/v1/status", None).await;
    assert_eq!(status["services"][0]["active"]["version"], "v2", "{status}");

    // A wrong token is refused as bad input, and deploys nothing.
    let (_other, wrong) = token_file(0o600);
    std::fs::write(&wrong, "not-the-token\n").unwrap();
    let before = deployments(&sandbox);
    let out = remote(addr, &wrong, &["deploy", SERVICE, "--version", "v3"]).await;
    assert_exit(&out, 2);
    assert!(
        text(&out.stderr).contains("wrong token"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(deployments(&sandbox), before);
    // So is a version the engine refuses, and a token file others can read.
    let out = remote(addr, &token, &["deploy", SERVICE, "--version", "v3;x"]).await;
    assert_exit(&out, 2);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = remote(addr, &wrong, &["deploy", SERVICE, "--version", "v3"]).await;
    assert_exit(&out, 2);
    assert!(
        text(&out.stderr).contains("mode 644"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(deployments(&sandbox), before);
    server.shutdown().await.unwrap();
    // Nothing answers there any more: an environment error.
    let out = remote(addr, &token, &["deploy", SERVICE, "--version", "v3"]).await;
    assert_exit(&out, 3);
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_stopped_during_an_api_canary_exits_and_the_next_deploy_settles_it() {
    let (_dir, token) = token_file(0o600);
    let Some(sandbox) = sandbox(PAUSING_CANARY, &token).await else {
        return;
    };
    sandbox
        .deploy("v1", &Progress::new(false))
        .await
        .expect("v1 deploys");
    let addr: SocketAddr = format!("127.0.0.1:{}", crate::support::free_port())
        .parse()
        .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--config")
        .arg(&sandbox.config_path)
        .args(["serve", "--listen", &addr.to_string()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = ServeChild(child);
    eventually(Duration::from_secs(10), "serve to answer", || async {
        TcpStream::connect(addr).await.is_ok()
    })
    .await;
    let traffic = load(&sandbox);
    let id = paused_canary(addr, "v2").await;

    let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let stopped = Instant::now();
    let exited = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(20),
            "serve still runs 20 s after SIGTERM with an API canary in flight"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    // Regression: the interrupted deploy used to panic on tokio's shut-down timer.
    assert!(exited.success(), "{exited:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");

    // The canary was interrupted, as by a killed CLI: the next deploy settles it first.
    let store = &sandbox.live().store;
    let name = Name::parse(SERVICE).unwrap();
    let (unfinished, _) = store.unfinished(&name).unwrap().expect("left unfinished");
    assert_eq!(unfinished.id, id);
    sandbox
        .deploy("v3", &Progress::new(false))
        .await
        .expect("v3 deploys after settling the canary");
    let (record, _) = store.deployment(id).unwrap().unwrap();
    assert_ne!(record.outcome, switchyard_engine::Outcome::Running);
    let report = traffic.stop().await;
    assert_no_failures(&report);
    sandbox.shutdown().await.unwrap();
}
