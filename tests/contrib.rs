//! What ships beside the binary, checked: `contrib/prometheus-alerts.yml` passes `promtool
//! check rules` and fires, in `promtool test rules`, on the series that should fire it and no
//! other; `contrib/grafana-dashboard.json` parses, its queries are valid PromQL (promtool
//! again) and every metric it or the alerts name is one that a running `serve` exports; the
//! shell completions and the man page generated from the CLI definition name the
//! subcommands; every `--output json` document, errors included, carries `"schema": 1`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use switchyard_app::live::Live;
use switchyard_app::progress::Progress;
use switchyard_app::sandbox::{Sandbox, SandboxOptions};
use switchyard_app::serve::{self, ServeOptions};
use switchyard_app::settings;
use switchyard_engine::config::RuntimeChoice;

use crate::support::{assert_exit, get, require, require_e2e, text};

const ALERTS: &str = "contrib/prometheus-alerts.yml";
const DASHBOARD: &str = "contrib/grafana-dashboard.json";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Debian's prometheus package ships promtool; under CI its absence fails.
fn require_promtool() -> Option<PathBuf> {
    let found = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    require(
        found.is_some(),
        "promtool (apt-get install prometheus, or scripts/install-deps)",
    )
    .then(|| found.unwrap())
}

fn promtool(promtool: &Path, args: &[&str], dir: &Path) -> Output {
    Command::new(promtool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// Series that fire each alert once, at a known time, and a stable track (1 % errors,
/// fast) that fires none.
const ALERT_TESTS: &str = r#"
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'switchyard_proxy_up{instance="127.0.0.1:9100", job="switchyard"}'
        values: '1 1 0 0 0 0 0 0 0 0 0'
      - series: 'switchyard_deployments_total{service="web", strategy="canary", outcome="failed"}'
        values: '0 0 0 0 0 1 1 1 1 1 1'
      - series: 'switchyard_deployments_total{service="web", strategy="rolling", outcome="failed"}'
        values: '0 0 0 0 0 0 0 0 1 1 1'
      - series: 'switchyard_deployments_total{service="web", strategy="rolling", outcome="succeeded"}'
        values: '0 1 2 3 4 5 6 7 8 9 10'
      - series: 'switchyard_proxy_requests_total{service="web", track="stable", version="v1", code="2xx"}'
        values: '0+600x10'
      - series: 'switchyard_proxy_requests_total{service="web", track="stable", version="v1", code="5xx"}'
        values: '0+6x10'
      - series: 'switchyard_proxy_requests_total{service="web", track="canary", version="v2", code="2xx"}'
        values: '0+60x10'
      - series: 'switchyard_proxy_requests_total{service="web", track="canary", version="v2", code="5xx"}'
        values: '0+6x10'
      - series: 'switchyard_proxy_request_duration_seconds_bucket{service="web", track="stable", version="v1", le="0.5"}'
        values: '0+600x10'
      - series: 'switchyard_proxy_request_duration_seconds_bucket{service="web", track="stable", version="v1", le="+Inf"}'
        values: '0+606x10'
      - series: 'switchyard_proxy_request_duration_seconds_bucket{service="web", track="canary", version="v2", le="0.5"}'
        values: '0+30x10'
      - series: 'switchyard_proxy_request_duration_seconds_bucket{service="web", track="canary", version="v2", le="2.5"}'
        values: '0+66x10'
      - series: 'switchyard_proxy_request_duration_seconds_bucket{service="web", track="canary", version="v2", le="+Inf"}'
        values: '0+66x10'
    alert_rule_test:
      - eval_time: 2m
        alertname: SwitchyardProxyDown
        exp_alerts: []
      - eval_time: 4m
        alertname: SwitchyardProxyDown
        exp_alerts:
          - exp_labels: {severity: critical, instance: "127.0.0.1:9100", job: switchyard}
            exp_annotations:
              summary: "nginx behind switchyard is down on 127.0.0.1:9100"
              description: "switchyard_proxy_up has been 0 for 1m: no service answers. `switchyard proxy status` says why; `switchyard proxy start` starts it."
      - eval_time: 4m
        alertname: SwitchyardCanaryRolledBack
        exp_alerts: []
      - eval_time: 6m
        alertname: SwitchyardCanaryRolledBack
        exp_alerts:
          - exp_labels: {severity: warning, service: web, strategy: canary, outcome: failed}
            exp_annotations:
              summary: "a canary of web was rolled back"
              description: "Traffic is back on the stable version. `switchyard history web` shows why."
      - eval_time: 6m
        alertname: SwitchyardDeployFailing
        exp_alerts: []
      - eval_time: 9m
        alertname: SwitchyardDeployFailing
        exp_alerts:
          - exp_labels: {severity: warning, service: web, strategy: rolling, outcome: failed}
            exp_annotations:
              summary: "a rolling deploy of web failed"
              description: "Traffic stayed on (or went back to) the previous version. `switchyard history web` shows why."
      - eval_time: 10m
        alertname: SwitchyardTrackErrorRateHigh
        exp_alerts:
          - exp_labels: {severity: critical, service: web, track: canary}
            exp_annotations:
              summary: "web canary: 9.091% of requests fail"
              description: "More than 5 % of the canary track's requests got a 5xx at nginx for 2m."
      - eval_time: 10m
        alertname: SwitchyardP99LatencyHigh
        exp_alerts:
          - exp_labels: {severity: warning, service: web, track: canary}
            exp_annotations:
              summary: "web canary: p99 latency 2.463s"
              description: "The 99th percentile of request time at nginx has been over 1 s for 5m."
"#;

#[test]
fn promtool_accepts_the_alert_rules_and_they_fire_on_the_right_series_only() {
    let Some(promtool_bin) = require_promtool() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let alerts = repo(ALERTS);
    let checked = promtool(
        &promtool_bin,
        &["check", "rules", alerts.to_str().unwrap()],
        dir.path(),
    );
    assert_exit(&checked, 0);
    assert!(
        text(&checked.stdout).contains("SUCCESS: 5 rules found"),
        "{}",
        text(&checked.stdout)
    );

    let tests = format!("rule_files:\n  - {}\n{ALERT_TESTS}", alerts.display());
    std::fs::write(dir.path().join("alerts.test.yml"), tests).unwrap();
    let tested = promtool(
        &promtool_bin,
        &["test", "rules", "alerts.test.yml"],
        dir.path(),
    );
    assert_exit(&tested, 0);

    // promtool does refuse a broken rule: the checks above can fail.
    let broken = "groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: rate(\n";
    std::fs::write(dir.path().join("broken.yml"), broken).unwrap();
    let refused = promtool(&promtool_bin, &["check", "rules", "broken.yml"], dir.path());
    assert_ne!(refused.status.code(), Some(0), "{}", text(&refused.stdout));
}

/// Every PromQL expression of the dashboard (panels and the service variable's query).
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    let mut queries: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().expect("targets").clone())
        .map(|t| t["expr"].as_str().expect("an expr").to_owned())
        .collect();
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = variable["query"]["query"].as_str() {
            queries.push(q.to_owned());
        }
    }
    queries
}

