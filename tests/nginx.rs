//! Real-nginx tests of [`NginxRouter`]: confirmed reloads, drained old workers, rejected and
//! unconfirmed configs that leave traffic alone, preview, zero failed requests across
//! reloads, and [`ManagedNginx`] stopping its master; the dynamic router's in `dynamic`.
//!
//! Each test starts its own nginx ([`Nginx`]) under a temporary prefix on free loopback ports,
//! in front of in-process [`Backend`]s that answer with their own name, and talks HTTP/1.1 to
//! it with a raw keep-alive [`Client`]. Dropping an [`Nginx`], also on a failed assertion,
//! stops its master.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard_engine::config::RoutingChoice;
use switchyard_engine::{Name, Reload, Router, RouterError, UpstreamSet};
use switchyard_nginx::{procs, router, Layout, ManagedNginx, NginxRouter, Templates};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::support;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP/1.1 server on 127.0.0.1:0 answering every request with `200` and its name, on
/// keep-alive connections (nginx pools its upstream connections). Stops accepting on drop.
pub(crate) struct Backend {
    name: &'static str,
    pub(crate) addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl Backend {
    pub(crate) async fn start(name: &'static str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer(stream, name));
            }
        });
        Backend { name, addr, accept }
    }
}

async fn backends() -> (Backend, Backend) {
    (
        Backend::start("backend-a").await,
        Backend::start("backend-b").await,
    )
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Answers each request head on `stream` (nginx sends GETs without a body).
async fn answer(mut stream: TcpStream, name: &'static str) {
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{name}",
        name.len()
    );
    let mut pending = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            pending.drain(..end + 4);
            if stream.write_all(response.as_bytes()).await.is_err() {
                return;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Why a request got no complete `200`.
enum Failed {
    /// The server closed or reset the connection before sending a byte of the answer.
    BeforeAnswer(String),
    Other(String),
}

/// One client keep-alive connection sending `GET /`, one request at a time.
struct Client {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
    /// Requests sent again after a reused connection closed before answering.
    retried: u64,
}

impl Client {
    fn new(addr: SocketAddr) -> Client {
        Client {
            addr,
            conn: None,
            retried: 0,
        }
    }

    /// The body of a `200` answer. A request on a reused connection that the server closed
    /// before answering anything is sent once more on a fresh connection, as HTTP clients do
    /// for idempotent requests (RFC 9112 section 9.3.1): nginx closes idle keep-alive
    /// connections when a reload starts, and a request can cross that close on the wire.
    async fn get(&mut self) -> Result<String, String> {
        let reused = self.conn.is_some();
        match self.exchange().await {
            Ok(body) => Ok(body),
            Err(Failed::BeforeAnswer(_)) if reused => {
                self.retried += 1;
                self.exchange().await.map_err(|e| match e {
                    Failed::BeforeAnswer(e) | Failed::Other(e) => format!("after a retry: {e}"),
                })
            }
            Err(Failed::BeforeAnswer(e) | Failed::Other(e)) => Err(e),
        }
    }

    async fn exchange(&mut self) -> Result<String, Failed> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let stream = TcpStream::connect(self.addr)
                    .await
                    .map_err(|e| Failed::Other(format!("connecting to {}: {e}", self.addr)))?;
                self.conn.insert(BufReader::new(stream))
            }
        };
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, round_trip(conn))
            .await
            .unwrap_or_else(|_| Err(Failed::Other(format!("no answer in {REQUEST_TIMEOUT:?}"))));
        match answer {
            Ok((body, keep_alive)) => {
                if !keep_alive {
                    self.conn = None;
                }
                Ok(body)
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }
}

