//! Image pulls from a real registry: Debian's `docker-registry` on 127.0.0.1:<free port> with
//! htpasswd (bcrypt) logins, started by each test with its own config and storage in a temp
//! dir and stopped by PID when dropped, failed tests included ([`server::TestRegistry`]).
//! Images are scratch builds of the static demo-app pushed there with credentials, and the
//! local copy is removed before a deploy so its pull is real. Every test where traffic moves runs a load
//! that never re-sends and asserts that none of it failed.

mod server;

use std::sync::Arc;

use base64::Engine;
use switchyard_app::progress::Progress;
use switchyard_app::sandbox::{Sandbox, SandboxOptions, SERVICE};
use switchyard_docker::image::{build_scratch_image, ScratchImage};
use switchyard_docker::pull::{image_present, pull_image, remove_image, PullSettings};
use switchyard_docker::DockerRuntime;
use switchyard_engine::config::RuntimeChoice;
use switchyard_engine::{Name, Runtime, Store};

use crate::support::{assert_no_failures, free_port, require_e2e, responses_from};
use server::{http_get, TestRegistry};

const USER: &str = "ci";
const PASSWORD: &str = "Reg1stry-Pa55word";
const WRONG: &str = "Wr0ng-Pa55word";

/// The `x-build` header of `n` answers through nginx, one per fresh connection.
async fn builds_served(sandbox: &Sandbox, n: usize) -> Vec<String> {
    let mut builds = Vec::new();
    for _ in 0..n {
        let response = http_get(sandbox.listen, "/").await.expect("nginx answers");
        let build = response
            .lines()
            .find_map(|l| l.strip_prefix("x-build: "))
            .unwrap_or("none")
            .to_owned();
        builds.push(build);
    }
    builds
}

/// A Docker sandbox of 2 replicas of `image` (with `{version}`) and these extra lines.
async fn sandbox(image: &str, service_keys: &str, tables: &str) -> Option<Sandbox> {
    require_e2e(RuntimeChoice::Docker).await?;
    let app = switchyard_app::sandbox::demo_app_binary();
    let mut options = SandboxOptions::new(RuntimeChoice::Docker, app)
        .replicas(2)
        .env("LATENCY_MS", "5");
    options.image = Some(image.to_owned());
    options.service_keys = service_keys.to_owned();
    options.tables = tables.to_owned();
    let sandbox = Sandbox::start(&options).await.expect("sandbox starts");
    if !crate::support::require_dynamic(&sandbox.live().router) {
        return None;
    }
    Some(sandbox)
}

async fn docker(sandbox: &Sandbox) -> &DockerRuntime {
    match &sandbox.live().runtime {
        switchyard_app::live::AnyRuntime::Docker(d) => d.get().await.unwrap(),
        switchyard_app::live::AnyRuntime::Process(_) => unreachable!("a docker sandbox"),
    }
}

async fn versions_running(sandbox: &Sandbox) -> Vec<String> {
    let name = Name::parse(SERVICE).unwrap();
    let mut versions: Vec<String> = sandbox
        .live()
        .runtime
        .list(&name)
        .await
        .unwrap()
        .iter()
        .map(|i| i.version.to_string())
        .collect();
    versions.sort();
    versions
}

fn active_version(sandbox: &Sandbox) -> Option<String> {
    let name = Name::parse(SERVICE).unwrap();
    let record = sandbox.live().store.service(&name).unwrap();
    record.active.map(|s| s.version.to_string())
}

fn load(sandbox: &Sandbox) -> switchyard_app::load::Load {
    crate::support::load(sandbox.url(), 16)
}

