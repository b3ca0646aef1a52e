//! Shared helpers for the end-to-end tests: free loopback ports, loud skips, waiting.
//!
//! A test that needs Docker or nginx calls [`require_nginx`] / [`require_docker`]: where
//! `CI` is set a missing component fails the test; elsewhere the test says loudly that it
//! skipped. Tests wait with [`eventually`], never with bare sleeps. [`stream`] has the
//! websocket, event-stream and upload clients, [`tls`] a test CA and a TLS server.

use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub mod stream;
pub mod tls;

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A GET over a fresh connection: (status, body).
pub async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("a complete response");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
    (status, body.to_owned())
}

/// Fails under CI, skips loudly elsewhere. Returns whether the test may go on.
pub fn require(available: bool, what: &str) -> bool {
    if available {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{what} is required when CI is set, and it is missing");
    }
    eprintln!("SKIPPED: {what} is missing (set CI=1 to make this a failure)");
    false
}

/// The nginx binary, if installed.
pub fn nginx() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

pub fn require_nginx() -> Option<PathBuf> {
    let found = nginx();
    require(found.is_some(), "nginx (apt-get install nginx)").then(|| found.unwrap())
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let since = Instant::now();
    while since.elapsed() < timeout {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// The static demo-app binary, built by `scripts/build-demo-app`.
pub fn require_demo_app() -> Option<PathBuf> {
    let path = switchyard_app::sandbox::demo_app_binary();
    require(
        path.exists(),
        &format!(
            "the static demo-app at {} (scripts/build-demo-app)",
            path.display()
        ),
    )
    .then_some(path)
}

/// Whether the Docker engine answers.
pub async fn require_docker() -> bool {
    let reachable = switchyard_docker::DockerRuntime::connect("probe").await;
    if let Err(e) = &reachable {
        eprintln!("docker: {e}");
    }
    require(reachable.is_ok(), "a reachable Docker engine")
}

/// Everything an end-to-end test of `runtime` needs; None (after a loud skip) if missing.
pub async fn require_e2e(runtime: switchyard_engine::config::RuntimeChoice) -> Option<PathBuf> {
    require_nginx()?;
    let app = require_demo_app()?;
    if runtime == switchyard_engine::config::RuntimeChoice::Docker && !require_docker().await {
        return None;
    }
    Some(app)
}

/// What a test that ran the binary leaves behind, removed from a `Drop` (on a runtime of its
/// own: the test's may be gone): every instance of `config`'s services, then the nginx whose
/// master's pid is in `pid_file`.
pub fn clean_up(config: PathBuf, pid_file: &std::path::Path) {
    let cleanup = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let settings = switchyard_app::settings::load(&config).unwrap();
            if let Ok(live) = switchyard_app::live::Live::open(settings).await {
                let _ = live.remove_all().await;
            }
        });
    });
    let _ = cleanup.join();
    stop_nginx(pid_file);
}

/// SIGTERM to the nginx master whose pid is in `pid_file`, for nginx a test started
/// outside a `ManagedNginx` handle. Does nothing if the file holds no pid.
pub fn stop_nginx(pid_file: &std::path::Path) {
    let pid = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse().ok());
    if let Some(pid) = pid {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

/// A bounded load of `connections` keep-alive connections on `url` (at most 2M requests, 90 s).
pub fn load(url: String, connections: usize) -> switchyard_app::load::Load {
    let mut config = switchyard_app::load::LoadConfig::new(url);
    config.connections = connections;
    config.max_requests = 2_000_000;
    config.max_duration = Duration::from_secs(90);
    switchyard_app::load::Load::start(config)
}

/// Waits until `load` has seen `n` successful responses from `version`.
pub async fn responses_from(load: &switchyard_app::load::Load, version: &str, n: u64) {
    eventually(
        Duration::from_secs(30),
        &format!("{n} responses from {version}"),
        || async {
            load.snapshot()
                .by_version
                .get(version)
                .is_some_and(|v| v.count >= n)
        },
    )
    .await;
}

/// A `switchyard serve` child process, stopped by its PID if the test fails.
pub struct ServeChild(pub std::process::Child);

impl Drop for ServeChild {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Waits (30 s at most) until the running canary of `service` has paused.
pub async fn until_paused(
    store: &switchyard_store::SqliteStore,
    service: &switchyard_engine::Name,
    at: &str,
) {
    use switchyard_engine::Store;
    eventually(
        Duration::from_secs(30),
        &format!("the canary to pause at {at}"),
        || async {
            store
                .unfinished(service)
                .unwrap()
                .is_some_and(|(_, j)| j.iter().any(|e| e.step.name() == "paused"))
        },
    )
    .await;
}

/// The invariant of every end-to-end test: no request failed while traffic moved, and none
/// was sent twice (the load generator never re-sends unless a test asks it to).
pub fn assert_no_failures(report: &switchyard_app::load::LoadReport) {
    assert_eq!(
        report.failed, 0,
        "failed requests while traffic moved:\n{report}"
    );
    assert_eq!(report.retried, 0, "re-sent requests:\n{report}");
    assert!(report.ok > 50, "the load ran: {report}");
}

/// Fails under CI, skips loudly elsewhere, unless `router` moves traffic without reloads
/// (nginx with `libnginx-mod-http-lua` and `lua-cjson`, from `scripts/install-deps`).
pub fn require_dynamic(router: &switchyard_nginx::NginxRouter) -> bool {
    require(
        router.routing() == switchyard_nginx::Routing::Dynamic,
        &format!("dynamic routing: {}", router.routing_note()),
    )
}

/// A command's output as text.
pub fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// Asserts a command's exit code, showing what it printed otherwise.
#[track_caller]
pub fn assert_exit(out: &std::process::Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}
