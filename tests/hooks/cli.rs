//! The hooks through the binary: each hook's output is printed as it runs and kept, so
//! `history --show ID` and serve's `GET /api/v1/deployments/{id}` show a failed
//! `pre_traffic`'s output; a hook that prints a service secret leaves `[redacted]` in its
//! place, never the value, in the state database either; an https webhook reaches a TLS
//! receiver the binary trusts through `SSL_CERT_FILE`, signed, and fails without it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use switchyard_engine::config::RuntimeChoice;

use super::{expected_signature, script, smoke_hook, webhook_server};
use crate::support::tls::TestCa;
use crate::support::{assert_no_failures, require_e2e, responses_from};

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
    let lines = format!(
        r#"secrets = {{ API_KEY = {secret:?} }}
{smoke}
hooks.post_deploy = {{ command = [{notify:?}, {secret:?}] }}
[serve]
token_file = {token:?}"#,
        notify = notify.display().to_string(),
        secret = secret.display().to_string(),
        token = token.display().to_string(),
    );
    cli_project(&project, &app, &lines);
    let run = |version: &str| project.deploy(version, &[]);
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

    kept_and_served(dir).await;
}

/// Deployment #1 (v1, its `post_deploy` printed the secret) and #2 (v2, failed by its
/// `pre_traffic`) as `history --show` and serve's API show them.
async fn kept_and_served(dir: &Path) {
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

/// A project for the binary in `project`'s directory: two replicas of the demo-app on the
/// process runtime with `hooks` (lines after the service's own: `hooks.<point> = …`, and any
/// table after it); `deploy(version, env)` runs `switchyard deploy` there. Returns the
/// service's listen.
fn cli_project(project: &CliProject, app: &Path, hooks: &str) -> std::net::SocketAddr {
    let dir = project.0.path();
    let listen: std::net::SocketAddr = format!("127.0.0.1:{}", crate::support::free_port())
        .parse()
        .unwrap();
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
{hooks}
"#,
        control = crate::support::free_port(),
        app = app.display().to_string(),
    );
    std::fs::write(dir.join("switchyard.toml"), config).unwrap();
    listen
}

impl CliProject {
    /// `switchyard deploy web --version VERSION` in the project, with `env` added.
    fn deploy(&self, version: &str, env: &[(&str, &Path)]) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("--config")
            .arg(self.0.path().join("switchyard.toml"))
            .args(["deploy", "web", "--version", version])
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }
}

/// The https version of the signed webhooks: the binary, given the test CA by
/// `SSL_CERT_FILE`, delivers `post_deploy` to a TLS receiver with the same signature; without
/// it the hook fails on the certificate (and, after the deploy, undoes nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_webhook_is_delivered_signed_to_a_receiver_trusted_by_ssl_cert_file() {
    let Some(app) = require_e2e(RuntimeChoice::Process).await else {
        return;
    };
    let Some(ca) = TestCa::new() else {
        return;
    };
    let (url, received, server) = webhook_server(Some(&ca)).await;
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let project = CliProject(tempfile::tempdir().unwrap());
    let key = project.0.path().join("hook.key");
    std::fs::write(&key, "tls-k3y\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let hooks = format!(
        "hooks.post_deploy = {{ url = {url:?}, secret_file = {:?}, timeout = \"5s\" }}",
        key.display().to_string()
    );
    let listen = cli_project(&project, &app, &hooks);
    let trusted = [("SSL_CERT_FILE", ca.ca.as_path())];
    let v1 = project.deploy("v1", &trusted);
    crate::support::assert_exit(&v1, 0);
    let load = crate::support::load(format!("http://{listen}/"), 8);
    responses_from(&load, "v1", 200).await;
    let v2 = project.deploy("v2", &trusted);
    crate::support::assert_exit(&v2, 0);
    let said = crate::support::text(&v2.stderr);
    assert!(said.contains("post_deploy hook ran: HTTP 200"), "{said}");
    responses_from(&load, "v2", 200).await;
    // Not trusted: the deploy is done, the hook failed on the certificate.
    let v3 = project.deploy("v3", &[]);
    crate::support::assert_exit(&v3, 0);
    let said = crate::support::text(&v3.stderr);
    assert!(said.contains("post_deploy hook FAILED"), "{said}");
    assert!(said.contains("invalid peer certificate"), "{said}");
    responses_from(&load, "v3", 200).await;
    assert_no_failures(&load.stop().await);

    let received = received.lock().unwrap().clone();
    let versions: Vec<String> = received
        .iter()
        .map(|(signature, body)| {
            assert_eq!(
                signature.as_deref(),
                Some(expected_signature(b"tls-k3y", body).as_str())
            );
            let body: serde_json::Value = serde_json::from_slice(body).unwrap();
            body["version"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        versions,
        ["v1", "v2"],
        "v3's hook never reached the receiver"
    );
    server.abort();
}
