//! End to end: real nginx on free loopback ports with its own prefix, real Docker containers
//! of the static demo-app (and again as local processes), the real SQLite store, and a load
//! generator with many keep-alive connections running through every deploy. Every test
//! asserts zero failed requests while traffic moves.

use std::time::{Duration, Instant};

use switchyard_app::load::{Load, LoadConfig};
use switchyard_app::progress::Progress;
use switchyard_app::sandbox::{Sandbox, SandboxOptions, SERVICE};
use switchyard_app::{live::Live, settings};
use switchyard_engine::config::RuntimeChoice;
use switchyard_engine::{Name, Runtime, Store, Version};

pub(crate) use crate::support::assert_no_failures;
use crate::support::{eventually, require_e2e, responses_from};

const CONNECTIONS: usize = 32;

pub(crate) async fn sandbox(
    runtime: RuntimeChoice,
    configure: impl FnOnce(SandboxOptions) -> SandboxOptions,
) -> Option<Sandbox> {
    let app = require_e2e(runtime).await?;
    let options = configure(
        SandboxOptions::new(runtime, app)
            .replicas(2)
            .env("LATENCY_MS", "5"),
    );
    let sandbox = Sandbox::start(&options).await.expect("sandbox starts");
    if options.routing == "auto" && !crate::support::require_dynamic(&sandbox.live().router) {
        return None;
    }
    Some(sandbox)
}

fn load(sandbox: &Sandbox) -> Load {
    crate::support::load(sandbox.url(), CONNECTIONS)
}

fn active_version(sandbox: &Sandbox) -> Option<String> {
    let name = Name::parse(SERVICE).unwrap();
    sandbox
        .live()
        .store
        .service(&name)
        .unwrap()
        .active
        .map(|s| s.version.to_string())
}

