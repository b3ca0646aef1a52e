//! `[[notify]]` webhooks: a test HTTP server (axum on 127.0.0.1:0) receives what a deploy
//! sends. The event mapping is checked on event sequences alone; the deliveries end to end
//! on a process-runtime sandbox (real nginx) under a load that never re-sends: started and
//! succeeded for a good deploy (through two refused attempts), started and failed for a
//! version that never gets healthy, Slack's `{"text"}` body, and a deploy of the binary whose
//! webhooks are unreachable or never answer: it succeeds with 0 failed requests, logs the
//! host only, and has delivered what it could before it exits (to an https webhook too,
//! trusted through `SSL_CERT_FILE`); so does its rollback.

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{StatusCode, Uri};
use serde_json::Value;
use switchyard_app::notify::{Notifier, Tally, Trigger};
use switchyard_app::progress::Progress;
use switchyard_app::sandbox::{Sandbox, SandboxOptions};
use switchyard_engine::config::RuntimeChoice;
use switchyard_engine::judge::Verdict;
use switchyard_engine::{Color, Event, Outcome};

use crate::support::tls::TestCa;
use crate::support::{
    assert_exit, assert_no_failures, free_port, require_e2e, responses_from, text,
};

/// What the test webhook server received: (path, JSON body), in arrival order.
#[derive(Clone, Default)]
struct Received {
    bodies: Arc<Mutex<Vec<(String, Value)>>>,
    /// Requests to refuse (503) before accepting any.
    refuse: Arc<AtomicUsize>,
    attempts: Arc<AtomicUsize>,
}

impl Received {
    fn on(&self, path: &str) -> Vec<Value> {
        let bodies = self.bodies.lock().unwrap();
        bodies
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// `(event, to)` of each JSON notification on `path`.
    fn events(&self, path: &str) -> Vec<(String, String)> {
        self.on(path)
            .iter()
            .map(|b| {
                (
                    b["event"].as_str().unwrap_or("?").to_owned(),
                    b["to"].as_str().unwrap_or("?").to_owned(),
                )
            })
            .collect()
    }
}

/// A webhook server on 127.0.0.1:0 answering 204 (after `refuse` refusals); stops with the
/// test's runtime.
async fn webhook(refuse: usize) -> (SocketAddr, Received) {
    webhook_on(refuse, None).await
}

/// [`webhook`], over TLS with `tls`'s certificate when given.
async fn webhook_on(refuse: usize, tls: Option<&TestCa>) -> (SocketAddr, Received) {
    let received = Received::default();
    received.refuse.store(refuse, Ordering::SeqCst);
    let state = received.clone();
    let app = axum::Router::new().fallback(move |uri: Uri, body: Bytes| {
        let state = state.clone();
        async move {
            state.attempts.fetch_add(1, Ordering::SeqCst);
            let refused = state
                .refuse
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if refused {
                return StatusCode::SERVICE_UNAVAILABLE;
            }
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            state
                .bodies
                .lock()
                .unwrap()
                .push((uri.path().to_owned(), body));
            StatusCode::NO_CONTENT
        }
    });
    if let Some(ca) = tls {
        let (addr, _) = crate::support::tls::serve_tls(ca, app).await;
        return (addr, received);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, received)
}

/// A listener that accepts connections and never answers: a webhook that hangs.
async fn black_hole() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

fn notify_table(url: &str, keys: &str) -> String {
    format!("\n[[notify]]\nurl = \"{url}\"\n{keys}\n")
}

async fn sandbox(tables: String, env: &[(&str, &str)]) -> Option<Sandbox> {
    let app = require_e2e(RuntimeChoice::Process).await?;
    let mut options = SandboxOptions::new(RuntimeChoice::Process, app)
        .replicas(2)
        .env("LATENCY_MS", "2");
    options.health =
        r#"path = "/health", interval = "100ms", healthy_after = 2, deadline = "3s""#.into();
    for (k, v) in env {
        options = options.env(k, v);
    }
    options.tables = tables;
    Some(Sandbox::start(&options).await.expect("sandbox starts"))
}

fn begin(to: &str) -> Event {
    Event::Begin {
        deployment: 7,
        service: "web".into(),
        from: Some("v1".into()),
        to: to.into(),
        color: Color::Green,
    }
}

fn done(outcome: Outcome) -> Event {
    Event::Done {
        deployment: 7,
        outcome,
        message: "why".into(),
    }
}

fn reloaded() -> Event {
    Event::Reloaded {
        generation: 2,
        confirm_ms: 1,
    }
}

fn mapped(trigger: Trigger, events: &[Event]) -> Vec<&'static str> {
    let mut tally = Tally::new("web", trigger);
    events
        .iter()
        .flat_map(|e| tally.event(e))
        .map(|n| n.event.as_str())
        .collect()
}

