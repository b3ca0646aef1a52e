//! Deploy hooks end to end, on the process runtime behind a real nginx: a failing
//! `pre_deploy` starts no replica; a `pre_traffic` smoke test reaches the new replicas
//! directly through `SWITCHYARD_REPLICAS` before nginx routes to them, and when it fails they
//! are removed while a non-retrying load stays on v1 with 0 failed requests; `post_deploy`
//! and `on_rollback` webhooks reach a test server on 127.0.0.1 signed with HMAC-SHA256 of the
//! body, which the test checks with its own key, over https too (the binary trusting the
//! receiver's test CA through `SSL_CERT_FILE`, [`cli`]); through the binary, what hooks print
//! is shown and kept, secrets redacted ([`cli`]). The hook scripts are `#!/bin/sh` files run
//! as the program of an argv.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use switchyard_app::progress::Progress;
use switchyard_app::sandbox::{Sandbox, SandboxOptions, SERVICE};
use switchyard_engine::config::RuntimeChoice;
use switchyard_engine::{DeploymentId, HookPoint, Name, Runtime, Step, Store};

use crate::support::tls::TestCa;
use crate::support::{assert_no_failures, require_dynamic, require_e2e, responses_from};

mod cli;

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

/// A webhook receiver on 127.0.0.1:0 that answers `thanks`; over TLS with `tls`'s
/// certificate, then its URL is `https://`.
async fn webhook_server(tls: Option<&TestCa>) -> (String, Received, tokio::task::JoinHandle<()>) {
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
    if let Some(ca) = tls {
        let (addr, server) = crate::support::tls::serve_tls(ca, app).await;
        return (format!("https://{addr}/hook"), received, server);
    }
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
    let (url, received, server) = webhook_server(None).await;
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
