//! Evidence and disruption end to end, through the binary on a Docker sandbox: a version that
//! crashes on start (the demo app exits 2 on a bad `LATENCY_MS`) leaves its log tail, exit
//! code and OOM flag in `history --show ID`, human and JSON, while traffic stays on v1; and a
//! good deploy under a load that never re-sends records 0 failed requests at the proxy, out
//! of the requests it saw, shown by `history`. A canary failing its error-rate threshold
//! (local processes) keeps the judge's checks with the thresholds, its disruption on the
//! canary track only, and `serve` exports it as `switchyard_deploy_failed_requests`. The
//! sandbox removes its labelled instances and stops its nginx when dropped, also when a test
//! fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use std::time::Duration;

use switchyard_app::live::Live;
use switchyard_app::load::FailureKind;
use switchyard_app::sandbox::{Sandbox, SERVICE};
use switchyard_app::serve::{self, ServeOptions};
use switchyard_app::settings;
use switchyard_engine::config::RuntimeChoice;

use crate::support::{assert_exit, assert_no_failures, get, load, responses_from, text};

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
    assert!(shown.contains("\nhooks: none ran\n"), "{shown}");

    let unknown = switchyard(&config, &["history", "--show", "99"]);
    assert_exit(&unknown, 2);
    assert!(
        text(&unknown.stderr).contains("--show 99: no deployment #99 in "),
        "{}",
        text(&unknown.stderr)
    );

    let shown = json(&switchyard(
        &config,
        &["--output", "json", "history", "--show", "2"],
    ));
    assert_eq!(shown["schema"], 1, "{shown}");
    assert_eq!(shown["deployment"]["outcome"], "failed", "{shown}");
    assert!(!shown["journal"].as_array().unwrap().is_empty(), "{shown}");
    assert_eq!(shown["hooks"], serde_json::json!([]), "{shown}");
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
    let newest = &history["deployments"][0];
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

/// Short holds, so the canary is judged within seconds on 20 requests in a 3 s window.
const FAST: &str = r#"steps = [20, 50, 100]
hold = "2s"
interval = "1s"
window = "3s"
min_requests = 20
inconclusive_limit = 10"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_canary_keeps_the_judges_checks_with_thresholds_and_serve_exports_its_cost() {
    let Some(sandbox) = crate::e2e::sandbox(RuntimeChoice::Process, |mut o| {
        o.canary = FAST.to_owned();
        o.replicas(1)
            .env("FAIL_RATE", "0.3")
            .env("FAILING_VERSIONS", "v2")
    })
    .await
    else {
        return;
    };
    let config = sandbox.config_path.clone();
    assert_exit(
        &switchyard(&config, &["deploy", SERVICE, "--version", "v1"]),
        0,
    );
    let load = load(sandbox.url(), 16);
    responses_from(&load, "v1", 100).await;
    let deploy = ["deploy", SERVICE, "--version", "v2", "--strategy", "canary"];
    let failed = switchyard(&config, &deploy);
    assert_exit(&failed, 1);
    assert!(
        text(&failed.stderr).contains("evidence kept: switchyard history --show 2"),
        "{}",
        text(&failed.stderr)
    );
    responses_from(&load, "v1", load.snapshot().by_version["v1"].count + 100).await;
    let traffic = load.stop().await;
    assert_eq!(traffic.retried, 0, "nothing was re-sent: {traffic}");
    for failure in &traffic.failures {
        match &failure.kind {
            FailureKind::Status {
                code: 500,
                version: Some(v),
            } if v == "v2" => {}
            other => panic!("only the canary's own 500s may fail, not {other:?}:\n{traffic}"),
        }
    }

    let shown = json(&switchyard(
        &config,
        &["--output", "json", "history", "--show", "2"],
    ));
    let evidence = &shown["evidence"];
    assert_eq!(evidence["cause"], "threshold", "{shown}");
    let checks = evidence["checks"].as_array().unwrap();
    let fail = checks
        .iter()
        .find(|c| c["verdict"] == "fail")
        .unwrap_or_else(|| panic!("a failed check: {shown}"));
    assert!(fail["error_rate"].as_f64().unwrap() > 0.01, "{shown}");
    assert!(fail["requests"].as_f64().unwrap() >= 20.0, "{shown}");
    assert_eq!(evidence["thresholds"]["max_error_rate"], 0.01, "{shown}");
    assert_eq!(evidence["thresholds"]["min_requests"], 20.0, "{shown}");
    // Processes: no OOM flag, an exit code only once one is known.
    let replica = &evidence["replicas"][0];
    assert_eq!(replica["version"], "v2", "{shown}");
    assert_eq!(replica["oom_killed"], serde_json::Value::Null, "{shown}");
    assert!(
        replica["log_tail"]
            .as_str()
            .unwrap()
            .contains("demo-app v2 listening"),
        "{shown}"
    );
    let during = &shown["disruption"]["during"]["tracks"];
    let canary_failed = during["canary"]["failed"].as_u64().unwrap();
    assert!(canary_failed > 0, "the canary's 500s count: {shown}");
    assert_eq!(during["stable"]["failed"], 0, "{shown}");

    let human = text(&switchyard(&config, &["history", "--show", "2"]).stdout);
    assert!(
        human.contains("thresholds: error rate at most 1.00%, at least 20 requests"),
        "{human}"
    );
    assert!(human.contains("check at 20%: fail: error rate"), "{human}");
    assert!(human.contains("  canary: "), "{human}");

    let live = Live::open(settings::load(&config).unwrap()).await.unwrap();
    let options = ServeOptions {
        health_every: Duration::from_millis(200),
        ..ServeOptions::new("127.0.0.1:0".parse().unwrap())
    };
    let server = serve::start_with(live, options)
        .await
        .expect("serve starts");
    let (status, metrics) = get(server.addr(), "/metrics").await;
    assert_eq!(status, 200, "{metrics}");
    let series = format!("switchyard_deploy_failed_requests{{service=\"web\"}} {canary_failed}\n");
    assert!(metrics.contains(&series), "{series} in:\n{metrics}");
    server.shutdown().await.unwrap();
    sandbox.shutdown().await.unwrap();
}
