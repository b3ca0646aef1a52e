//! Deploy hooks end to end, on the process runtime behind a real nginx: a failing
//! `pre_deploy` starts no replica; a `pre_traffic` smoke test reaches the new replicas
//! directly through `SWITCHYARD_REPLICAS` before nginx routes to them, and when it fails they
//! are removed while a non-retrying load stays on v1 with 0 failed requests; `post_deploy`
//! and `on_rollback` webhooks reach a test server on 127.0.0.1 signed with HMAC-SHA256 of the
//! body, which the test checks with its own key. Through the binary, each hook's output is
//! printed as it runs and kept: `history --show ID` and serve's `GET /api/v1/deployments/{id}`
//! show a failed `pre_traffic`'s output, and a hook that prints a service secret leaves
//! `[redacted]` in its place (never the value, in the state database either). The hook
//! scripts are `#!/bin/sh` files run as the program of an argv.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use switchyard_app::progress::Progress;
use switchyard_app::sandbox::{Sandbox, SandboxOptions, SERVICE};
use switchyard_engine::config::RuntimeChoice;
use switchyard_engine::{DeploymentId, HookPoint, Name, Runtime, Step, Store};

use crate::support::{assert_no_failures, require_dynamic, require_e2e, responses_from};

/// An executable `#!/bin/sh` script `name` in `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A process sandbox of 2 replicas with `hooks` (lines of `hooks.<point> = { … }`), and the
/// demo-app binary (a hook's HTTP client: `demo-app get URL`).
async fn sandbox(hooks: &str) -> Option<(Sandbox, PathBuf)> {
    let app = require_e2e(RuntimeChoice::Process).await?;
    let options = SandboxOptions::new(RuntimeChoice::Process, app.clone())
        .replicas(2)
        .env("LATENCY_MS", "5")
        .service_keys(hooks);
    let sandbox = Sandbox::start(&options).await.expect("sandbox starts");
    if !require_dynamic(&sandbox.live().router) {
        return None;
    }
    Some((sandbox, app))
}

fn name() -> Name {
    Name::parse(SERVICE).unwrap()
}

async fn versions_running(sandbox: &Sandbox) -> Vec<String> {
    let instances = sandbox.live().runtime.list(&name()).await.unwrap();
    let mut versions: Vec<String> = instances.iter().map(|i| i.version.to_string()).collect();
    versions.sort();
    versions
}

fn newest_deployment(sandbox: &Sandbox) -> DeploymentId {
    sandbox.live().store.history(Some(&name()), 1).unwrap()[0].id
}

fn journal(sandbox: &Sandbox, id: DeploymentId) -> Vec<Step> {
    let (_, journal) = sandbox.live().store.deployment(id).unwrap().unwrap();
    journal.into_iter().map(|e| e.step).collect()
}