/// `switchyard_…` names in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("switchyard_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// The metric families a scrape declares (`# TYPE name kind`), with the series names of
/// each histogram.
fn exported(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        names.insert(name.to_owned());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

/// The dashboard's queries as recording rules, so that promtool parses their PromQL.
fn as_rules(queries: &[String]) -> String {
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        let q = q
            .replace("$__rate_interval", "5m")
            .replace("$__range", "1h")
            .replace("$service", ".*");
        let q = match q.strip_prefix("label_values(") {
            // A Grafana function, not PromQL: the metric it reads.
            Some(inner) => inner.split(',').next().unwrap().to_owned(),
            None => q,
        };
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(&q).unwrap()
        ));
    }
    rules
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_parses_and_queries_only_series_a_running_serve_exports() {
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(repo(DASHBOARD)).unwrap())
        .expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "switchyard");
    let queries = dashboard_queries(&dashboard);
    let queried = metric_names(&queries.join("\n"));
    for needed in [
        "switchyard_proxy_requests_total",
        "switchyard_proxy_request_duration_seconds_bucket",
        "switchyard_traffic_weight",
        "switchyard_deployments_total",
        "switchyard_rollbacks_total",
        "switchyard_proxy_up",
    ] {
        assert!(queried.contains(needed), "the dashboard shows {needed}");
    }
    let by_track = |q: &&String| q.contains("by (service, track");
    assert!(
        queries.iter().filter(by_track).count() >= 3,
        "rate, error rate and p99 per service and track: {queries:?}"
    );

    let Some(promtool_bin) = require_promtool() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard.yml"), as_rules(&queries)).unwrap();
    let parsed = promtool(
        &promtool_bin,
        &["check", "rules", "dashboard.yml"],
        dir.path(),
    );
    assert_exit(&parsed, 0);

    // What a running serve exports, after one deploy.
    let Some(app) = require_e2e(RuntimeChoice::Process).await else {
        return;
    };
    let sandbox = Sandbox::start(&SandboxOptions::new(RuntimeChoice::Process, app))
        .await
        .expect("sandbox starts");
    sandbox
        .deploy("v1", &Progress::new(false))
        .await
        .expect("v1 deploys");
    let live = Live::open(settings::load(&sandbox.config_path).unwrap())
        .await
        .unwrap();
    let options = ServeOptions {
        health_every: Duration::from_millis(200),
        ..ServeOptions::new("127.0.0.1:0".parse().unwrap())
    };
    let server = serve::start_with(live, options)
        .await
        .expect("serve starts");
    let (status, scrape) = get(server.addr(), "/metrics").await;
    assert_eq!(status, 200, "{scrape}");
    server.shutdown().await.unwrap();
    let exported = exported(&scrape);
    let alerts = std::fs::read_to_string(repo(ALERTS)).unwrap();
    for name in queried.iter().chain(&metric_names(&alerts)) {
        assert!(
            exported.contains(name),
            "{name} is queried but serve exports only {exported:?}"
        );
    }
    sandbox.shutdown().await.unwrap();
}

