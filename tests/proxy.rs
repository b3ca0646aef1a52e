//! A supervised proxy, end to end (real nginx, the demo-app as local processes, `serve`
//! in-process, the binary for `status` and `proxy`): an nginx killed with SIGKILL under load
//! serves again within 5 s without a deploy, also when only its master dies and its orphaned
//! workers keep the listening sockets; `status` says the listen is not answering while nginx
//! is down; `proxy stop|status|start` and `switchyard_proxy_up`; the access log rotated at
//! its size cap loses no line. `proxy/system.rs`: the systemd unit and a system nginx.
//! Load measured after a recovery runs on a client that never re-sends and must see 0 failed
//! requests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard_app::live::Live;
use switchyard_app::load::{Load, LoadConfig};
use switchyard_app::progress::Progress;
use switchyard_app::sandbox::{Sandbox, SERVICE};
use switchyard_app::serve::{self, probe_listen, ServeOptions, Server};
use switchyard_app::settings;
use switchyard_engine::config::RuntimeChoice;
use switchyard_nginx::managed::{apply_lock, reap_orphans};
use switchyard_nginx::procs;

use crate::e2e::sandbox;

mod system;
use crate::support::{assert_exit, assert_no_failures, eventually, get, responses_from, text};

const PROXY_UP: &str = "switchyard_proxy_up";

fn quiet() -> Progress {
    Progress::new(false)
}

async fn web() -> Option<Sandbox> {
    sandbox(RuntimeChoice::Process, |o| o).await
}

/// serve for `config` with its own live clients, supervising nginx every 250 ms.
async fn serve_for(config: &Path) -> Server {
    let live = Live::open(settings::load(config).unwrap()).await.unwrap();
    let options = ServeOptions {
        health_every: Duration::from_millis(500),
        ..ServeOptions::new("127.0.0.1:0".parse().unwrap())
    };
    serve::start_with(live, options)
        .await
        .expect("serve starts")
}

/// The binary on the sandbox's config.
fn switchyard(sandbox: &Sandbox, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--config")
        .arg(&sandbox.config_path)
        .args(args)
        .output()
        .unwrap()
}

/// `switchyard status`, as text and as JSON (exit 0 both).
fn status(sandbox: &Sandbox) -> (String, Value) {
    let human = switchyard(sandbox, &["status"]);
    assert_exit(&human, 0);
    let json = switchyard(sandbox, &["--output", "json", "status"]);
    assert_exit(&json, 0);
    let parsed: Value = serde_json::from_slice(&json.stdout).unwrap();
    (
        text(&human.stdout),
        parsed["services"][0]["listen_check"].clone(),
    )
}

async fn scrape(addr: SocketAddr) -> String {
    let (code, body) = get(addr, "/metrics").await;
    assert_eq!(code, 200, "{body}");
    body
}

/// The value of an unlabelled series.
fn value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Whether the service answers 200 on a fresh connection now.
async fn answers(listen: SocketAddr) -> bool {
    probe_listen(listen, "/").await.detail == "HTTP 200"
}

fn master(sandbox: &Sandbox) -> Option<u32> {
    sandbox.live().router.master().ok()
}

fn non_retrying_load(sandbox: &Sandbox, connections: usize, max_requests: u64) -> Load {
    let mut config = LoadConfig::new(sandbox.url());
    config.connections = connections;
    config.max_requests = max_requests;
    config.max_duration = Duration::from_secs(60);
    assert!(!config.resend, "the load never re-sends");
    Load::start(config)
}