/// Sends one GET and reads the answer: its body and whether the connection stays open.
async fn round_trip(conn: &mut BufReader<TcpStream>) -> Result<(String, bool), Failed> {
    let request = b"GET / HTTP/1.1\r\nHost: switchyard-test\r\n\r\n";
    if let Err(e) = conn.get_mut().write_all(request).await {
        return Err(Failed::BeforeAnswer(format!("sending: {e}")));
    }
    let mut status = String::new();
    match conn.read_line(&mut status).await {
        Ok(0) => return Err(Failed::BeforeAnswer("closed before answering".into())),
        Err(e) if status.is_empty() => return Err(Failed::BeforeAnswer(format!("reading: {e}"))),
        Err(e) => return Err(Failed::Other(format!("reading the status line: {e}"))),
        Ok(_) => {}
    }
    let broken = |e: std::io::Error| Failed::Other(format!("after {:?}: {e}", status.trim()));
    let (mut length, mut keep_alive) = (None, true);
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line).await.map_err(broken)? == 0 {
            return Err(Failed::Other(format!(
                "truncated after {:?}",
                status.trim()
            )));
        }
        let Some((name, value)) = line.trim_end().split_once(':') else {
            break;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
            keep_alive = false;
        }
    }
    let length = length.ok_or_else(|| Failed::Other(format!("no content-length: {status}")))?;
    let mut body = vec![0; length];
    conn.read_exact(&mut body).await.map_err(broken)?;
    let body = String::from_utf8_lossy(&body).into_owned();
    if !status.starts_with("HTTP/1.1 200 ") {
        return Err(Failed::Other(format!("{}: {body}", status.trim())));
    }
    Ok((body, keep_alive))
}

/// `GET /` on a fresh connection.
async fn fetch(addr: SocketAddr) -> Result<String, String> {
    Client::new(addr).get().await
}

/// One test's nginx: its own prefix, free loopback ports for the service and the control
/// server. Fields drop in order, so the master gets SIGTERM before its prefix is removed.
pub(crate) struct Nginx {
    nginx: ManagedNginx,
    pub(crate) router: NginxRouter,
    pub(crate) listen: SocketAddr,
    _prefix: TempDir,
}

impl Nginx {
    pub(crate) async fn start(bin: &Path) -> Nginx {
        Nginx::start_with(bin, RoutingChoice::Reload).await
    }

    /// An nginx whose router moves traffic as `choice` says.
    pub(crate) async fn start_with(bin: &Path, choice: RoutingChoice) -> Nginx {
        let prefix = tempfile::Builder::new()
            .prefix("switchyard-nginx-test-")
            .tempdir()
            .unwrap();
        let control = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
        let listen = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
        let layout = Layout::managed(bin, prefix.path());
        let router = NginxRouter::new(layout, control, Templates::builtin()).with_routing(choice);
        let nginx = ManagedNginx::start(&router, DRAIN_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("starting nginx under {}: {e}", prefix.path().display()));
        Nginx {
            nginx,
            router,
            listen,
            _prefix: prefix,
        }
    }

    /// Service `web` on this nginx's listen address, sent to `backend`.
    pub(crate) fn set(&self, backend: &Backend) -> UpstreamSet {
        UpstreamSet {
            service: Name::parse("web").unwrap(),
            listen: self.listen,
            backends: vec![backend.addr],
            canary: None,
        }
    }

    /// Applies `backend` and waits for the old workers to exit. `apply` returns once one fresh
    /// connection sees the new generation, but the master tells the old workers to stop
    /// accepting only 100 ms after starting the new ones: until they are gone, a fresh
    /// connection may still get the old config.
    async fn apply_drained(&self, backend: &Backend) -> Reload {
        let reload = self.router.apply(&self.set(backend)).await.unwrap();
        let drained = self
            .router
            .wait_drained(&reload, DRAIN_TIMEOUT)
            .await
            .unwrap();
        assert!(drained.lingering.is_none(), "{drained:?}");
        reload
    }

    fn file(&self, name: &str) -> PathBuf {
        self.router.layout.conf_dir.join(name)
    }

    /// The bytes of the service and control files.
    fn files(&self) -> (Vec<u8>, Vec<u8>) {
        let read = |name| std::fs::read(self.file(name)).unwrap();
        (read("web.conf"), read("_control.conf"))
    }

