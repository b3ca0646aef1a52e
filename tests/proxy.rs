//! A supervised proxy, end to end (real nginx, the demo-app as local processes, `serve`
//! in-process, the binary for `status` and `proxy`): an nginx killed with SIGKILL under load
//! serves again within 5 s without a deploy, also when only its master dies and its orphaned
//! workers keep the listening sockets; `status` says the listen is not answering while nginx
//! is down; `proxy stop|status|start` and `switchyard_proxy_up`; the systemd unit in
//! `contrib/` passes `systemd-analyze verify`; the access log rotated at its size cap loses no
//! line. Load that is measured after a recovery runs on a client that never re-sends and
//! must see 0 failed requests.

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
use switchyard_nginx::managed::apply_lock;
use switchyard_nginx::procs;

use crate::e2e::sandbox;
use crate::support::{
    assert_exit, assert_no_failures, eventually, free_port, get, require, require_nginx,
    responses_from, text,
};

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
    (text(&human.stdout), parsed[0]["listen_check"].clone())
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
    assert_eq!(value(&scrape(server.addr()).await, PROXY_UP), Some(1.0));

    let load = non_retrying_load(&sandbox, 4, 2_000_000);
    responses_from(&load, "v1", 500).await;
    assert_no_failures(&load.stop().await);
    server.shutdown().await.unwrap();
    sandbox.shutdown().await.unwrap();
}

/// The unit files in `contrib/`.
fn units() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");
    let mut units: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "service"))
        .collect();
    units.sort();
    units
}