/// Polls every 10 ms until `listen` answers 200 again; returns how long after `since`.
async fn serving_again(listen: SocketAddr, since: Instant, within: Duration) -> Duration {
    while since.elapsed() < within {
        if answers(listen).await {
            return since.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{listen} did not answer again within {within:?} of the kill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nginx_is_restarted_by_serve_and_status_tells_the_truth_meanwhile() {
    let Some(mut sandbox) = web().await else {
        return;
    };
    sandbox.deploy("v1", &quiet()).await.expect("v1 deploys");
    // If the test fails: whatever nginx serve started last is stopped, after serve.
    let _nginx = StopsNginx(sandbox.live().router.layout.pid_file.clone());
    let server = serve_for(&sandbox.config_path).await;
    let listen = sandbox.listen;
    let (human, check) = status(&sandbox);
    assert!(human.contains("nginx: up (master"), "{human}");
    assert!(
        human.contains(&format!("listen {listen} answers (HTTP 200)")),
        "{human}"
    );
    assert_eq!(check["answering"], true, "{check}");

    // nginx dies while an apply holds the lock: serve waits for it, so status sees it down.
    let conf_dir = sandbox.live().router.layout.conf_dir.clone();
    let lock = apply_lock(&conf_dir).await.unwrap();
    sandbox.kill_nginx();
    let (human, check) = status(&sandbox);
    assert!(
        human.contains("nginx: down (nginx is not running"),
        "{human}"
    );
    assert!(
        human.contains(&format!(
            "listen {listen} is not answering: connection refused; nginx is down"
        )),
        "{human}"
    );
    assert_eq!(check["answering"], false, "{check}");
    assert_eq!(check["detail"], "connection refused", "{check}");
    assert!(
        check["sentence"]
            .as_str()
            .unwrap()
            .contains("nginx is down"),
        "{check}"
    );
    let (_, api) = get(server.addr(), "/api/status").await;
    let api: Value = serde_json::from_str(&api).unwrap();
    assert_eq!(api["proxy"]["up"], false, "{api}");
    assert_eq!(
        api["services"][0]["listen_check"]["answering"], false,
        "{api}"
    );
    drop(lock);
    serving_again(listen, Instant::now(), Duration::from_secs(10)).await;
    let (human, check) = status(&sandbox);
    assert!(
        human.contains(&format!("listen {listen} answers (HTTP 200)")),
        "{human}"
    );
    assert_eq!(check["answering"], true, "{check}");

    // Master and workers SIGKILLed under load: serving again within 5 s, no deploy.
    let load = non_retrying_load(&sandbox, 4, 2_000_000);
    responses_from(&load, "v1", 200).await;
    sandbox.adopt_nginx();
    let killed = Instant::now();
    sandbox.kill_nginx();
    let gap = serving_again(listen, killed, Duration::from_secs(5)).await;
    eprintln!("serving again {gap:?} after nginx was killed");

    // Only the master SIGKILLed: its orphaned workers hold the listening sockets until serve
    // stops them, and the new master binds.
    let old = master(&sandbox).expect("nginx runs again");
    let orphans = procs::workers(old);
    assert!(!orphans.is_empty());
    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually(
        Duration::from_secs(5),
        "a new master, the orphans gone, the service answering",
        || async {
            let new = master(&sandbox).is_some_and(|m| m != old);
            let gone = !orphans.iter().any(|&p| procs::running(p));
            new && gone && answers(listen).await
        },
    )
    .await;
    eprintln!(
        "a new master served {:?} after the old one was killed",
        killed.elapsed()
    );
    let during = load.stop().await;
    eprintln!("during the kills (failures expected):\n{during}");

    // Recovered: a fresh non-retrying load sees no failure.
    let load = non_retrying_load(&sandbox, 4, 2_000_000);
    responses_from(&load, "v1", 1_000).await;
    assert_no_failures(&load.stop().await);
    server.shutdown().await.unwrap();
    sandbox.adopt_nginx();
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_stop_status_and_start_through_the_cli_and_proxy_up_on_metrics() {
    let Some(mut sandbox) = web().await else {
        return;
    };
    sandbox.deploy("v1", &quiet()).await.expect("v1 deploys");
    // If the test fails: whatever nginx serve started last is stopped, after serve.
    let _nginx = StopsNginx(sandbox.live().router.layout.pid_file.clone());
    let server = serve_for(&sandbox.config_path).await;
    let listen = sandbox.listen;
    assert_eq!(value(&scrape(server.addr()).await, PROXY_UP), Some(1.0));
    // The workers of a live master are not orphans: nothing is reaped.
    let running = master(&sandbox).unwrap();
    let control = sandbox.live().router.control;
    assert_eq!(reap_orphans(control).await, Vec::<u32>::new());
    assert_eq!(master(&sandbox), Some(running));
    assert!(answers(listen).await);

    let stopped = switchyard(&sandbox, &["proxy", "stop"]);
    assert_exit(&stopped, 0);
    let old = sandbox.nginx_master().unwrap();
    assert_eq!(
        text(&stopped.stdout),
        format!("nginx stopped (master {old})\n")
    );
    assert!(!procs::running(old));
    let down = switchyard(&sandbox, &["proxy", "status"]);
    assert_exit(&down, 3);
    let out = text(&down.stdout);
    assert!(out.contains("nginx: down"), "{out}");
    assert!(
        out.contains(&format!("{SERVICE}  listen {listen} is not answering")),
        "{out}"
    );
    assert!(text(&down.stderr).contains("error: nginx is down"));
    let json = switchyard(&sandbox, &["--output", "json", "proxy", "status"]);
    assert_exit(&json, 3);
    let json: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["proxy"]["up"], false, "{json}");
    assert_eq!(json["proxy"]["master"], Value::Null, "{json}");
    assert_eq!(
        json["services"][0]["listen_check"]["answering"], false,
        "{json}"
    );
    // Stopped on purpose: serve leaves it down (it looks every 250 ms).
    for _ in 0..8 {
        assert_eq!(value(&scrape(server.addr()).await, PROXY_UP), Some(0.0));
        assert_eq!(master(&sandbox), None, "serve started a stopped nginx");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let started = switchyard(&sandbox, &["proxy", "start"]);
    assert_exit(&started, 0);
    let out = text(&started.stdout);
    assert!(out.starts_with("nginx started (master "), "{out}");
    // Detached: it outlives the command.
    let new = master(&sandbox).expect("nginx runs after `proxy start` exited");
    assert!(out.contains(&format!("(master {new})")), "{out}");
    sandbox.adopt_nginx();
    let up = switchyard(&sandbox, &["proxy", "status"]);
    assert_exit(&up, 0);
    let out = text(&up.stdout);
    assert!(out.contains(&format!("nginx: up (master {new}")), "{out}");
    assert!(out.contains("routing: "), "{out}");
    assert!(
        out.contains(&format!("{SERVICE}  listen {listen} answers (HTTP 200)")),
        "{out}"
    );
    let again = switchyard(&sandbox, &["proxy", "start"]);
    assert_exit(&again, 0);
    assert_eq!(
        text(&again.stdout),
        format!("nginx is already running (master {new})\n")
    );
    let again = switchyard(&sandbox, &["--output", "json", "proxy", "start"]);
    assert_exit(&again, 0);
    let again: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again["nginx"], "already running", "{again}");
    assert_eq!(again["master"], new, "{again}");
    assert_eq!(value(&scrape(server.addr()).await, PROXY_UP), Some(1.0));

    let load = non_retrying_load(&sandbox, 4, 2_000_000);
    responses_from(&load, "v1", 500).await;
    assert_no_failures(&load.stop().await);
    server.shutdown().await.unwrap();
    sandbox.shutdown().await.unwrap();
}

/// Lines in `path` (0 if it does not exist).
fn line_count(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_rotated_at_its_size_cap_loses_no_line() {
    let Some(sandbox) = web().await else {
        return;
    };
    sandbox.deploy("v1", &quiet()).await.expect("v1 deploys");
    // serve reads the config again, now with a cap a few lines long.
    let config = std::fs::read_to_string(&sandbox.config_path).unwrap();
    let capped = config.replacen("[proxy]\n", "[proxy]\naccess_log_max = \"4k\"\n", 1);
    assert_ne!(config, capped);
    std::fs::write(&sandbox.config_path, capped).unwrap();
    let _nginx = StopsNginx(sandbox.live().router.layout.pid_file.clone());
    let server = serve_for(&sandbox.config_path).await;
    let requests = |text: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(&format!(
                "switchyard_proxy_requests_total{{service=\"{SERVICE}\",track=\"stable\",\
                 version=\"v1\",code=\"2xx\"}} "
            ))?
            .parse::<f64>()
            .ok()
        })
    };
    // Shown at 0 first, so every increment counts.
    assert_eq!(requests(&scrape(server.addr()).await), Some(0.0));

    const SENT: u64 = 600;
    let report = non_retrying_load(&sandbox, 2, SENT).wait().await;
    assert_no_failures(&report);
    assert_eq!(report.ok, SENT, "{report}");
    let addr = server.addr();
    eventually(Duration::from_secs(15), "every request counted", || async {
        requests(&scrape(addr).await) == Some(SENT as f64)
    })
    .await;
    let log = sandbox.live().router.layout.access_log.clone();
    let rotated = switchyard_nginx::tailer::rotated_path(&log);
    assert!(rotated.exists(), "{} was never rotated", log.display());
    assert!(std::fs::metadata(&log).unwrap().len() < 64 << 10);
    // Fewer lines on disk than were written: `.1` was replaced, and its lines were read.
    let on_disk = line_count(&log) + line_count(&rotated);
    assert!(
        on_disk < SENT as usize,
        "{on_disk} lines left: rotated once at most"
    );
    // Settled: nothing more is counted later.
    assert_eq!(requests(&scrape(addr).await), Some(SENT as f64));
    server.shutdown().await.unwrap();
    sandbox.shutdown().await.unwrap();
}

/// Stops (SIGTERM) the nginx whose pid is in the file when dropped: for a test that runs
/// `serve`, which starts the managed nginx and leaves it running when it exits.
pub(crate) struct StopsNginx(pub PathBuf);

impl Drop for StopsNginx {
    fn drop(&mut self) {
        crate::support::stop_nginx(&self.0);
    }
}