    async fn assert_serves(&self, backend: &Backend, times: usize) {
        for i in 0..times {
            let body = fetch(self.listen).await;
            assert_eq!(body.as_deref(), Ok(backend.name), "fresh request {i}");
        }
    }
}

fn in_proc(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether `pid` exists and is not a zombie.
fn running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    state != Some("Z")
}

#[tokio::test]
async fn apply_switches_traffic_and_old_workers_drain() {
    let Some(bin) = support::require_nginx() else {
        return;
    };
    let (a, b) = backends().await;
    let n = Nginx::start(&bin).await;

    let first = n.apply_drained(&a).await;
    assert_eq!(first.generation, 1);
    assert_eq!(n.router.live_generation().await, Ok(1));
    n.assert_serves(&a, 5).await;

    let second = n.router.apply(&n.set(&b)).await.unwrap();
    assert_eq!(second.generation, 2);
    assert_eq!(n.router.disk_generation(), 2);
    let old_workers = router::old_workers(&second);
    assert!(!old_workers.is_empty(), "{second:?}");
    // Regression: `apply` used to return as soon as one fresh connection saw the new
    // generation, while old workers still accepted for ~100 ms (the master sleeps before
    // telling them to stop). Now every fresh connection after `apply` reaches b.
    for _ in 0..20 {
        assert_eq!(fetch(n.listen).await.as_deref(), Ok("backend-b"));
    }

    let drained = n.router.wait_drained(&second, DRAIN_TIMEOUT).await.unwrap();
    assert!(drained.lingering.is_none(), "{drained:?}");
    let running: Vec<u32> = old_workers
        .iter()
        .copied()
        .filter(|&p| running(p))
        .collect();
    assert!(
        running.is_empty(),
        "drained, yet old workers {running:?} run"
    );
    // Exited workers stay zombies until the master reaps them.
    support::eventually(
        Duration::from_secs(5),
        "old workers leaving /proc",
        || async { !old_workers.iter().any(|&pid| in_proc(pid)) },
    )
    .await;
    let workers = procs::workers(n.nginx.master);
    assert!(!workers.is_empty());
    assert!(workers.iter().all(|w| !old_workers.contains(w)));
    n.assert_serves(&b, 20).await;
}

