//! The `switchyard` binary, end to end: exit codes, validation messages, plan, status,
//! history, rollback, and a deploy killed with SIGKILL mid-way that the next deploy
//! completes. Services run as local processes behind the nginx the CLI starts itself;
//! a load runs through every deploy and no request may fail.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use switchyard_app::live::Live;
use switchyard_app::load::{Load, LoadConfig};
use switchyard_app::settings;
use switchyard_engine::{Name, Store};
use switchyard_store::SqliteStore;

use crate::support::{
    assert_exit, assert_no_failures, free_port, require_demo_app, require_nginx, responses_from,
    text,
};

/// A config directory used through the CLI; dropping it stops the nginx the CLI started and
/// removes every process it deployed.
struct Project {
    dir: tempfile::TempDir,
    listen: SocketAddr,
}

impl Project {
    fn new(app: &Path, env: &str) -> Project {
        Project::with_canary(app, env, "")
    }

    /// `canary` holds the lines of the `[service.canary]` table.
    fn with_canary(app: &Path, env: &str, canary: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = format!(
            r#"[proxy]
prefix = "nginx"
control = "127.0.0.1:{control}"

[state]
path = "state/switchyard.db"

[runtime]
kind = "process"

[[service]]
name = "web"
listen = "{listen}"
command = [{app:?}]
replicas = 2
stop_timeout = "5s"
health = {{ path = "/health", interval = "100ms", healthy_after = 2, deadline = "20s" }}
drain = {{ timeout = "10s" }}
env = {{ LATENCY_MS = "5" {env} }}

[service.canary]
{canary}
"#,
            control = free_port(),
            app = app.display().to_string(),
        );
        std::fs::write(dir.path().join("switchyard.toml"), config).unwrap();
        Project { dir, listen }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("switchyard.toml")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        cmd.arg("--config").arg(self.config()).args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn load(&self) -> Load {
        let mut config = LoadConfig::new(format!("http://{}/", self.listen));
        config.connections = 16;
        config.max_requests = 1_000_000;
        config.max_duration = Duration::from_secs(60);
        Load::start(config)
    }

    /// The binary with `args` in the background, its output in `child.log`.
    fn spawn(&self, args: &[&str]) -> std::process::Child {
        let log = std::fs::File::create(self.dir.path().join("child.log")).unwrap();
        self.command(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// Waits until the running deployment of `web` has journaled steps that satisfy `reached`;
    /// on timeout, says what was journaled and what the background command printed.
    async fn until_journal(&self, what: &str, within: Duration, reached: impl Fn(&[&str]) -> bool) {
        let store = self.store();
        let name = Name::parse("web").unwrap();
        let since = std::time::Instant::now();
        let mut steps = Vec::new();
        while since.elapsed() < within {
            steps = store
                .unfinished(&name)
                .unwrap()
                .map(|(_, j)| j.iter().map(|e| e.step.name().to_owned()).collect())
                .unwrap_or_default();
            let names: Vec<&str> = steps.iter().map(String::as_str).collect();
            if reached(&names) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let log = std::fs::read_to_string(self.dir.path().join("child.log")).unwrap_or_default();
        panic!("timed out after {within:?} waiting for {what}; journal {steps:?}; the command said:\n{log}");
    }

    fn store(&self) -> SqliteStore {
        SqliteStore::open(&self.dir.path().join("state/switchyard.db")).unwrap()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        crate::support::clean_up(self.config(), &self.dir.path().join("nginx/logs/nginx.pid"));
    }
}

#[test]
fn bad_config_is_rejected_with_file_line_and_field_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, "[proxy]\nprefix = \"nginx\"\n\n[[service]]\nname = \"web;\"\nlisten = \"127.0.0.1:80\"\nimage = \"x:{version}\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--config")
        .arg(&path)
        .arg("validate")
        .output()
        .unwrap();
    assert_exit(&out, 2);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:5:8: service.name: invalid name \"web;\"",
            path.display()
        )),
        "{stderr}"
    );
    let missing = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["--config", "/nonexistent/switchyard.toml", "validate"])
        .output()
        .unwrap();
    assert_exit(&missing, 2);
    assert!(text(&missing.stderr).contains("reading /nonexistent/switchyard.toml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_status_plan_history_and_rollback_through_the_cli() {
    let (Some(_), Some(app)) = (require_nginx(), require_demo_app()) else {
        return;
    };
    let project = Project::new(&app, "");
    assert_exit(&project.run(&["validate"]), 0);

    let plan = project.run(&["plan", "web", "--version", "v1"]);
    assert_exit(&plan, 0);
    let plan = text(&plan.stdout);
    assert!(
        plan.contains("plan: web nothing -> v1 (blue-green, blue slot)"),
        "{plan}"
    );
    // Dynamic routing (nginx with its Lua module): the plan previews the routing document.
    assert!(plan.contains("+      \"127.0.0.1:0\""), "{plan}");
    assert!(plan.contains("reload nginx once (a new service"), "{plan}");
    let validated = project.run(&["validate"]);
    assert!(
        text(&validated.stdout).contains("routing: dynamic (auto: nginx loads its Lua module)"),
        "{}",
        text(&validated.stdout)
    );

    let deployed = project.run(&["deploy", "web", "--version", "v1"]);
    assert_exit(&deployed, 0);
    assert!(
        text(&deployed.stdout).contains("routing: dynamic"),
        "{}",
        text(&deployed.stdout)
    );
    let load = project.load();
    let deployed = project.run(&["deploy", "web", "--version", "v2"]);
    assert_exit(&deployed, 0);
    assert!(
        text(&deployed.stdout).contains("web v2 is live (green slot, was v1)"),
        "{}",
        text(&deployed.stdout)
    );

    let status = project.run(&["status", "--output", "json"]);
    assert_exit(&status, 0);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let status = &status["services"];
    assert_eq!(status[0]["version"], "v2");
    assert_eq!(status[0]["color"], "green");
    let instances = status[0]["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 2);
    assert!(
        instances
            .iter()
            .all(|i| i["health"].as_str().unwrap().starts_with("200 ok")),
        "{status}"
    );
    assert_eq!(status[0]["lock"], serde_json::Value::Null);

    let plan = text(&project.run(&["plan", "web", "--version", "v3"]).stdout);
    assert!(
        plan.contains("stop web v2 (green slot, 2 instance(s))"),
        "{plan}"
    );
    assert!(plan.contains("nginx is not reloaded"), "{plan}");
    assert!(
        plan.contains(&format!(
            "-      \"127.0.0.1:{}\"",
            instances[0]["addr"]
                .as_str()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
        )),
        "{plan}"
    );

    let rollback = project.run(&["rollback", "web"]);
    assert_exit(&rollback, 0);
    assert!(text(&rollback.stdout).contains("web v1 is live (blue slot, was v2)"));
    let report = load.stop().await;
    assert_no_failures(&report);
    assert!(
        report.by_version.contains_key("v1") && report.by_version.contains_key("v2"),
        "{report}"
    );

    let history = project.run(&["history", "--output", "json"]);
    let history: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
    let rows: Vec<(String, String, String)> = history["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap().into(),
                d["to_version"].as_str().unwrap().into(),
                d["outcome"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expected = [("rollback", "v1"), ("deploy", "v2"), ("deploy", "v1")]
        .map(|(k, v)| (k.to_owned(), v.to_owned(), "succeeded".to_owned()));
    assert_eq!(rows, expected);

    let refused = project.run(&["deploy", "web", "--version", "v3", "--strategy", "linear"]);
    assert_exit(&refused, 2);
    assert!(text(&refused.stderr).contains("unknown strategy \"linear\""));

    let plan = project.run(&["plan", "web", "--version", "v3", "--strategy", "in-place"]);
    assert_exit(&plan, 0);
    let planned = text(&plan.stdout);
    assert!(planned.contains("(in-place,"), "{planned}");
    assert!(planned.contains("batch 1:"), "{planned}");
    let rolled = project.run(&["deploy", "web", "--version", "v3", "--strategy", "rolling"]);
    assert_exit(&rolled, 0);
    let out = text(&rolled.stdout);
    assert!(out.contains("web v3 is live (rolling, was v1)"), "{out}");
    assert!(out.contains("batch 1: +1 -1"), "{out}");
    let bad_version = project.run(&["deploy", "web", "--version", "v3;rm"]);
    assert_exit(&bad_version, 2);
    assert!(text(&bad_version.stderr).contains("--version: invalid version"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_killed_mid_way_is_explained_by_status_and_completed_by_the_next_deploy() {
    let (Some(_), Some(app)) = (require_nginx(), require_demo_app()) else {
        return;
    };
    // Slow starts keep the deploy in its health wait long enough to kill it there.
    let project = Project::new(&app, r#", START_DELAY_MS = "2000""#);
    assert_exit(&project.run(&["deploy", "web", "--version", "v1"]), 0);
    let load = project.load();
    let mut child = project.spawn(&["deploy", "web", "--version", "v2"]);
    let store = project.store();
    let name = Name::parse("web").unwrap();
    let health_wait = |steps: &[&str]| steps.contains(&"wait_healthy");
    project
        .until_journal(
            "the deploy to reach its health wait",
            Duration::from_secs(15),
            health_wait,
        )
        .await;
    child.kill().unwrap(); // SIGKILL: no cleanup runs.
    child.wait().unwrap();

    let status = project.run(&["status"]);
    assert_exit(&status, 0);
    let status = text(&status.stdout);
    assert!(
        status.contains("(deploy to v2) was interrupted after step `wait_healthy`"),
        "{status}"
    );
    assert!(
        status.contains("stale: the next deploy takes it over"),
        "{status}"
    );
    assert!(status.contains("v1 (blue)"), "{status}");

    let redeploy = project.run(&["deploy", "web", "--version", "v2"]);
    assert_exit(&redeploy, 0);
    assert!(
        text(&redeploy.stderr).contains("resuming: deployment #2 (deploy to v2) was interrupted"),
        "{}",
        text(&redeploy.stderr)
    );
    let report = load.stop().await;
    assert_no_failures(&report);

    let history = store.history(None, 10).unwrap();
    let outcomes: Vec<&str> = history.iter().map(|d| d.outcome.as_str()).collect();
    // One resume for every strategy: the deploy of the same version finishes the killed
    // deployment (its replicas that never served were removed, fresh ones started).
    assert_eq!(outcomes, ["succeeded", "succeeded"]);
    assert!(
        history[0].message.contains("completed on resume"),
        "{}",
        history[0].message
    );
    // v1 is retained, v2 (deployment #2) active.
    let live = Live::open(settings::load(&project.config()).unwrap())
        .await
        .unwrap();
    let instances = switchyard_engine::Runtime::list(&live.runtime, &name)
        .await
        .unwrap();
    let mut deployments: Vec<i64> = instances.iter().map(|i| i.deployment).collect();
    deployments.sort();
    assert_eq!(deployments, [1, 1, 2, 2], "{instances:#?}");
}

#[test]
fn a_system_conf_dir_outside_the_main_conf_directory_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    let config = "[proxy]\nmain_conf = \"/etc/nginx/nginx.conf\"\nconf_dir = \"/srv/switchyard\"\n\n[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:80\"\nimage = \"x:{version}\"\n";
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--config")
        .arg(&path)
        .arg("validate")
        .output()
        .unwrap();
    assert_exit(&out, 2);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("proxy.conf_dir: /srv/switchyard is not inside /etc/nginx"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_canary_is_shown_by_status_and_promoted_by_the_cli() {
    let (Some(_), Some(app)) = (require_nginx(), require_demo_app()) else {
        return;
    };
    let canary = "steps = [20, 100]\nhold = \"1s\"\ninterval = \"500ms\"\nwindow = \"2s\"\nmin_requests = 5\npause = [20]";
    let project = Project::with_canary(&app, "", canary);
    assert_exit(&project.run(&["deploy", "web", "--version", "v1"]), 0);
    let load = project.load();
    let mut child = project.spawn(&["deploy", "web", "--version", "v2", "--strategy", "canary"]);
    let paused = |steps: &[&str]| steps.contains(&"paused");
    project
        .until_journal(
            "the canary to pause at 20%",
            Duration::from_secs(30),
            paused,
        )
        .await;
    let status = text(&project.run(&["status"]).stdout);
    assert!(
        status.contains("canary: deployment #2 v2 at 20% of traffic (paused"),
        "{status}"
    );
    assert!(
        status.contains("routing: dynamic (auto: nginx loads its Lua module): routes change in nginx's shared memory without a reload"),
        "{status}"
    );
    assert!(
        status.contains("last check: pass: error rate 0.00%"),
        "{status}"
    );
    assert!(
        status.contains("thresholds: error rate at most 1.00%, at least 5 requests"),
        "{status}"
    );
    let promoted = project.run(&["promote", "web"]);
    assert_exit(&promoted, 0);
    assert!(
        text(&promoted.stdout).contains("asked deployment #2 (web -> v2"),
        "{}",
        text(&promoted.stdout)
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "the canary deploy finished after promote");
    let report = load.stop().await;
    assert_no_failures(&report);
    assert!(report.by_version.contains_key("v2"), "{report}");
    // Nothing is running any more: promote and abort say so.
    let nothing = project.run(&["abort", "web"]);
    assert_exit(&nothing, 2);
    assert!(text(&nothing.stderr).contains("no deployment of web is running"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_still_reports_the_store_when_the_runtime_is_unreachable() {
    // Review finding: status failed outright without Docker, exactly when it is needed.
    let (Some(_), Some(app)) = (require_nginx(), require_demo_app()) else {
        return;
    };
    let project = Project::new(&app, "");
    assert_exit(&project.run(&["deploy", "web", "--version", "v1"]), 0);
    let config = std::fs::read_to_string(project.config()).unwrap();
    let docker = project.dir.path().join("docker.toml");
    let docker_config = config
        .replace("kind = \"process\"", "kind = \"docker\"")
        .replace("command = [", "image = \"x:{version}\"\n#");
    std::fs::write(&docker, docker_config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--config")
        .arg(&docker)
        .arg("status")
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    // Docker being down is part of the report, not a failure of it.
    assert_exit(&out, 0);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("web  v1 (blue)  deployment #1"), "{stdout}");
    assert!(stdout.contains("state unknown  health: 200 ok"), "{stdout}");
    assert!(
        stdout.contains("runtime: docker engine unreachable"),
        "{stdout}"
    );
    assert!(stdout.contains("instance states are unknown"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_killed_between_batches_is_finished_by_the_next_deploy_under_load() {
    let (Some(_), Some(app)) = (require_nginx(), require_demo_app()) else {
        return;
    };
    // Slow starts keep batch 2 in its health wait long enough to kill it there.
    let project = Project::new(&app, r#", START_DELAY_MS = "1500""#);
    let rolling = ["--strategy", "rolling"];
    let deploy = |v: &'static str| [&["deploy", "web", "--version", v][..], &rolling].concat();
    assert_exit(&project.run(&deploy("v1")), 0);
    let load = project.load();
    let mut child = project.spawn(&deploy("v2"));
    let store = project.store();
    let name = Name::parse("web").unwrap();
    let in_batch_two = |steps: &[&str]| {
        let routed = steps.iter().position(|s| *s == "routed");
        routed.is_some_and(|r| steps[r..].contains(&"wait_healthy"))
    };
    project
        .until_journal(
            "batch 1 routed and batch 2 waiting for health",
            Duration::from_secs(30),
            in_batch_two,
        )
        .await;
    child.kill().unwrap(); // SIGKILL: no cleanup runs.
    child.wait().unwrap();

    let status = text(&project.run(&["status"]).stdout);
    assert!(
        status.contains("(deploy to v2) was interrupted after step `wait_healthy`"),
        "{status}"
    );
    let finish = project.run(&deploy("v2"));
    assert_exit(&finish, 0);
    let (out, err) = (text(&finish.stdout), text(&finish.stderr));
    assert!(err.contains("resuming: deployment #2"), "{err}");
    assert!(out.contains("web v2 is live (rolling, was v1)"), "{out}");
    let report = load.stop().await;
    assert_no_failures(&report);

    let history = store.history(None, 10).unwrap();
    let outcomes: Vec<&str> = history.iter().map(|d| d.outcome.as_str()).collect();
    assert_eq!(
        outcomes,
        ["succeeded", "succeeded"],
        "the rollout itself finished"
    );
    let record = store.service(&name).unwrap();
    let active = record.active.unwrap();
    assert_eq!((active.version.as_str(), active.instances.len()), ("v2", 2));
    assert_eq!(record.retained[0].version.as_str(), "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_retires_a_service_and_keeps_its_history() {
    let (Some(_), Some(app)) = (require_nginx(), require_demo_app()) else {
        return;
    };
    let project = Project::new(&app, "");
    assert_exit(&project.run(&["deploy", "web", "--version", "v1"]), 0);
    assert_exit(&project.run(&["deploy", "web", "--version", "v2"]), 0);
    let removed = project.run(&["remove", "web"]);
    assert_exit(&removed, 0);
    let said = text(&removed.stdout);
    assert!(
        said.contains("web removed: out of nginx")
            && said.contains("4 replica(s) stopped and removed"),
        "{said}"
    );
    assert!(
        std::net::TcpStream::connect(project.listen).is_err(),
        "nginx no longer listens for web"
    );
    let conf = project.dir.path().join("nginx/conf/switchyard");
    assert!(!conf.join("web.conf").exists());
    let state = std::fs::read_to_string(conf.join("routing.json")).unwrap_or_default();
    assert!(!state.contains("\"web\""), "{state}");
    let live = Live::open(settings::load(&project.config()).unwrap())
        .await
        .unwrap();
    let left = switchyard_engine::Runtime::list(&live.runtime, &Name::parse("web").unwrap())
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    let history = project.store().history(None, 10).unwrap();
    assert_eq!(history.len(), 2, "its deployments stay in the history");
    let status = text(&project.run(&["status"]).stdout);
    assert!(!status.contains("v2 (green"), "{status}");
    let prune = project.run(&["prune"]);
    assert_exit(&prune, 2);
    assert!(text(&prune.stderr).contains("prune removes Docker images"));
    // Again: nothing left, no error; and the service can come back.
    assert_exit(&project.run(&["remove", "web"]), 0);
    assert_exit(&project.run(&["deploy", "web", "--version", "v3"]), 0);
    let load = project.load();
    responses_from(&load, "v3", 100).await;
    assert_no_failures(&load.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_shows_every_running_replica_prefixed_and_follows() {
    let (Some(_), Some(app)) = (require_nginx(), require_demo_app()) else {
        return;
    };
    let project = Project::new(&app, "");
    assert_exit(&project.run(&["deploy", "web", "--version", "v1"]), 0);
    let logs = project.run(&["logs", "web"]);
    assert_exit(&logs, 0);
    let out = text(&logs.stdout);
    for replica in ["sy-web-blue-d1-r0", "sy-web-blue-d1-r1"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("{replica} | demo-app v1 listening on"))),
            "{out}"
        );
    }
    let since = project.run(&["logs", "web", "--since", "5m"]);
    assert_exit(&since, 2);
    assert!(text(&since.stderr).contains("--since needs the docker runtime"));

    // Following: a deploy's new replicas are not followed, but the old ones' shutdown is.
    let log = project.dir.path().join("follow.log");
    let mut follow = project
        .command(&["logs", "web", "-f", "--tail", "0"])
        .stdout(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_exit(&project.run(&["deploy", "web", "--version", "v2"]), 0);
    let stopped = |text: &str| text.contains("sy-web-blue-d1-r0 | demo-app v1 stopped on SIGTERM");
    let since = std::time::Instant::now();
    while !stopped(&std::fs::read_to_string(&log).unwrap_or_default())
        && since.elapsed() < std::time::Duration::from_secs(10)
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    follow.kill().unwrap();
    follow.wait().unwrap();
    let followed = std::fs::read_to_string(&log).unwrap();
    assert!(stopped(&followed), "{followed}");
    assert!(
        !followed.contains("listening on"),
        "--tail 0 showed old lines: {followed}"
    );
}