#[test]
fn engine_events_map_to_started_promoted_rolled_back_failed_and_succeeded() {
    let shifted = Event::Shifted {
        weight_bp: 500,
        generation: 2,
        confirm_ms: 1,
    };
    let rolled_back = Event::RolledBack {
        generation: 3,
        reason: "error rate".into(),
    };
    let analysis = Event::Analysis {
        weight_bp: 500,
        verdict: Verdict::Pass("ok".into()),
        measurement: Default::default(),
    };
    let blue_green = [begin("v2"), reloaded(), done(Outcome::Succeeded)];
    assert_eq!(
        mapped(Trigger::Deploy, &blue_green),
        ["started", "succeeded"]
    );
    let unhealthy = [begin("v2"), done(Outcome::Failed)];
    assert_eq!(mapped(Trigger::Deploy, &unhealthy), ["started", "failed"]);
    let promoted = [
        begin("v2"),
        shifted.clone(),
        analysis,
        reloaded(),
        done(Outcome::Succeeded),
    ];
    assert_eq!(
        mapped(Trigger::Deploy, &promoted),
        ["started", "promoted", "succeeded"]
    );
    // A canary routed back says so once, then fails.
    let canary_back = [
        begin("v2"),
        shifted,
        reloaded(),
        rolled_back,
        done(Outcome::Failed),
    ];
    assert_eq!(
        mapped(Trigger::Deploy, &canary_back),
        ["started", "rolled_back", "failed"]
    );
    // A rolling deploy that moved traffic and failed restored the old version.
    let restored = [begin("v2"), reloaded(), done(Outcome::Failed)];
    assert_eq!(
        mapped(Trigger::Deploy, &restored),
        ["started", "rolled_back", "failed"]
    );
    let manual = [begin("v1"), reloaded(), done(Outcome::Succeeded)];
    assert_eq!(
        mapped(Trigger::Rollback, &manual),
        ["started", "rolled_back", "succeeded"]
    );

    // An error before the deployment finished: failed, once; none before it began.
    let mut tally = Tally::new("web", Trigger::Deploy);
    assert!(tally.unfinished("docker went away").is_empty());
    tally.event(&begin("v2"));
    let failed = tally.unfinished("docker went away");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].event.as_str(), "failed");
    assert_eq!(failed[0].message, "docker went away");
    assert!(tally.unfinished("again").is_empty());
    let mut finished = Tally::new("web", Trigger::Deploy);
    finished.event(&begin("v2"));
    finished.event(&done(Outcome::Failed));
    assert!(finished.unfinished("after done").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_deploy_notifies_started_and_succeeded_through_refusals_and_slack_gets_text() {
    // The JSON webhook refuses its first two attempts: the third delivers, in order.
    let (addr, received) = webhook(2).await;
    let tables = notify_table(&format!("http://{addr}/json"), "")
        + &notify_table(
            &format!("http://{addr}/slack"),
            "events = [\"succeeded\"]\nformat = \"slack\"",
        );
    let Some(sandbox) = sandbox(tables, &[]).await else {
        return;
    };
    let progress = Progress::new(false);
    let targets = sandbox.live().config.notify.clone();
    let notifier = Notifier::new(&targets, &progress, "web", Trigger::Deploy);
    sandbox.deploy("v1", &notifier).await.expect("v1 deploys");
    let load = crate::support::load(sandbox.url(), 8);
    responses_from(&load, "v1", 100).await;
    sandbox.deploy("v2", &notifier).await.expect("v2 deploys");
    responses_from(&load, "v2", 100).await;
    notifier.finish(None, Duration::from_secs(5)).await;
    let report = load.stop().await;
    assert_no_failures(&report);

    // finish() returned: everything is delivered, no waiting here.
    let expected: Vec<(String, String)> = [
        ("started", "v1"),
        ("succeeded", "v1"),
        ("started", "v2"),
        ("succeeded", "v2"),
    ]
    .iter()
    .map(|(e, v)| (e.to_string(), v.to_string()))
    .collect();
    assert_eq!(received.events("/json"), expected);
    let last = &received.on("/json")[3];
    assert_eq!(
        (&last["service"], &last["from"], &last["kind"]),
        (
            &Value::from("web"),
            &Value::from("v1"),
            &Value::from("deploy")
        ),
        "{last}"
    );
    assert!(last["deployment"].as_u64().is_some(), "{last}");
    let slack = received.on("/slack");
    assert_eq!(slack.len(), 2, "{slack:?}");
    let text = slack[1]["text"].as_str().expect("a text field");
    assert!(text.contains("web v1 -> v2 succeeded"), "{text}");
    assert_eq!(slack[1].as_object().unwrap().len(), 1, "only text: {text}");
    // 2 refused + 4 JSON + 2 Slack.
    assert_eq!(received.attempts.load(Ordering::SeqCst), 8);
    drop(notifier);
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_never_gets_healthy_notifies_started_and_failed() {
    let (addr, received) = webhook(0).await;
    let tables = notify_table(&format!("http://{addr}/hook"), "");
    let Some(sandbox) = sandbox(tables, &[("UNHEALTHY_VERSIONS", "v2")]).await else {
        return;
    };
    let progress = Progress::new(false);
    sandbox.deploy("v1", &progress).await.expect("v1 deploys");
    let load = crate::support::load(sandbox.url(), 8);
    responses_from(&load, "v1", 100).await;
    let targets = sandbox.live().config.notify.clone();
    let notifier = Notifier::new(&targets, &progress, "web", Trigger::Deploy);
    let err = sandbox
        .deploy("v2", &notifier)
        .await
        .expect_err("v2 never gets healthy");
    notifier
        .finish(Some(&err.message), Duration::from_secs(5))
        .await;
    let report = load.stop().await;
    assert_no_failures(&report);
    assert!(!report.by_version.contains_key("v2"), "{report}");
    assert_eq!(
        received.events("/hook"),
        [
            ("started".to_owned(), "v2".to_owned()),
            ("failed".to_owned(), "v2".to_owned())
        ]
    );
    let failed = &received.on("/hook")[1];
    assert!(
        !failed["message"].as_str().unwrap_or("").is_empty(),
        "{failed}"
    );
    drop(notifier);
    sandbox.shutdown().await.unwrap();
}

/// The binary on the sandbox's config, trusting the CAs in `ca_file` (`SSL_CERT_FILE`).
fn switchyard(sandbox: &Sandbox, args: &[&str], ca_file: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--config")
        .arg(&sandbox.config_path)
        .args(args)
        .env("SSL_CERT_FILE", ca_file)
        // Undelivered notifications are logged by default.
        .env_remove("SWITCHYARD_LOG")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_webhooks_fail_no_deploy_and_no_request_and_the_cli_delivers_before_exit() {
    let Some(ca) = TestCa::new() else {
        return;
    };
    let (addr, received) = webhook(0).await;
    // An https one too, which the binary trusts through SSL_CERT_FILE (the in-process v1
    // deploy does not: its notifications there fail on the certificate).
    let (tls_addr, over_tls) = webhook_on(0, Some(&ca)).await;
    let dead = free_port();
    let hangs = black_hole().await;
    let tables = notify_table(&format!("http://127.0.0.1:{dead}/T0KEN-SECRET"), "")
        + &notify_table(
            &format!("http://{hangs}/T0KEN-SECRET"),
            "timeout = \"200ms\"",
        )
        + &notify_table(&format!("http://{addr}/hook"), "")
        + &notify_table(&format!("https://{tls_addr}/tls"), "");
    let Some(sandbox) = sandbox(tables, &[]).await else {
        return;
    };
    sandbox
        .deploy("v1", &Progress::new(false))
        .await
        .expect("v1 deploys");
    let load = crate::support::load(sandbox.url(), 8);
    responses_from(&load, "v1", 100).await;

    let started = Instant::now();
    let out = switchyard(&sandbox, &["deploy", "web", "--version", "v2"], &ca.ca);
    let took = started.elapsed();
    assert_exit(&out, 0);
    // Delivered before the process exited: no waiting here.
    assert_eq!(
        received.events("/hook"),
        [
            ("started".to_owned(), "v2".to_owned()),
            ("succeeded".to_owned(), "v2".to_owned())
        ]
    );
    responses_from(&load, "v2", 100).await;
    // `switchyard rollback` is a rollback that succeeded.
    let back = switchyard(&sandbox, &["rollback", "web"], &ca.ca);
    assert_exit(&back, 0);
    let rollback: Vec<(String, String)> = received.events("/hook")[2..].to_vec();
    let expected: Vec<(String, String)> = ["started", "rolled_back", "succeeded"]
        .iter()
        .map(|e| (e.to_string(), "v1".to_owned()))
        .collect();
    assert_eq!(rollback, expected);
    assert_eq!(received.on("/hook")[2]["kind"], "rollback");
    // The https webhook heard the binary's deploy and rollback alike.
    assert_eq!(over_tls.events("/tls"), received.events("/hook"));
    responses_from(&load, "v1", 200).await;
    let report = load.stop().await;
    assert_no_failures(&report);

    // Each failed attempt is logged with the host, never the URL's path or the body.
    let stderr = text(&out.stderr);
    assert!(stderr.contains("notification not delivered"), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{dead}")), "{stderr}");
    assert!(stderr.contains(&hangs.to_string()), "{stderr}");
    assert!(stderr.contains("attempt=3"), "{stderr}");
    assert!(!stderr.contains("T0KEN"), "{stderr}");
    assert!(!text(&out.stdout).contains("T0KEN"));
    // The wait for the hanging webhook is bounded (2 notifications × 3 tries of 200 ms
    // and the backoff, within the CLI's 5 s).
    assert!(took < Duration::from_secs(20), "took {took:?}");
    sandbox.shutdown().await.unwrap();
}

/// Short holds so a canary takes seconds: the judge needs 20 requests in a 3 s window.
const FAST_CANARY: &str = r#"steps = [20, 100]
hold = "2s"
interval = "1s"
window = "3s"
min_requests = 20
inconclusive_limit = 10"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_canary_notifies_started_promoted_and_succeeded() {
    let (addr, received) = webhook(0).await;
    let tables = notify_table(&format!("http://{addr}/hook"), "");
    let Some(sandbox) = crate::e2e::sandbox(RuntimeChoice::Process, |mut o| {
        o.canary = FAST_CANARY.to_owned();
        o.tables = tables;
        o
    })
    .await
    else {
        return;
    };
    sandbox
        .deploy("v1", &Progress::new(false))
        .await
        .expect("v1 deploys");
    let load = crate::support::load(sandbox.url(), 8);
    responses_from(&load, "v1", 100).await;
    let progress = Progress::new(false);
    let targets = sandbox.live().config.notify.clone();
    let notifier = Notifier::new(&targets, &progress, "web", Trigger::Deploy);
    sandbox
        .deploy_canary("v2", &notifier)
        .await
        .expect("v2 is promoted");
    notifier.finish(None, Duration::from_secs(5)).await;
    responses_from(&load, "v2", 100).await;
    let report = load.stop().await;
    assert_no_failures(&report);
    let events: Vec<String> = received
        .events("/hook")
        .into_iter()
        .filter(|(_, to)| to == "v2")
        .map(|(e, _)| e)
        .collect();
    assert_eq!(events, ["started", "promoted", "succeeded"]);
    drop(notifier);
    sandbox.shutdown().await.unwrap();
}