/// `systemd-analyze verify` of `unit` copied to a temp dir with its ExecStart binary
/// replaced by `binary` (verify checks that it exists): its exit code and output.
fn verify(analyze: &Path, unit: &Path, binary: &str) -> (bool, String) {
    let text = std::fs::read_to_string(unit).unwrap();
    let exec = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let (_, args) = exec.split_once(' ').unwrap_or((exec, ""));
    let copied = text.replace(exec, &format!("{binary} {args}"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(unit.file_name().unwrap());
    std::fs::write(&path, copied).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said = format!("{}{}", text_of(&out.stdout), text_of(&out.stderr));
    (out.status.success(), said)
}

fn text_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_systemd_units_in_contrib_pass_systemd_analyze_verify() {
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if !require(
        analyze.is_some(),
        "systemd-analyze (apt-get install systemd)",
    ) {
        return;
    }
    let analyze = analyze.unwrap();
    let units = units();
    assert!(
        units
            .iter()
            .any(|u| u.ends_with("switchyard-serve.service")),
        "{units:?}"
    );
    for unit in &units {
        let text = std::fs::read_to_string(unit).unwrap();
        assert!(text.contains("Restart=on-failure"), "{}", unit.display());
        let (ok, said) = verify(&analyze, unit, env!("CARGO_BIN_EXE_switchyard"));
        assert!(ok && said.trim().is_empty(), "{}:\n{said}", unit.display());
        // The check can fail: a binary that is not there is reported.
        let (ok, said) = verify(&analyze, unit, "/nonexistent/switchyard");
        assert!(!ok || !said.trim().is_empty(), "{}", unit.display());
    }
    let serve = std::fs::read_to_string(&units[0]).unwrap();
    assert!(
        serve.contains("ExecStart=/usr/local/bin/switchyard serve --config "),
        "{serve}"
    );
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

/// A system nginx (`[proxy] main_conf`) in a temp dir, which the test starts and stops
/// itself as systemd would: serve and `proxy` only report it.
struct SystemNginx {
    dir: tempfile::TempDir,
    nginx: PathBuf,
}

impl SystemNginx {
    fn new(nginx: PathBuf) -> SystemNginx {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for sub in ["etc/switchyard", "run", "log", "tmp", "state"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        let conf = format!(
            "pid {root}/run/nginx.pid;\nerror_log {root}/log/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {root}/tmp;\n  \
             proxy_temp_path {root}/tmp;\n  fastcgi_temp_path {root}/tmp;\n  \
             uwsgi_temp_path {root}/tmp;\n  scgi_temp_path {root}/tmp;\n  \
             server {{ listen 127.0.0.1:{port}; return 200; }}\n}}\n",
            root = root.display(),
            port = free_port(),
        );
        std::fs::write(root.join("etc/nginx.conf"), conf).unwrap();
        let config = format!(
            "[proxy]\nnginx = {nginx:?}\nmain_conf = \"{root}/etc/nginx.conf\"\n\
             conf_dir = \"{root}/etc/switchyard\"\npid_file = \"{root}/run/nginx.pid\"\n\
             access_log = \"{root}/log/switchyard.json.log\"\ncontrol = \"127.0.0.1:{control}\"\n\
             routing = \"reload\"\n[state]\npath = \"state/switchyard.db\"\n\
             [runtime]\nkind = \"process\"\n[[service]]\nname = \"web\"\n\
             listen = \"127.0.0.1:{listen}\"\ncommand = [\"/bin/true\"]\n",
            nginx = nginx.display().to_string(),
            root = root.display(),
            control = free_port(),
            listen = free_port(),
        );
        std::fs::write(root.join("switchyard.toml"), config).unwrap();
        SystemNginx { dir, nginx }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("switchyard.toml")
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("run/nginx.pid")
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("--config")
            .arg(self.config())
            .args(args)
            .output()
            .unwrap()
    }

    /// What systemd's nginx.service does: the master daemonizes and writes its pid file.
    fn start(&self) -> u32 {
        let conf = self.dir.path().join("etc/nginx.conf");
        let out = Command::new(&self.nginx)
            .arg("-p")
            .arg(self.dir.path())
            .arg("-c")
            .arg(&conf)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let since = Instant::now();
        loop {
            if let Some(pid) =
                procs::read_pid(&self.pid_file()).filter(|&p| procs::is_nginx_master(p))
            {
                return pid;
            }
            assert!(since.elapsed() < Duration::from_secs(10), "no pid file");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for SystemNginx {
    fn drop(&mut self) {
        crate::support::stop_nginx(&self.pid_file());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_system_nginx_is_only_reported_never_started_or_stopped() {
    let Some(nginx) = require_nginx() else {
        return;
    };
    let system = SystemNginx::new(nginx);
    let server = serve_for(&system.config()).await;
    let addr = server.addr();
    assert_eq!(value(&scrape(addr).await, PROXY_UP), Some(0.0));
    for verb in ["start", "stop"] {
        let out = system.run(&["proxy", verb]);
        assert_exit(&out, 2);
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(&format!("`systemctl {verb} nginx`")),
            "{stderr}"
        );
    }
    let down = system.run(&["proxy", "status"]);
    assert_exit(&down, 3);
    let out = text(&down.stdout);
    assert!(out.contains("nginx: down ("), "{out}");
    assert!(out.contains("; system, reload routing)"), "{out}");

    let master = system.start();
    eventually(Duration::from_secs(5), "switchyard_proxy_up 1", || async {
        value(&scrape(addr).await, PROXY_UP) == Some(1.0)
    })
    .await;
    let up = system.run(&["proxy", "status"]);
    assert_exit(&up, 0);
    assert!(
        text(&up.stdout).contains(&format!(
            "nginx: up (master {master}; system, reload routing)"
        )),
        "{}",
        text(&up.stdout)
    );

    // systemd's nginx stopped: serve says so and starts nothing.
    crate::support::stop_nginx(&system.pid_file());
    eventually(
        Duration::from_secs(10),
        "the system nginx to exit",
        || async { !procs::running(master) },
    )
    .await;
    for _ in 0..8 {
        assert_eq!(value(&scrape(addr).await, PROXY_UP), Some(0.0));
        let running = procs::read_pid(&system.pid_file()).filter(|&p| procs::is_nginx_master(p));
        assert_eq!(running, None, "serve started the system nginx");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.shutdown().await.unwrap();
}