fn switchyard(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .current_dir(dir)
        .env_remove("SWITCHYARD_CONFIG")
        .output()
        .unwrap()
}

const SUBCOMMANDS: [&str; 10] = [
    "deploy",
    "rollback",
    "promote",
    "abort",
    "serve",
    "status",
    "history",
    "plan",
    "completions",
    "man",
];

#[test]
fn completions_and_the_man_page_are_generated_from_the_cli_definition() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = switchyard(&["completions", shell], dir.path());
        assert_exit(&out, 0);
        let script = text(&out.stdout);
        for sub in SUBCOMMANDS {
            assert!(script.contains(sub), "{shell} completes {sub}:\n{script}");
        }
        assert!(
            script.contains("config"),
            "{shell} completes --config: {script}"
        );
    }
    // The bash script is valid bash.
    let bash = switchyard(&["completions", "bash"], dir.path());
    let path = dir.path().join("switchyard.bash");
    std::fs::write(&path, &bash.stdout).unwrap();
    let checked = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert_exit(&checked, 0);
    let unknown = switchyard(&["completions", "tcsh"], dir.path());
    assert_exit(&unknown, 2);

    let man = switchyard(&["man"], dir.path());
    assert_exit(&man, 0);
    let page = text(&man.stdout);
    assert!(page.contains(".TH switchyard 1"), "{page}");
    assert!(page.contains(".SH SUBCOMMANDS"), "{page}");
    for sub in SUBCOMMANDS {
        assert!(
            page.contains(&format!("switchyard\\-{sub}(1)")),
            "the man page lists {sub}:\n{page}"
        );
    }
}

/// One JSON document on stdout.
fn document(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("one JSON document ({e}):\n{}", text(&out.stdout)))
}

#[test]
fn every_json_output_is_one_object_with_a_schema_errors_included() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[proxy]\nprefix = \"nginx\"\ncontrol = \"127.0.0.1:1\"\nrouting = \"reload\"\n\
                  [runtime]\nkind = \"process\"\n[[service]]\nname = \"web\"\n\
                  listen = \"127.0.0.1:2\"\ncommand = [\"/bin/true\"]\nport = 8080\n";
    std::fs::write(dir.path().join("switchyard.toml"), config).unwrap();

    let history = switchyard(&["--output", "json", "history"], dir.path());
    assert_exit(&history, 0);
    let history = document(&history);
    assert_eq!(history["schema"], 1, "{history}");
    assert_eq!(history["deployments"], serde_json::json!([]), "{history}");

    let valid = switchyard(&["--output", "json", "validate"], dir.path());
    assert_exit(&valid, 0);
    let valid = document(&valid);
    assert_eq!(valid["schema"], 1, "{valid}");
    assert_eq!(valid["services"], serde_json::json!(["web"]), "{valid}");

    // Errors: bad input (exit 2) and a config that does not parse, as one object each,
    // the human line still on stderr.
    let missing = switchyard(
        &["--output", "json", "--config", "nope.toml", "status"],
        dir.path(),
    );
    assert_exit(&missing, 2);
    let error = document(&missing);
    assert_eq!(error["schema"], 1, "{error}");
    assert_eq!(error["error"]["code"], 2, "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nope.toml"),
        "{error}"
    );
    assert!(text(&missing.stderr).starts_with("error: "));
    std::fs::write(dir.path().join("bad.toml"), "[proxy]\nprefix = 3\n").unwrap();
    let bad = switchyard(
        &[
            "--output",
            "json",
            "--config",
            "bad.toml",
            "deploy",
            "web",
            "--version",
            "v2",
        ],
        dir.path(),
    );
    assert_exit(&bad, 2);
    let error = document(&bad);
    assert_eq!(error["schema"], 1, "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bad.toml:2:"),
        "{error}"
    );
    // The human output is unchanged.
    let human = switchyard(&["history"], dir.path());
    assert_exit(&human, 0);
    assert!(!text(&human.stdout).contains("schema"));
}
