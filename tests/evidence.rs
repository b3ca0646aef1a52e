//! Evidence and disruption end to end, through the binary on a Docker sandbox: a version that
//! crashes on start (the demo app exits 2 on a bad `LATENCY_MS`) leaves its log tail, exit
//! code and OOM flag in `history --show ID`, human and JSON, while traffic stays on v1; and a
//! good deploy under a load that never re-sends records 0 failed requests at the proxy, out
//! of the requests it saw, shown by `history`. The sandbox removes its labelled containers
//! and stops its nginx when dropped, also when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use switchyard_app::sandbox::{Sandbox, SERVICE};
use switchyard_engine::config::RuntimeChoice;

use crate::support::{assert_exit, assert_no_failures, load, responses_from, text};

/// The binary with `config`.
fn switchyard(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

/// A copy of the sandbox's config beside it (same state, same nginx) whose replicas exit at
/// once: the demo app refuses `LATENCY_MS = "soon"` with exit code 2 (and Docker does not
/// restart them).
fn crashing_config(sandbox: &Sandbox) -> PathBuf {
    let config = std::fs::read_to_string(&sandbox.config_path).unwrap();
    // Not restarted by Docker, so its exit code and OOM flag stay as they were.
    let crashing = config
        .replace(r#"LATENCY_MS = "5""#, r#"LATENCY_MS = "soon""#)
        .replace(
            "stop_timeout = \"5s\"\n",
            "stop_timeout = \"5s\"\nrestart = \"no\"\n",
        );
    assert!(crashing.contains("restart = \"no\""), "{crashing}");
    assert_ne!(config, crashing, "the sandbox sets LATENCY_MS");
    let path = sandbox.dir.path().join("crashing.toml");
    std::fs::write(&path, crashing).unwrap();
    path
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: stdout:\n{}", text(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_version_leaves_its_log_and_exit_code_and_a_good_deploy_records_0_failed() {
    let Some(sandbox) = crate::e2e::sandbox(RuntimeChoice::Docker, |o| o.replicas(1)).await else {
        return;
    };
    for version in ["v1", "v2", "v3"] {
        sandbox.ensure_image(version).await.unwrap();
    }
    let config = sandbox.config_path.clone();
    assert_exit(
        &switchyard(&config, &["deploy", SERVICE, "--version", "v1"]),
        0,
    );
    let load = load(sandbox.url(), 8);
    responses_from(&load, "v1", 50).await;

    let crashed = switchyard(
        &crashing_config(&sandbox),
        &["deploy", SERVICE, "--version", "v2"],
    );
    assert_exit(&crashed, 1);
    let said = text(&crashed.stderr);
    assert!(
        said.contains("evidence kept: switchyard history --show 2"),
        "{said}"
    );

    let shown = switchyard(&config, &["history", "--show", "2"]);
    assert_exit(&shown, 0);
    let shown = text(&shown.stdout);
    assert!(shown.contains("deployment #2: web v1 -> v2"), "{shown}");
    assert!(shown.contains("outcome: failed"), "{shown}");
    assert!(shown.contains("evidence: cause unhealthy"), "{shown}");
    assert!(
        shown.contains(": exited, exit code 2, not OOM-killed"),
        "{shown}"
    );
    assert!(
        shown.contains(r#"| demo-app: invalid LATENCY_MS="soon""#),
        "{shown}"
    );
    assert!(shown.contains("wait_healthy"), "the journal: {shown}");

    let shown = json(&switchyard(
        &config,
        &["--output", "json", "history", "--show", "2"],
    ));
    assert_eq!(shown["schema"], 1, "{shown}");
    assert_eq!(shown["deployment"]["outcome"], "failed", "{shown}");
    assert!(!shown["journal"].as_array().unwrap().is_empty(), "{shown}");
    let evidence = &shown["evidence"];
    assert_eq!(evidence["cause"], "unhealthy", "{shown}");
    let replicas = evidence["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 1, "{shown}");
    assert_eq!(replicas[0]["version"], "v2");
    assert_eq!(replicas[0]["exit_code"], 2, "{shown}");
    assert_eq!(replicas[0]["oom_killed"], false, "{shown}");
    assert!(
        replicas[0]["log_tail"]
            .as_str()
            .unwrap()
            .contains(r#"invalid LATENCY_MS="soon""#),
        "{shown}"
    );
    // The crash moved no traffic.
    assert_eq!(
        shown["disruption"]["during"]["tracks"]["stable"]["failed"], 0,
        "{shown}"
    );

    let deployed = switchyard(&config, &["deploy", SERVICE, "--version", "v3"]);
    assert_exit(&deployed, 0);
    let said = text(&deployed.stdout);
    assert!(
        said.contains("requests failed at the proxy: 0 of "),
        "{said}"
    );
    responses_from(&load, "v3", 50).await;
    let report = load.stop().await;
    assert_no_failures(&report);
    assert!(!report.by_version.contains_key("v2"), "{report}");

    let history = json(&switchyard(&config, &["--output", "json", "history"]));
    let newest = &history[0];
    assert_eq!(newest["to_version"], "v3", "{history}");
    let during = &newest["disruption"]["during"]["tracks"]["stable"];
    assert_eq!(during["failed"], 0, "{history}");
    assert!(during["requests"].as_u64().unwrap() > 0, "{history}");
    let before = &newest["disruption"]["before"]["tracks"]["stable"];
    assert_eq!(before["failed"], 0, "{history}");
    let listed = switchyard(&config, &["history"]);
    assert_exit(&listed, 0);
    let listed = text(&listed.stdout);
    let row = listed
        .lines()
        .find(|l| l.contains("v1 -> v3"))
        .unwrap_or_else(|| panic!("{listed}"));
    let expected = format!(
        "0 of {} (before 0 of ",
        switchyard_app::evidence::disruption::thousands(during["requests"].as_u64().unwrap())
    );
    assert!(row.contains(&expected), "{row}");
    assert!(
        listed.lines().next().unwrap().contains("disruption"),
        "{listed}"
    );
    sandbox.shutdown().await.unwrap();
}