async fn blue_green_under_load(runtime: RuntimeChoice) {
    let Some(sandbox) = sandbox(runtime, |o| o).await else {
        return;
    };
    sandbox
        .deploy("v1", &Progress::new(false))
        .await
        .expect("v1 deploys");
    let load = load(&sandbox);
    responses_from(&load, "v1", 200).await;
    sandbox
        .deploy("v2", &Progress::new(false))
        .await
        .expect("v2 deploys");
    let flipped = Instant::now();
    responses_from(&load, "v2", 200).await;
    let report = load.stop().await;
    assert_no_failures(&report);
    let (v1, v2) = (&report.by_version["v1"], &report.by_version["v2"]);
    assert!(
        v1.last <= flipped,
        "no request sent after the deploy returned was answered by v1"
    );
    assert!(
        v2.first < flipped,
        "v2 answered before the deploy returned (traffic moved, then old stopped)"
    );
    assert_eq!(active_version(&sandbox).as_deref(), Some("v2"));
    // v1 is kept, stopped, for rollback; nothing else is left behind.
    let instances = sandbox
        .live()
        .runtime
        .list(&Name::parse(SERVICE).unwrap())
        .await
        .unwrap();
    let mut versions: Vec<String> = instances.iter().map(|i| i.version.to_string()).collect();
    versions.sort();
    assert_eq!(versions, ["v1", "v1", "v2", "v2"]);
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_blue_green_under_load_fails_no_request() {
    blue_green_under_load(RuntimeChoice::Docker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_blue_green_under_load_fails_no_request() {
    blue_green_under_load(RuntimeChoice::Process).await;
}

async fn unhealthy_version_gets_no_traffic(runtime: RuntimeChoice) {
    let Some(sandbox) = sandbox(runtime, |mut o| {
        o.health =
            r#"path = "/health", interval = "100ms", healthy_after = 2, deadline = "3s""#.into();
        o.env("UNHEALTHY_VERSIONS", "v2")
    })
    .await
    else {
        return;
    };
    sandbox
        .deploy("v1", &Progress::new(false))
        .await
        .expect("v1 deploys");
    let load = load(&sandbox);
    responses_from(&load, "v1", 200).await;
    let err = sandbox
        .deploy("v2", &Progress::new(false))
        .await
        .expect_err("v2 never becomes healthy");
    assert_eq!(err.code, 1, "{err}");
    assert!(err.message.contains("traffic stays on v1"), "{err}");
    assert!(
        err.message
            .contains("last health response: 503 unhealthy: HEALTH_FAIL is set"),
        "{err}"
    );
    responses_from(&load, "v1", 400).await;
    let report = load.stop().await;
    assert_no_failures(&report);
    assert!(
        !report.by_version.contains_key("v2"),
        "v2 got no traffic: {report}"
    );
    assert_eq!(active_version(&sandbox).as_deref(), Some("v1"));
    let instances = sandbox
        .live()
        .runtime
        .list(&Name::parse(SERVICE).unwrap())
        .await
        .unwrap();
    assert!(
        instances.iter().all(|i| i.version.as_str() == "v1"),
        "v2 instances removed: {instances:?}"
    );
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_unhealthy_version_gets_no_traffic() {
    unhealthy_version_gets_no_traffic(RuntimeChoice::Docker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_unhealthy_version_gets_no_traffic() {
    unhealthy_version_gets_no_traffic(RuntimeChoice::Process).await;
}

async fn rollback_under_load(runtime: RuntimeChoice) {
    let Some(sandbox) = sandbox(runtime, |o| o).await else {
        return;
    };
    sandbox
        .deploy("v1", &Progress::new(false))
        .await
        .expect("v1 deploys");
    sandbox
        .deploy("v2", &Progress::new(false))
        .await
        .expect("v2 deploys");
    let load = load(&sandbox);
    responses_from(&load, "v2", 200).await;
    let report = sandbox
        .rollback(&Progress::new(false))
        .await
        .expect("rollback succeeds");
    assert_eq!(report.to.as_str(), "v1");
    let rolled_back = Instant::now();
    responses_from(&load, "v1", 200).await;
    let traffic = load.stop().await;
    assert_no_failures(&traffic);
    assert!(
        traffic.by_version["v2"].last <= rolled_back,
        "v2 stopped answering once the rollback returned"
    );
    assert_eq!(active_version(&sandbox).as_deref(), Some("v1"));
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_rollback_under_load_fails_no_request() {
    rollback_under_load(RuntimeChoice::Docker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_rollback_under_load_fails_no_request() {
    rollback_under_load(RuntimeChoice::Process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_concurrent_deploy_is_refused_and_the_first_completes() {
    // START_DELAY_MS keeps the first deploy in its health wait long enough to collide.
    let Some(sandbox) = sandbox(RuntimeChoice::Process, |o| o.env("START_DELAY_MS", "1500")).await
    else {
        return;
    };
    sandbox
        .deploy("v1", &Progress::new(false))
        .await
        .expect("v1 deploys");
    // A second process would open its own connection to the store: so does this.
    let other = Live::open(settings::load(&sandbox.config_path).unwrap())
        .await
        .unwrap();
    let name = Name::parse(SERVICE).unwrap();
    let load = load(&sandbox);
    let quiet = Progress::new(false);
    let first = sandbox.deploy("v2", &quiet);
    let second = async {
        eventually(
            Duration::from_secs(10),
            "the first deploy to take the lock",
            || async {
                other
                    .store
                    .lock(&name)
                    .unwrap()
                    .is_some_and(|l| l.deployment.is_some())
            },
        )
        .await;
        let spec = other.spec(SERVICE).unwrap();
        other
            .deployer(&Progress::new(false))
            .deploy(spec, &Version::parse("v3").unwrap())
            .await
    };
    let (first, second) = tokio::join!(first, second);
    first.expect("the first deploy completes");
    let refused = second.expect_err("the second deploy is refused");
    assert_eq!(refused.exit_code(), 2);
    let message = refused.to_string();
    assert!(
        message.starts_with("deploy of web refused: another deploy holds the lock (pid"),
        "{message}"
    );
    let traffic = load.stop().await;
    assert_no_failures(&traffic);
    assert_eq!(active_version(&sandbox).as_deref(), Some("v2"));
    assert!(other.store.lock(&name).unwrap().is_none(), "lock released");
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_healthcheck_is_waited_for_and_an_unhealthy_one_fails_fast() {
    let Some(sandbox) = sandbox(RuntimeChoice::Docker, |mut o| {
        o.docker_healthcheck = true;
        o.health =
            r#"path = "/health", interval = "100ms", healthy_after = 2, deadline = "30s""#.into();
        o.env("UNHEALTHY_VERSIONS", "v2")
    })
    .await
    else {
        return;
    };
    let v1 = sandbox
        .deploy("v1", &Progress::new(false))
        .await
        .expect("v1 deploys");
    // Our own probe passes within ~200 ms; Docker's first check runs after its 1 s interval.
    assert!(
        v1.healthy_ms >= 500,
        "waited for Docker's HEALTHCHECK: {} ms",
        v1.healthy_ms
    );
    let load = load(&sandbox);
    responses_from(&load, "v1", 200).await;
    let started = Instant::now();
    let err = sandbox
        .deploy("v2", &Progress::new(false))
        .await
        .expect_err("v2 is unhealthy");
    assert!(
        err.message
            .contains("is unhealthy by its Docker HEALTHCHECK"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "failed before the 30 s deadline"
    );
    let report = load.stop().await;
    assert_no_failures(&report);
    assert!(!report.by_version.contains_key("v2"), "{report}");
    sandbox.shutdown().await.unwrap();
}

/// An nginx started from a main config the way Debian's is (absolute paths, modules from
/// `/etc/nginx/modules-enabled/`, `include switchyard/*.conf;` inside `http`), stopped on drop.
struct SystemNginx {
    dir: tempfile::TempDir,
}

impl SystemNginx {
    fn start(nginx: &std::path::Path) -> SystemNginx {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for sub in ["etc/switchyard", "run", "log", "tmp"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        let r = root.display();
        let main = format!(
            "include /etc/nginx/modules-enabled/*.conf;\npid {r}/run/nginx.pid;\nerror_log {r}/log/error.log;\nworker_shutdown_timeout 10s;\nevents {{}}\n\
             http {{\n    access_log off;\n    client_body_temp_path {r}/tmp/body;\n    proxy_temp_path {r}/tmp/proxy;\n    \
             fastcgi_temp_path {r}/tmp/fastcgi;\n    uwsgi_temp_path {r}/tmp/uwsgi;\n    scgi_temp_path {r}/tmp/scgi;\n    \
             include switchyard/*.conf;\n}}\n"
        );
        std::fs::write(root.join("etc/nginx.conf"), main).unwrap();
        let status = std::process::Command::new(nginx)
            .arg("-c")
            .arg(root.join("etc/nginx.conf"))
            .status()
            .unwrap();
        assert!(status.success(), "the test's nginx starts");
        SystemNginx { dir }
    }
}

impl Drop for SystemNginx {
    fn drop(&mut self) {
        crate::support::stop_nginx(&self.dir.path().join("run/nginx.pid"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_nginx_mode_deploys_under_load() {
    let Some(app) = require_e2e(RuntimeChoice::Process).await else {
        return;
    };
    let nginx = SystemNginx::start(&crate::support::nginx().unwrap());
    let listen = format!("127.0.0.1:{}", crate::support::free_port());
    let config = format!(
        r#"[proxy]
main_conf = "etc/nginx.conf"
conf_dir = "etc/switchyard"
pid_file = "run/nginx.pid"
access_log = "log/access.json.log"
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
health = {{ path = "/health", interval = "100ms" }}
env = {{ LATENCY_MS = "5" }}
"#,
        control = crate::support::free_port(),
        app = app.display().to_string(),
    );
    let path = nginx.dir.path().join("switchyard.toml");
    std::fs::write(&path, config).unwrap();
    let live = Live::open(settings::load(&path).unwrap()).await.unwrap();
    live.ensure_nginx()
        .await
        .expect("the system nginx is found by its pid file");
    let spec = live.spec("web").unwrap();
    let quiet = Progress::new(false);
    let result = async {
        live.deployer(&quiet)
            .deploy(spec, &Version::parse("v1").unwrap())
            .await?;
        let mut config = LoadConfig::new(format!("http://{listen}/"));
        config.connections = CONNECTIONS;
        config.max_duration = Duration::from_secs(60);
        let load = Load::start(config);
        responses_from(&load, "v1", 200).await;
        live.deployer(&quiet)
            .deploy(spec, &Version::parse("v2").unwrap())
            .await?;
        responses_from(&load, "v2", 200).await;
        Ok::<_, switchyard_engine::deploy::DeployError>(load.stop().await)
    }
    .await;
    live.remove_all().await.unwrap();
    let report = result.expect("deploys through the system nginx");
    assert_no_failures(&report);
    let file = std::fs::read_to_string(nginx.dir.path().join("etc/switchyard/web.conf")).unwrap();
    assert!(
        file.contains("\n# Generated by switchyard for service web."),
        "{file}"
    );
    // The system nginx serves it from a site file switchyard wrote beside it.
    let sites = std::fs::read_dir(nginx.dir.path().join("etc/switchyard"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("_site."))
        .count();
    assert_eq!(sites, 1, "one server for the one service");
}

/// Reload routing (nginx without its Lua module, or `routing = "reload"`) keeps the cutover
/// protocol: each flip is a confirmed reload and the old workers are waited out. A client that
/// re-sends a request cut by the reload's connection close (as browsers do for GETs) sees no
/// failure; one that never re-sends can lose a few per flip (see BENCHMARKS.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_routing_flips_and_rolls_back_with_no_failure_for_a_client_that_resends() {
    let Some(sandbox) = sandbox(RuntimeChoice::Process, |o| o.routing("reload")).await else {
        return;
    };
    assert_eq!(
        sandbox.live().router.routing(),
        switchyard_nginx::Routing::Reload
    );
    sandbox
        .deploy("v1", &Progress::new(false))
        .await
        .expect("v1 deploys");
    let mut config = LoadConfig::new(sandbox.url());
    config.connections = CONNECTIONS;
    config.max_duration = Duration::from_secs(60);
    config.resend = true;
    let load = Load::start(config);
    responses_from(&load, "v1", 200).await;
    let before = sandbox.live().router.disk_generation();
    sandbox
        .deploy("v2", &Progress::new(false))
        .await
        .expect("v2 deploys");
    responses_from(&load, "v2", 200).await;
    sandbox
        .rollback(&Progress::new(false))
        .await
        .expect("rolls back");
    responses_from(&load, "v1", 400).await;
    assert_eq!(
        sandbox.live().router.disk_generation(),
        before + 2,
        "one reload per flip"
    );
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "failed requests:\n{report}");
    assert_eq!(active_version(&sandbox).as_deref(), Some("v1"));
    sandbox.shutdown().await.unwrap();
}
