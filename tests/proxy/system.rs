//! The proxy and systemd: the unit files in `contrib/` pass `systemd-analyze verify`, and a
//! system nginx (`[proxy] main_conf`, run by systemd) is only reported by `serve` and
//! `proxy status`, never started or stopped by switchyard.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use switchyard_nginx::procs;

use super::{scrape, serve_for, value, PROXY_UP};
use crate::support::{assert_exit, eventually, free_port, require, require_nginx, text};

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