#[tokio::test]
async fn a_rejected_config_is_never_reloaded_and_the_old_one_keeps_serving() {
    let Some(bin) = support::require_nginx() else {
        return;
    };
    let (a, b) = backends().await;
    let n = Nginx::start(&bin).await;
    n.apply_drained(&a).await;
    let files_before = n.files();
    let workers_before = procs::workers(n.nginx.master);

    let overrides = tempfile::tempdir().unwrap();
    let broken_service = "# broken on purpose\nno_such_directive {{ service }};\n";
    std::fs::write(overrides.path().join("service.conf.tera"), broken_service).unwrap();
    let templates = Templates::with_overrides(overrides.path()).unwrap();
    let broken = NginxRouter::new(n.router.layout.clone(), n.router.control, templates);

    match broken.apply(&n.set(&b)).await {
        Err(RouterError::Rejected { service, stderr }) => {
            assert_eq!(service, "web");
            assert!(stderr.contains("[emerg]"), "{stderr}");
            assert!(stderr.contains("no_such_directive"), "{stderr}");
            // The message names the live file, not the staged copy that was tested.
            // (Line 3: the router writes the service's claim above the template's text.)
            let live = n.file("web.conf").display().to_string();
            assert!(stderr.contains(&format!("{live}:3")), "{stderr}");
            assert!(!stderr.contains("switchyard-stage-"), "{stderr}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(n.router.live_generation().await, Ok(1));
    assert_eq!(n.router.disk_generation(), 1);
    assert!(n.files() == files_before, "files changed on disk");
    assert_eq!(
        procs::workers(n.nginx.master),
        workers_before,
        "nginx reloaded"
    );
    n.assert_serves(&a, 10).await;

    // The rejected apply left nothing locked or half-written behind.
    assert_eq!(n.apply_drained(&b).await.generation, 2);
    n.assert_serves(&b, 5).await;
}

#[tokio::test]
async fn a_reload_that_fails_after_validation_restores_the_old_files() {
    let Some(bin) = support::require_nginx() else {
        return;
    };
    let (a, b) = backends().await;
    let mut n = Nginx::start(&bin).await;
    // nginx retries a failed bind() for about 2.5 s before giving the reload up.
    n.router.confirm_timeout = Duration::from_secs(5);
    n.apply_drained(&a).await;
    let files_before = n.files();

    // `nginx -t` does not bind listen addresses; the reload does, and this one is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let set = UpstreamSet {
        listen: taken.local_addr().unwrap(),
        ..n.set(&b)
    };
    match n.router.apply(&set).await {
        Err(RouterError::NotConfirmed(why)) => {
            assert!(why.contains("generation 2 not live"), "{why}");
            assert!(why.contains("Address already in use"), "{why}");
            assert!(why.contains("the previous config is live again"), "{why}");
        }
        other => panic!("expected NotConfirmed, got {other:?}"),
    }
    // The service file is back byte for byte; the restore is a reload of its own, under a
    // generation never used before (generation 2 may have gone live), and it is confirmed.
    assert!(
        n.files().0 == files_before.0,
        "service file on disk was not restored"
    );
    assert_eq!(n.router.disk_generation(), 3);
    assert_eq!(n.router.live_generation().await, Ok(3));
    n.assert_serves(&a, 10).await;
    assert!(procs::alive(n.nginx.master));

    assert_eq!(n.apply_drained(&b).await.generation, 4);
    n.assert_serves(&b, 5).await;
    drop(taken);
}

#[tokio::test]
async fn preview_shows_the_live_file_and_the_rendered_one_without_writing() {
    let Some(bin) = support::require_nginx() else {
        return;
    };
    let (a, b) = backends().await;
    let n = Nginx::start(&bin).await;
    let unseen = n.router.preview(&n.set(&a)).unwrap();
    assert_eq!(unseen.old, "", "a service never applied has no live file");
    assert!(!n.file("web.conf").exists());

    n.apply_drained(&a).await;
    let files_before = n.files();
    let diff = n.router.preview(&n.set(&b)).unwrap();
    assert_eq!(diff.path, n.file("web.conf").display().to_string());
    assert_eq!(diff.old.as_bytes(), files_before.0);
    let upstreams = Templates::builtin()
        .service(&n.set(&b), &Default::default())
        .unwrap();
    assert!(diff.new.ends_with(&upstreams), "{}", diff.new);
    assert!(diff.new.starts_with("# front: "), "{}", diff.new);
    assert!(diff.new.contains(&b.addr.to_string()), "{}", diff.new);
    assert!(!diff.old.contains(&b.addr.to_string()), "{}", diff.old);
    assert!(n.files() == files_before, "preview changed files on disk");
    assert_eq!(n.router.live_generation().await, Ok(1));
    n.assert_serves(&a, 3).await;

    n.router.apply(&n.set(&b)).await.unwrap();
    let written = std::fs::read_to_string(n.file("web.conf")).unwrap();
    assert_eq!(
        written, diff.new,
        "apply wrote something other than the preview"
    );
}

/// What the load tasks saw, shared while they run.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    retried: AtomicU64,
    by_body: Mutex<BTreeMap<String, u64>>,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn seen(&self, body: &str) -> u64 {
        self.by_body.lock().unwrap().get(body).copied().unwrap_or(0)
    }
}

/// `connections` keep-alive clients sending GETs until `stop`, `deadline` or `budget`.
fn load(
    addr: SocketAddr,
    connections: usize,
    budget: u64,
    deadline: Instant,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<JoinHandle<()>> {
    let task = move |_| {
        let (stop, tally) = (stop.clone(), tally.clone());
        tokio::spawn(async move {
            let mut client = Client::new(addr);
            while !stop.load(Ordering::Relaxed)
                && Instant::now() < deadline
                && tally.sent.fetch_add(1, Ordering::Relaxed) < budget
            {
                match client.get().await {
                    Ok(body) => *tally.by_body.lock().unwrap().entry(body).or_default() += 1,
                    Err(e) => tally.failures.lock().unwrap().push(e),
                }
            }
            tally.retried.fetch_add(client.retried, Ordering::Relaxed);
        })
    };
    (0..connections).map(task).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_across_reloads_under_load() {
    let Some(bin) = support::require_nginx() else {
        return;
    };
    let (a, b) = backends().await;
    let n = Nginx::start(&bin).await;
    n.apply_drained(&a).await;

    let started = Instant::now();
    let deadline = started + Duration::from_secs(20);
    let (stop, tally) = (Arc::new(AtomicBool::new(false)), Arc::new(Tally::default()));
    let tasks = load(
        n.listen,
        16,
        1_000_000,
        deadline,
        stop.clone(),
        tally.clone(),
    );
    let warm = || async { tally.seen("backend-a") >= 200 };
    support::eventually(Duration::from_secs(5), "load reaching a", warm).await;

    for backend in [&b, &a, &b] {
        let reload = n.router.apply(&n.set(backend)).await.unwrap();
        let drained = n.router.wait_drained(&reload, DRAIN_TIMEOUT).await.unwrap();
        assert!(drained.lingering.is_none(), "{drained:?}");
        // With the old workers gone, every connection is served by the new config.
        let before = tally.seen(backend.name);
        support::eventually(
            Duration::from_secs(5),
            "load reaching the new backend",
            || {
                let tally = tally.clone();
                async move { tally.seen(backend.name) >= before + 1000 }
            },
        )
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }

    let failures = tally.failures.lock().unwrap();
    let by_body = tally.by_body.lock().unwrap();
    let ok: u64 = by_body.values().sum();
    eprintln!(
        "load: {ok} ok, {} failed, {} retried on a fresh connection, {by_body:?}, in {:?}",
        failures.len(),
        tally.retried.load(Ordering::Relaxed),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} failed: {:#?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(
        by_body.keys().all(|k| k == "backend-a" || k == "backend-b"),
        "{by_body:?}"
    );
    assert!(by_body.len() == 2, "both backends seen: {by_body:?}");
}

#[tokio::test]
async fn managed_nginx_stops_its_master_on_stop_and_on_drop() {
    let Some(bin) = support::require_nginx() else {
        return;
    };

    let n = Nginx::start(&bin).await;
    let master = n.nginx.master;
    assert!(in_proc(master));
    // Starting again on the same prefix adopts the running master; dropping that handle
    // must leave it running, so the apply after it still reloads.
    let adopted = ManagedNginx::start(&n.router, DRAIN_TIMEOUT).await.unwrap();
    assert_eq!(adopted.master, master);
    drop(adopted);
    let backend = Backend::start("backend-a").await;
    n.apply_drained(&backend).await;
    let workers = procs::workers(master);
    assert!(!workers.is_empty());

    let Nginx {
        nginx,
        router,
        _prefix: prefix,
        ..
    } = n;
    nginx.stop().await;
    assert!(
        !procs::alive(master),
        "master {master} still there after stop"
    );
    assert!(
        !workers.iter().any(|&w| in_proc(w)),
        "workers outlived the master"
    );
    assert!(router.live_generation().await.is_err());
    drop(prefix);

    let n = Nginx::start(&bin).await;
    let master = n.nginx.master;
    drop(n);
    support::eventually(
        Duration::from_secs(10),
        "master exiting after drop",
        || async { !in_proc(master) },
    )
    .await;
}

mod dynamic;