/// The `(ok, summary, output)` journaled for `point` in deployment `id`.
fn hook_ran(sandbox: &Sandbox, id: DeploymentId, point: HookPoint) -> (bool, String, String) {
    journal(sandbox, id)
        .into_iter()
        .find_map(|s| match s {
            Step::HookRan {
                hook,
                ok,
                summary,
                output,
            } if hook == point => Some((ok, summary, output)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {point:?} hook journaled in deployment #{id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pre_deploy_starts_no_replica() {
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("seen");
    let migrate = script(
        dir.path(),
        "migrate",
        r#"echo "$SWITCHYARD_HOOK $SWITCHYARD_VERSION previous=$SWITCHYARD_PREVIOUS" >> "$1"
if [ "$SWITCHYARD_VERSION" = "$2" ]; then echo "migration refused" >&2; exit 3; fi"#,
    );
    let hooks = format!(
        "hooks.pre_deploy = {{ command = [{:?}, {:?}, \"v2\"], timeout = \"20s\" }}",
        migrate.display().to_string(),
        seen.display().to_string()
    );
    let Some((sandbox, _)) = sandbox(&hooks).await else {
        return;
    };
    let progress = Progress::new(false);
    sandbox.deploy("v1", &progress).await.expect("v1 deploys");
    let err = sandbox
        .deploy("v2", &progress)
        .await
        .expect_err("pre_deploy refuses v2");
    assert_eq!(err.code, 1, "{err}");
    assert!(err.message.contains("traffic stays on v1"), "{err}");
    assert!(
        err.message
            .contains("pre_deploy hook failed: exit 3: migration refused"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap(),
        "pre_deploy v1 previous=\npre_deploy v2 previous=v1\n"
    );
    let id = newest_deployment(&sandbox);
    let steps = journal(&sandbox, id);
    assert!(
        !steps
            .iter()
            .any(|s| matches!(s, Step::StartInstance { .. } | Step::Serve { .. })),
        "nothing started, nothing routed: {steps:#?}"
    );
    let (ok, summary, output) = hook_ran(&sandbox, id, HookPoint::PreDeploy);
    assert_eq!((ok, summary.as_str()), (false, "exit 3"));
    assert!(output.contains("migration refused"), "{output:?}");
    assert_eq!(versions_running(&sandbox).await, ["v1", "v1"]);
    let (status, body) = crate::support::get(sandbox.listen, "/version").await;
    assert_eq!((status, body.as_str()), (200, "v1"));
    sandbox.shutdown().await.unwrap();
}

/// A smoke test that asks each new replica for its version, logging `addr version` to `$1`,
/// and fails on version `$2` (the dashboard's test fails a deploy with it too).
const SMOKE: &str = r#"out="$1"
IFS=,
for addr in $SWITCHYARD_REPLICAS; do
  v=$("$3" get "http://$addr/version") || { echo "cannot reach $addr"; exit 2; }
  echo "$SWITCHYARD_VERSION $addr $v" >> "$out"
done
if [ "$SWITCHYARD_VERSION" = "$2" ]; then echo "smoke test failed on $SWITCHYARD_VERSION"; exit 1; fi
echo "smoke test passed""#;

pub(crate) fn smoke_hook(dir: &Path, app: &Path, fail_on: &str) -> (String, PathBuf) {
    let smoke = script(dir, "smoke", SMOKE);
    let log = dir.join("smoked");
    let hook = format!(
        "hooks.pre_traffic = {{ command = [{:?}, {:?}, {fail_on:?}, {:?}], timeout = \"20s\" }}",
        smoke.display().to_string(),
        log.display().to_string(),
        app.display().to_string()
    );
    (hook, log)
}

/// `(version, addr, answered)` per line of the smoke test's log.
fn smoked(log: &Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut words = l.split(' ').map(str::to_owned);
            let mut next = || words.next().unwrap_or_default();
            (next(), next(), next())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pre_traffic_removes_the_replicas_and_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let Some(app) = require_e2e(RuntimeChoice::Process).await else {
        return;
    };
    let (hook, log) = smoke_hook(dir.path(), &app, "v2");
    let Some((sandbox, _)) = sandbox(&hook).await else {
        return;
    };
    let progress = Progress::new(false);
    sandbox.deploy("v1", &progress).await.expect("v1 deploys");
    let load = crate::support::load(sandbox.url(), 16);
    responses_from(&load, "v1", 200).await;
    let err = sandbox
        .deploy("v2", &progress)
        .await
        .expect_err("the smoke test fails v2");
    assert_eq!(err.code, 1, "{err}");
    assert!(err.message.contains("traffic stays on v1"), "{err}");
    assert!(
        err.message
            .contains("pre_traffic hook failed: exit 1: smoke test failed on v2"),
        "{err}"
    );
    responses_from(&load, "v1", 400).await;
    let report = load.stop().await;
    assert_no_failures(&report);
    assert!(
        !report.by_version.contains_key("v2"),
        "v2 got no traffic: {report}"
    );
    // The smoke test reached both new replicas directly, each answering v2.
    let v2: Vec<_> = smoked(&log).into_iter().filter(|l| l.0 == "v2").collect();
    assert_eq!(v2.len(), 2, "{v2:?}");
    assert!(v2.iter().all(|l| l.2 == "v2"), "{v2:?}");
    assert_eq!(versions_running(&sandbox).await, ["v1", "v1"], "v2 removed");
    let id = newest_deployment(&sandbox);
    let (ok, summary, output) = hook_ran(&sandbox, id, HookPoint::PreTraffic);
    assert_eq!((ok, summary.as_str()), (false, "exit 1"));
    assert!(output.contains("smoke test failed on v2"), "{output:?}");
    sandbox.shutdown().await.unwrap();
}

/// What the test webhook server received: the signature header and the body.
type Received = Arc<Mutex<Vec<(Option<String>, Vec<u8>)>>>;

/// A webhook receiver on 127.0.0.1:0 that answers `thanks`.
async fn webhook_server() -> (String, Received, tokio::task::JoinHandle<()>) {
    let received: Received = Arc::default();
    let store = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let store = store.clone();
                async move {
                    let signature = headers
                        .get("x-switchyard-signature")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    store.lock().unwrap().push((signature, body.to_vec()));
                    "thanks"
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, received, server)
}

fn expected_signature(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_traffic_reaches_the_new_replicas_and_webhooks_are_signed() {
    let dir = tempfile::tempdir().unwrap();
    let Some(app) = require_e2e(RuntimeChoice::Process).await else {
        return;
    };
    let (smoke, log) = smoke_hook(dir.path(), &app, "never");
    let (url, received, server) = webhook_server().await;
    let key = dir.path().join("hook.key");
    std::fs::write(&key, "k3y-s3cr3t\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let webhook = format!(
        "{{ url = {url:?}, secret_file = {:?}, timeout = \"5s\" }}",
        key.display().to_string()
    );
    let hooks = format!("{smoke}\nhooks.post_deploy = {webhook}\nhooks.on_rollback = {webhook}");
    let Some((sandbox, _)) = sandbox(&hooks).await else {
        server.abort();
        return;
    };
    let progress = Progress::new(false);
    sandbox.deploy("v1", &progress).await.expect("v1 deploys");
    let load = crate::support::load(sandbox.url(), 16);
    responses_from(&load, "v1", 200).await;
    let report = sandbox.deploy("v2", &progress).await.expect("v2 deploys");
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    responses_from(&load, "v2", 200).await;
    sandbox.rollback(&progress).await.expect("rollback to v1");
    responses_from(&load, "v1", 400).await;
    let traffic = load.stop().await;
    assert_no_failures(&traffic);

    // The smoke test saw v2's replicas, before nginx did, and they answered v2.
    let active = sandbox.live().store.service(&name()).unwrap();
    let v2_addrs: Vec<String> = active.retained[0]
        .instances
        .iter()
        .map(|i| i.addr().to_string())
        .collect();
    let smoked_v2: Vec<(String, String, String)> =
        smoked(&log).into_iter().filter(|l| l.0 == "v2").collect();
    let mut reached: Vec<String> = smoked_v2.iter().map(|l| l.1.clone()).collect();
    reached.sort();
    let mut expected = v2_addrs.clone();
    expected.sort();
    assert_eq!(reached, expected, "{smoked_v2:?}");
    assert!(smoked_v2.iter().all(|l| l.2 == "v2"), "{smoked_v2:?}");

    // post_deploy v1, post_deploy v2, on_rollback: each signed with the key.
    let received = received.lock().unwrap().clone();
    let bodies: Vec<serde_json::Value> = received
        .iter()
        .map(|(signature, body)| {
            assert_eq!(
                signature.as_deref(),
                Some(expected_signature(b"k3y-s3cr3t", body).as_str()),
                "signed with the key, without its newline"
            );
            serde_json::from_slice(body).unwrap()
        })
        .collect();
    let summary: Vec<(String, String, serde_json::Value)> = bodies
        .iter()
        .map(|b| {
            (
                b["hook"].as_str().unwrap().to_owned(),
                b["version"].as_str().unwrap().to_owned(),
                b["previous"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("post_deploy".into(), "v1".into(), serde_json::Value::Null),
            ("post_deploy".into(), "v2".into(), "v1".into()),
            ("on_rollback".into(), "v1".into(), "v2".into()),
        ]
    );
    let post_v2 = &bodies[1];
    assert_eq!(post_v2["service"], "web");
    assert_eq!(post_v2["strategy"], "blue-green");
    let mut told: Vec<String> = post_v2["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    told.sort();
    assert_eq!(
        told, expected,
        "post_deploy is told the replicas nginx serves"
    );
    assert_eq!(post_v2["deployment"], report.deployment);

    // The answer is kept; the key is in no journal.
    let (ok, summary, output) = hook_ran(&sandbox, report.deployment, HookPoint::PostDeploy);
    assert_eq!(
        (ok, summary.as_str(), output.as_str()),
        (true, "HTTP 200", "thanks")
    );
    for id in 1..=newest_deployment(&sandbox) {
        let text = serde_json::to_string(&journal(&sandbox, id)).unwrap();
        assert!(!text.contains("k3y-s3cr3t"), "the key leaked into #{id}");
    }
    server.abort();
    sandbox.shutdown().await.unwrap();
}

/// What the binary's test leaves: its processes and the nginx it started, removed on drop.
struct CliProject(tempfile::TempDir);

impl Drop for CliProject {
    fn drop(&mut self) {
        let dir = self.0.path();
        crate::support::clean_up(
            dir.join("switchyard.toml"),
            &dir.join("nginx/logs/nginx.pid"),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_each_hook_with_the_tail_of_its_output() {
    let Some(app) = require_e2e(RuntimeChoice::Process).await else {
        return;
    };
    let project = CliProject(tempfile::tempdir().unwrap());
    let dir = project.0.path();
    let (smoke, _) = smoke_hook(dir, &app, "v2");
    // The hook reads the service's own secret, as a migration would read its database URL.
    let notify = script(
        dir,
        "notify",
        "echo \"told about $SWITCHYARD_VERSION with $(cat \"$1\")\"",
    );
    let secret = private_file(dir, "api.key", &format!("{API_KEY}\n"));
    let token = private_file(dir, "serve.token", &format!("{SERVE_TOKEN}\n"));
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
listen = "127.0.0.1:{listen}"
command = [{app:?}]
replicas = 2
stop_timeout = "5s"
health = {{ path = "/health", interval = "100ms", healthy_after = 2, deadline = "20s" }}
secrets = {{ API_KEY = {secret:?} }}
{smoke}
hooks.post_deploy = {{ command = [{notify:?}, {secret:?}] }}
[serve]
token_file = {token:?}
"#,
        control = crate::support::free_port(),
        listen = crate::support::free_port(),
        app = app.display().to_string(),
        notify = notify.display().to_string(),
        secret = secret.display().to_string(),
        token = token.display().to_string(),
    );
    std::fs::write(dir.join("switchyard.toml"), config).unwrap();
    let run = |version: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("--config")
            .arg(dir.join("switchyard.toml"))
            .args(["deploy", "web", "--version", version])
            .output()
            .unwrap()
    };
    let v1 = run("v1");
    crate::support::assert_exit(&v1, 0);
    let said = crate::support::text(&v1.stderr);
    for line in [
        "pre_traffic hook ran: exit 0",
        "  | smoke test passed",
        "post_deploy hook ran: exit 0",
        "  | told about v1 with [redacted]",
    ] {
        assert!(said.contains(line), "{line:?} in:\n{said}");
    }
    assert!(!said.contains(API_KEY), "{said}");
    let v2 = run("v2");
    crate::support::assert_exit(&v2, 1);
    let said = crate::support::text(&v2.stderr);
    for line in [
        "pre_traffic hook FAILED: exit 1",
        "  | smoke test failed on v2",
        "pre_traffic hook failed: exit 1: smoke test failed on v2",
    ] {
        assert!(said.contains(line), "{line:?} in:\n{said}");
    }
    assert!(!said.contains("post_deploy hook"), "{said}");

    // Kept: `history --show` prints the failed pre_traffic with its output.
    let show = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("--config")
            .arg(dir.join("switchyard.toml"))
            .args(args)
            .output()
            .unwrap();
        crate::support::assert_exit(&out, 0);
        crate::support::text(&out.stdout)
    };
    let shown = show(&["history", "--show", "2"]);
    let hooks = shown
        .split_once("\nhooks:\n")
        .unwrap_or_else(|| panic!("a hooks section in:\n{shown}"))
        .1;
    assert!(hooks.starts_with("  pre_traffic at +"), "{shown}");
    let first = hooks.lines().next().unwrap();
    assert!(first.ends_with(": FAILED: exit 1"), "{first}");
    assert!(
        hooks.contains("\n      | smoke test failed on v2\n"),
        "{shown}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&show(&["--output", "json", "history", "--show", "2"])).unwrap();
    assert_eq!(json["schema"], 1, "{json}");
    let pre_traffic = &json["hooks"][0];
    assert_eq!(
        (
            &pre_traffic["hook"],
            &pre_traffic["ok"],
            &pre_traffic["summary"]
        ),
        (&"pre_traffic".into(), &false.into(), &"exit 1".into()),
        "{json}"
    );
    assert!(
        pre_traffic["output"]
            .as_str()
            .unwrap()
            .contains("smoke test failed on v2"),
        "{json}"
    );
    // v1's post_deploy printed the secret: kept redacted, and nowhere in the database.
    let v1 = show(&["history", "--show", "1"]);
    assert!(v1.contains("  post_deploy at +"), "{v1}");
    assert!(
        v1.contains("      | told about v1 with [redacted]\n"),
        "{v1}"
    );
    assert!(!v1.contains(API_KEY), "{v1}");
    for file in ["switchyard.db", "switchyard.db-wal"] {
        let path = dir.join("state").join(file);
        // The database itself is there; its write-ahead log may have been checkpointed.
        let bytes = std::fs::read(&path).or_else(|e| match file {
            "switchyard.db-wal" => Ok(Vec::new()),
            _ => Err(e),
        });
        let bytes = bytes.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let leaked = bytes
            .windows(API_KEY.len())
            .any(|w| w == API_KEY.as_bytes());
        assert!(!leaked, "the secret is in the state database's {file}");
    }

    // serve's API carries the same hooks.
    let config = switchyard_app::settings::load(&dir.join("switchyard.toml")).unwrap();
    let live = switchyard_app::live::Live::open_lazy(config).unwrap();
    let options = switchyard_app::serve::ServeOptions {
        supervise: false,
        ..switchyard_app::serve::ServeOptions::new("127.0.0.1:0".parse().unwrap())
    };
    let server = switchyard_app::serve::start_with(live, options)
        .await
        .expect("serve starts");
    let url = format!("http://{}/api/v1/deployments/2", server.addr());
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "-H"])
        .arg(format!("Authorization: Bearer {SERVE_TOKEN}"))
        .arg(&url)
        .output()
        .expect("curl");
    let body = crate::support::text(&out.stdout);
    let body: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(body["outcome"], "failed", "{body}");
    assert_eq!(body["hooks"], json["hooks"], "the API and history agree");
    server.shutdown().await.unwrap();
}

const API_KEY: &str = "sk-live-7f3a9c2e51";
const SERVE_TOKEN: &str = "hooks-test-serve-token-4411";

/// A file only its owner can read (as secrets and token files must be).
fn private_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}
