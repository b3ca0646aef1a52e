//! Secrets and `env_file` end to end (real Docker, real nginx): the values reach the
//! container's environment and appear nowhere else — not in `plan`, `status`, `history` or
//! a deploy's output (human or JSON), the container labels, nginx's logs, or the bytes of
//! the SQLite file and its WAL. A loose secret file stops the deploy before anything starts.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use switchyard_app::progress::Progress;
use switchyard_app::sandbox::{Sandbox, SERVICE};
use switchyard_engine::config::RuntimeChoice;
use switchyard_engine::{Name, Runtime};

use crate::e2e::sandbox;
use crate::support::{assert_no_failures, responses_from};

const SECRET: &str = "sy-secret-4c1d9e27b0";
const FROM_ENV_FILE: &str = "sy-envfile-9a73f2c5d1";

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Stdout and stderr of the switchyard binary run on the sandbox's config.
fn cli(sandbox: &Sandbox, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--config")
        .arg(&sandbox.config_path)
        .args(args)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn docker_inspect(id: &str, format: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "--format", format, id])
        .output()
        .unwrap();
    assert!(out.status.success(), "docker inspect {id}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_hidden(what: &str, text: &str) {
    for value in [SECRET, FROM_ENV_FILE] {
        assert!(
            !text.contains(value),
            "{what} shows a secret value:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_the_container_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (secret, env_file) = (dir.path().join("api-token"), dir.path().join("app.env"));
    write(&secret, &format!("{SECRET}\n"), 0o600);
    write(&env_file, &format!("DB_PASSWORD={FROM_ENV_FILE}\n"), 0o600);
    let lines = format!(
        "env_file = {:?}\nsecrets = {{ API_TOKEN = {:?} }}",
        env_file.display().to_string(),
        secret.display().to_string()
    );
    let Some(sandbox) = sandbox(RuntimeChoice::Docker, |o| o.container(&lines)).await else {
        return;
    };
    sandbox
        .deploy("v1", &Progress::new(false))
        .await
        .expect("v1 deploys");
    let load = crate::support::load(sandbox.url(), 16);
    responses_from(&load, "v1", 200).await;
    sandbox.ensure_image("v2").await.unwrap();
    let deployed = cli(&sandbox, &["deploy", SERVICE, "--version", "v2"]);
    assert!(deployed.contains("web v2 is live"), "{deployed}");
    responses_from(&load, "v2", 200).await;
    assert_no_failures(&load.stop().await);
    assert_hidden("deploy", &deployed);

    let instances = sandbox
        .live()
        .runtime
        .list(&Name::parse(SERVICE).unwrap())
        .await
        .unwrap();
    let v2 = instances
        .iter()
        .find(|i| i.version.as_str() == "v2")
        .unwrap();
    let env = docker_inspect(&v2.id, "{{json .Config.Env}}");
    assert!(env.contains(&format!("API_TOKEN={SECRET}")), "{env}");
    assert!(
        env.contains(&format!("DB_PASSWORD={FROM_ENV_FILE}")),
        "{env}"
    );
    assert_hidden("labels", &docker_inspect(&v2.id, "{{json .Config.Labels}}"));

    for args in [
        &["plan", SERVICE, "--version", "v3"][..],
        &["plan", SERVICE, "--version", "v3", "--output", "json"],
        &["status"],
        &["status", "--output", "json"],
        &["history"],
        &["history", "--output", "json"],
        &["validate"],
    ] {
        assert_hidden(&args.join(" "), &cli(&sandbox, args));
    }
    let logs = cli(&sandbox, &["logs", SERVICE, "--since", "10m"]);
    assert!(
        logs.lines()
            .any(|l| l.contains(" | demo-app v2 listening on")),
        "the replicas' output, each line named: {logs}"
    );
    assert_hidden("logs", &logs);
    let root = sandbox.dir.path();
    for file in [
        "state/switchyard.db",
        "state/switchyard.db-wal",
        "nginx/logs/error.log",
        "nginx/logs/access.json.log",
    ] {
        let bytes = std::fs::read(root.join(file)).unwrap_or_default();
        assert_hidden(file, &String::from_utf8_lossy(&bytes));
    }

    // A secret file others can read stops the next deploy before anything starts.
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    sandbox.ensure_image("v3").await.unwrap();
    let refused = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--config")
        .arg(&sandbox.config_path)
        .args(["deploy", SERVICE, "--version", "v3"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{said}");
    assert!(
        said.contains("secrets.API_TOKEN") && said.contains("mode 644"),
        "{said}"
    );
    assert_hidden("the refusal", &said);
    let after = sandbox
        .live()
        .runtime
        .list(&Name::parse(SERVICE).unwrap())
        .await
        .unwrap();
    assert!(
        after.iter().all(|i| i.version.as_str() != "v3"),
        "nothing of v3 was started"
    );
    sandbox.shutdown().await.unwrap();
}