/// The state database and its WAL, as bytes.
fn state_bytes(sandbox: &Sandbox) -> Vec<u8> {
    let db = sandbox.dir.path().join("state/switchyard.db");
    let mut bytes = std::fs::read(&db).unwrap();
    let wal = db.with_extension("db-wal");
    bytes.extend(std::fs::read(wal).unwrap_or_default());
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// A registry with v1 (build "one") and v2 (build "two") pushed, its password file, and a
/// sandbox that pulls from it with the right login. None after a loud skip.
async fn pushed_v1_and_v2() -> Option<(TestRegistry, std::path::PathBuf, Sandbox)> {
    let registry = TestRegistry::start().await?;
    let pw = registry.password_file(PASSWORD, 0o600);
    let image = format!("{}/demo:{{version}}", registry.host());
    let sandbox = sandbox(&image, "", &registry.table(&pw)).await?;
    let app = switchyard_app::sandbox::demo_app_binary();
    let docker = docker(&sandbox).await;
    registry.push(docker, &app, "v1", "one").await;
    registry.push(docker, &app, "v2", "two").await;
    Some((registry, pw, sandbox))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_pushed_to_a_registry_is_pulled_with_credentials_and_deployed() {
    let Some((registry, _, sandbox)) = pushed_v1_and_v2().await else {
        return;
    };
    let docker = docker(&sandbox).await;
    sandbox
        .deploy("v1", &Progress::new(false))
        .await
        .expect("v1 is pulled and deploys");
    let v1 = format!("{}/demo:v1", registry.host());
    assert!(image_present(docker, &v1).await.unwrap(), "v1 was pulled");
    let load = load(&sandbox);
    responses_from(&load, "v1", 200).await;
    // v2 is pulled before any replica of it starts, while v1 serves.
    sandbox
        .deploy("v2", &Progress::new(false))
        .await
        .expect("v2 is pulled and deploys");
    responses_from(&load, "v2", 200).await;
    let report = load.stop().await;
    assert_no_failures(&report);
    assert_eq!(active_version(&sandbox).as_deref(), Some("v2"));
    assert_eq!(builds_served(&sandbox, 4).await, ["two"; 4]);
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_fail_the_deploy_before_anything_changes() {
    let Some((registry, pw, sandbox)) = pushed_v1_and_v2().await else {
        return;
    };
    let docker = docker(&sandbox).await;
    sandbox
        .deploy("v1", &Progress::new(false))
        .await
        .expect("v1 deploys");
    let load = load(&sandbox);
    responses_from(&load, "v1", 200).await;
    let running = versions_running(&sandbox).await;

    // The wrong password, through the binary: exit 1, the registry's words, no password.
    registry.password_file(WRONG, 0o600);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--config")
        .arg(&sandbox.config_path)
        .args(["deploy", SERVICE, "--version", "v2"])
        .output()
        .await
        .unwrap();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{output}");
    assert!(output.contains("traffic stays on v1"), "{output}");
    assert!(
        output.contains(&format!("pulling image {}/demo:v2", registry.host())),
        "names the image: {output}"
    );
    assert!(
        output.contains("unauthorized") || output.contains("no basic auth credentials"),
        "the registry's message: {output}"
    );
    for secret in [WRONG, PASSWORD] {
        assert!(!output.contains(secret), "a password was printed: {output}");
    }

    // A password file others can read is refused, naming it and its mode.
    registry.password_file(PASSWORD, 0o644);
    let err = sandbox
        .deploy("v2", &Progress::new(false))
        .await
        .expect_err("a loose password file is refused");
    assert_eq!(err.code, 1, "{err}");
    assert!(
        err.message.contains(&pw.display().to_string()) && err.message.contains("mode 0644"),
        "{err}"
    );

    responses_from(&load, "v1", 400).await;
    let report = load.stop().await;
    assert_no_failures(&report);
    assert!(!report.by_version.contains_key("v2"), "v2 got no traffic");
    assert_eq!(active_version(&sandbox).as_deref(), Some("v1"));
    assert_eq!(versions_running(&sandbox).await, running, "nothing started");
    let v2 = format!("{}/demo:v2", registry.host());
    assert!(
        !image_present(docker, &v2).await.unwrap(),
        "v2 was not pulled"
    );
    let state = state_bytes(&sandbox);
    for secret in [WRONG, PASSWORD] {
        assert!(
            !contains(&state, secret),
            "a password is in the state database"
        );
    }
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_always_picks_up_a_re_pushed_tag() {
    let Some(registry) = TestRegistry::start().await else {
        return;
    };
    let pw = registry.password_file(PASSWORD, 0o600);
    let image = format!("{}/demo:{{version}}", registry.host());
    let always = "pull = \"always\"";
    let Some(sandbox) = sandbox(&image, always, &registry.table(&pw)).await else {
        return;
    };
    let app = switchyard_app::sandbox::demo_app_binary();
    let docker = docker(&sandbox).await;
    registry.push(docker, &app, "v1", "one").await;
    sandbox
        .deploy("v1", &Progress::new(false))
        .await
        .expect("v1 deploys");
    assert_eq!(builds_served(&sandbox, 4).await, ["one"; 4]);
    // Another build under the same tag in the registry; the host keeps the first one, so
    // only a pull brings the new one.
    registry.push(docker, &app, "v1", "two").await;
    registry.build(docker, &app, "v1", "one").await;
    let load = load(&sandbox);
    responses_from(&load, "v1", 200).await;
    sandbox
        .deploy("v1", &Progress::new(false))
        .await
        .expect("v1 deploys again");
    responses_from(&load, "v1", 400).await;
    let report = load.stop().await;
    assert_no_failures(&report);
    assert_eq!(
        builds_served(&sandbox, 4).await,
        ["two"; 4],
        "the re-pushed build"
    );
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_never_with_a_missing_image_fails_clearly() {
    let Some(app) = require_e2e(RuntimeChoice::Docker).await else {
        return;
    };
    // A local-only image name that no test pushes or pulls.
    let name = format!("switchyard-never-{}", free_port());
    let Some(sandbox) = sandbox(&format!("{name}:{{version}}"), "pull = \"never\"", "").await
    else {
        return;
    };
    let docker = DockerRuntime::connect("registry-test").await.unwrap();
    let v1 = format!("{name}:v1");
    let scratch = ScratchImage {
        tag: &v1,
        binary: &app,
        // An image of this test only, which it may remove when done.
        env: &[("SWITCHYARD_TEST_IMAGE", &name)],
        healthcheck: None,
    };
    build_scratch_image(&docker, &scratch).await.unwrap();
    sandbox
        .deploy("v1", &Progress::new(false))
        .await
        .expect("v1 is on the host");
    let load = load(&sandbox);
    responses_from(&load, "v1", 200).await;
    let err = sandbox
        .deploy("v2", &Progress::new(false))
        .await
        .expect_err("v2 is not on the host");
    assert_eq!(err.code, 1, "{err}");
    assert!(
        err.message
            .contains(&format!("image {name}:v2: not on this host"))
            && err.message.contains("pull = \"never\""),
        "{err}"
    );
    responses_from(&load, "v1", 400).await;
    let report = load.stop().await;
    assert_no_failures(&report);
    assert_eq!(versions_running(&sandbox).await, ["v1", "v1"]);
    sandbox.shutdown().await.unwrap();
    remove_image(&docker, &v1).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_config_json_auths_log_in_where_there_is_no_registry_table() {
    let Some(app) = crate::support::require_demo_app() else {
        return;
    };
    if !crate::support::require_docker().await {
        return;
    }
    let Some(registry) = TestRegistry::start().await else {
        return;
    };
    let docker = DockerRuntime::connect("registry-test").await.unwrap();
    registry.push(&docker, &app, "v1", "one").await;
    let image = format!("{}/demo:v1", registry.host());
    let config = registry.dir.path().join("config.json");
    let pulling = DockerRuntime::connect("registry-test")
        .await
        .unwrap()
        .with_pull(Arc::new(PullSettings {
            registry: None,
            docker_config: Some(config.clone()),
            progress: false,
        }));
    // No config.json yet: no login, and the error says so.
    let err = pull_image(&pulling, &image).await.expect_err("no login");
    let text = err.to_string();
    assert!(
        text.contains(&format!("no credentials for {}", registry.host())),
        "{text}"
    );
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let auths = format!(
        r#"{{"auths": {{"http://{}": {{"auth": "{auth}"}}}}}}"#,
        registry.host()
    );
    std::fs::write(&config, auths).unwrap();
    pull_image(&pulling, &image)
        .await
        .expect("the config.json login pulls");
    assert!(image_present(&docker, &image).await.unwrap());
}
