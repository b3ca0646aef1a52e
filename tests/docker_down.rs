//! The binary with Docker unreachable (`DOCKER_HOST` on a socket that does not exist): the
//! commands that do not run containers (`plan`, `history`, `serve`, `status`) work from the
//! store, and `deploy` still refuses with exit 3 before it journals anything.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use switchyard_engine::{
    Color, DeployKind, Instance, InstanceState, Name, NewDeployment, Outcome, Store, Version,
};
use switchyard_store::SqliteStore;

use crate::support::{assert_exit, eventually, free_port, text};

/// A docker-runtime installation whose store says v1 is live on two replicas.
struct DockerDown {
    dir: tempfile::TempDir,
}

impl DockerDown {
    fn new() -> DockerDown {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            r#"[proxy]
prefix = "nginx"
control = "127.0.0.1:{control}"

[state]
path = "state/switchyard.db"

[runtime]
kind = "docker"

[[service]]
name = "web"
listen = "127.0.0.1:{listen}"
image = "demo:{{version}}"
replicas = 2
"#,
            control = free_port(),
            listen = free_port(),
        );
        std::fs::write(dir.path().join("switchyard.toml"), config).unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        seed(&SqliteStore::open(&dir.path().join("state/switchyard.db")).unwrap());
        DockerDown { dir }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        // A socket path in the test's own directory: nothing listens there.
        let socket: PathBuf = self.dir.path().join("no-docker.sock");
        cmd.arg("--config")
            .arg(self.dir.path().join("switchyard.toml"))
            .args(args)
            .env("DOCKER_HOST", format!("unix://{}", socket.display()));
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }
}

impl Drop for DockerDown {
    /// `serve` starts the managed nginx, which outlives it.
    fn drop(&mut self) {
        crate::support::stop_nginx(&self.dir.path().join("nginx/logs/nginx.pid"));
    }
}

/// A finished deployment #1 of web v1 with two active replicas, as a deploy leaves it.
fn seed(store: &SqliteStore) {
    let web = Name::parse("web").unwrap();
    let v1 = Version::parse("v1").unwrap();
    let id = store
        .begin(&NewDeployment {
            service: web.clone(),
            kind: DeployKind::Deploy,
            strategy: "blue-green".into(),
            from_version: None,
            to_version: v1.clone(),
            color: Color::Blue,
            who: "test@localhost (pid 1)".into(),
            started_ms: 1_700_000_000_000,
        })
        .unwrap();
    for replica in 0..2u16 {
        let instance = Instance {
            id: format!("c{replica}"),
            name: format!("sy-web-blue-d{id}-r{replica}"),
            service: web.clone(),
            version: v1.clone(),
            color: Color::Blue,
            deployment: id,
            origin: id,
            replica,
            host_port: free_port(),
        };
        store
            .put_instance(&instance, InstanceState::Starting)
            .unwrap();
    }
    store.activate(&web, id).unwrap();
    store
        .finish(id, 1_700_000_005_000, Outcome::Succeeded, "live")
        .unwrap();
}

// Regression (issue 8): plan, history and serve exited 3 when Docker was unreachable,
// although none of them runs a container: live clients connected to Docker up front.
#[test]
fn plan_and_history_work_while_docker_is_down() {
    let install = DockerDown::new();
    let plan = install.run(&["plan", "web", "--version", "v2", "--strategy", "canary"]);
    assert_exit(&plan, 0);
    let planned = text(&plan.stdout);
    assert!(
        planned.contains("plan: web v1 -> v2 (canary, green slot)"),
        "{planned}"
    );
    assert!(planned.contains("canary step 1"), "{planned}");

    let history = install.run(&["history"]);
    assert_exit(&history, 0);
    let history = text(&history.stdout);
    assert!(history.contains("- -> v1"), "{history}");
    assert!(history.contains("succeeded"), "{history}");

    // What does need Docker still refuses up front, with the hint.
    let deploy = install.run(&["deploy", "web", "--version", "v2"]);
    assert_exit(&deploy, 3);
    assert!(
        text(&deploy.stderr).contains("docker engine unreachable"),
        "{}",
        text(&deploy.stderr)
    );
}

// Regression (issue 8): status failed (exit 3) when Docker was unreachable; it now says
// what the store knows and that the runtime is down.
#[test]
fn status_says_what_the_store_knows_and_that_docker_is_down() {
    let install = DockerDown::new();
    let out = install.run(&["status"]);
    assert_exit(&out, 0);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("runtime: docker engine unreachable"),
        "{stdout}"
    );
    assert!(stdout.contains("instance states are unknown"), "{stdout}");
    assert!(stdout.contains("web  v1 (blue)  deployment #1"), "{stdout}");
    assert!(stdout.contains("sy-web-blue-d1-r1"), "{stdout}");
    assert!(stdout.contains("state unknown"), "{stdout}");

    // The JSON document stays parseable; the note goes to stderr.
    let json = install.run(&["--output", "json", "status"]);
    assert_exit(&json, 0);
    let parsed: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(parsed["services"][0]["version"], "v1");
    assert!(text(&json.stderr).contains("docker engine unreachable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_while_docker_is_down() {
    let install = DockerDown::new();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut serve = install
        .command(&["serve", "--listen", &listen.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(serve.id() as i32);
    eventually(Duration::from_secs(20), "serve to listen", || {
        let exited = serve.try_wait().unwrap();
        let listening = TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok();
        async move {
            assert_eq!(exited, None, "serve exited before it listened");
            listening
        }
    })
    .await;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = serve.wait_with_output().unwrap();
    assert_exit(&out, 0);
}
