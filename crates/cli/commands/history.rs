//! `switchyard history`: past deployments, newest first, each with what it cost at the proxy
//! (`disruption`); `--show ID` prints one deployment with its journal, the hooks it ran with
//! their output, and its evidence.

use serde::Serialize;
use switchyard_app::evidence::{hooks, Disruption, FailureEvidence, HookEvidence, ReplicaEvidence};
use switchyard_app::AppError;
use switchyard_engine::{DeploymentId, DeploymentRecord, JournalEntry, Name, Store};
use switchyard_store::SqliteStore;

use super::{json, json_list, open_lazy, timestamp};
use crate::Cli;

/// The format of `history --show ID --output json`.
const SHOW_SCHEMA: u32 = 1;

/// One row of the list: the deployment and its disruption, if one was measured.
#[derive(Serialize)]
struct Row {
    #[serde(flatten)]
    record: DeploymentRecord,
    disruption: Option<serde_json::Value>,
}

/// `history --show ID`.
#[derive(Serialize)]
struct Shown {
    schema: u32,
    deployment: DeploymentRecord,
    journal: Vec<JournalEntry>,
    /// The hooks it ran, from the journal.
    hooks: Vec<HookEvidence>,
    disruption: Option<serde_json::Value>,
    evidence: Option<serde_json::Value>,
}

pub async fn run(
    cli: &Cli,
    service: Option<&str>,
    limit: usize,
    show: Option<DeploymentId>,
) -> Result<(), AppError> {
    let live = open_lazy(cli)?;
    if let Some(id) = show {
        return show_one(cli, &live.store, id);
    }
    let name = service
        .map(|s| live.spec(s).map(|spec| spec.name.clone()))
        .transpose()?;
    let history = live
        .store
        .history(name.as_ref().map(|n: &Name| n), limit)
        .map_err(store_error)?;
    let mut rows = Vec::with_capacity(history.len());
    for record in history {
        let kept = live.store.evidence(record.id).map_err(store_error)?;
        let disruption = kept.and_then(|k| k.disruption);
        rows.push(Row { record, disruption });
    }
    if json_list(cli, "deployments", &rows) {
        return Ok(());
    }
    println!(
        "{:>4}  {:<10} {:<8} {:<22} {:<10} {:<20} {:>8}  {:<32} {:<24} message",
        "id", "service", "kind", "from -> to", "outcome", "started", "took", "disruption", "who"
    );
    for Row {
        record: d,
        disruption,
    } in rows
    {
        let from = d
            .from_version
            .as_ref()
            .map_or("-".to_owned(), |v| v.to_string());
        let took = d.finished_ms.map_or("-".to_owned(), |f| {
            format!("{:.1}s", (f - d.started_ms) as f64 / 1000.0)
        });
        let message: String = d
            .message
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(100)
            .collect();
        println!(
            "{:>4}  {:<10} {:<8} {:<22} {:<10} {:<20} {:>8}  {:<32} {:<24} {message}",
            d.id,
            d.service.as_str(),
            d.kind.as_str(),
            format!("{from} -> {}", d.to_version),
            d.outcome.as_str(),
            timestamp(d.started_ms),
            took,
            disruption_text(disruption.as_ref()),
            d.who
        );
    }
    Ok(())
}

fn store_error(e: switchyard_engine::StoreError) -> AppError {
    AppError::environment(e.to_string())
}

/// `0 of 5,123 (before 0 of 4,980)`, `-` where none was measured.
fn disruption_text(value: Option<&serde_json::Value>) -> String {
    match value.map(|v| serde_json::from_value::<Disruption>(v.clone())) {
        None => "-".to_owned(),
        Some(Ok(d)) => d.summary(),
        Some(Err(_)) => "? (written by a newer switchyard)".to_owned(),
    }
}

fn show_one(cli: &Cli, store: &SqliteStore, id: DeploymentId) -> Result<(), AppError> {
    let Some((deployment, journal)) = store.deployment(id).map_err(store_error)? else {
        return Err(AppError::input(format!(
            "--show {id}: no deployment #{id} in {}",
            store.path()
        )));
    };
    let kept = store.evidence(id).map_err(store_error)?;
    let (disruption, evidence) = kept.map_or((None, None), |k| (k.disruption, k.failure));
    let shown = Shown {
        schema: SHOW_SCHEMA,
        deployment,
        hooks: hooks::ran(&journal),
        journal,
        disruption,
        evidence,
    };
    if json(cli, &shown) {
        return Ok(());
    }
    print_shown(&shown);
    Ok(())
}

fn print_shown(s: &Shown) {
    let d = &s.deployment;
    let from = d
        .from_version
        .as_ref()
        .map_or("nothing".to_owned(), |v| v.to_string());
    println!(
        "deployment #{}: {} {from} -> {} ({}, {}, {} slot)",
        d.id,
        d.service,
        d.to_version,
        d.kind.as_str(),
        d.strategy,
        d.color.as_str()
    );
    let took = d.finished_ms.map_or("still running".to_owned(), |f| {
        format!("after {:.1}s", (f - d.started_ms) as f64 / 1000.0)
    });
    println!("started {} by {}", timestamp(d.started_ms), d.who);
    println!("outcome: {} {took}: {}", d.outcome.as_str(), d.message);
    print_disruption(s.disruption.as_ref());
    println!("journal:");
    for e in &s.journal {
        let mut step = serde_json::to_value(&e.step).unwrap_or_default();
        if let Some(map) = step.as_object_mut() {
            map.remove("step");
            // Printed under `hooks:`.
            map.remove("output");
        }
        let detail = match &step {
            serde_json::Value::Object(map) if map.is_empty() => String::new(),
            other => other.to_string(),
        };
        println!(
            "  {:>3}  +{:>7.3}s  {:<16} {detail}",
            e.seq,
            (e.at_ms - d.started_ms) as f64 / 1000.0,
            e.step.name()
        );
    }
    print_hooks(&s.hooks, d.started_ms);
    match s.evidence.as_ref() {
        None => println!("evidence: none kept (it is kept for failed deployments)"),
        Some(value) => match serde_json::from_value::<FailureEvidence>(value.clone()) {
            Ok(evidence) => print_evidence(&evidence),
            Err(_) => println!("evidence: written by a newer switchyard; see --output json"),
        },
    }
}

fn print_hooks(hooks: &[HookEvidence], started_ms: i64) {
    if hooks.is_empty() {
        println!("hooks: none ran");
        return;
    }
    println!("hooks:");
    for h in hooks {
        let took = h.took_ms.map_or(String::new(), |ms| {
            format!(", took {:.1}s", ms as f64 / 1000.0)
        });
        println!(
            "  {} at +{:.3}s{took}: {}: {}",
            h.hook,
            (h.at_ms - started_ms) as f64 / 1000.0,
            if h.ok { "ok" } else { "FAILED" },
            h.summary
        );
        for line in h.output.lines() {
            println!("      | {line}");
        }
    }
}

fn print_disruption(value: Option<&serde_json::Value>) {
    let Some(value) = value else {
        println!("disruption: not measured");
        return;
    };
    let Ok(d) = serde_json::from_value::<Disruption>(value.clone()) else {
        println!("disruption: written by a newer switchyard; see --output json");
        return;
    };
    println!(
        "disruption: {} requests failed at the proxy (before: {})",
        d.during.total().text(),
        d.before.total().text()
    );
    let tracks: std::collections::BTreeSet<&String> = d
        .during
        .tracks
        .keys()
        .chain(d.before.tracks.keys())
        .collect();
    for track in tracks {
        let during = d.during.tracks.get(track).copied().unwrap_or_default();
        let before = d.before.tracks.get(track).copied().unwrap_or_default();
        println!("  {track}: {} (before {})", during.text(), before.text());
    }
    if !d.complete {
        println!("  (the access log was longer than what was read: early requests may be missing)");
    }
}

fn print_replica(r: &ReplicaEvidence) {
    let code = r.exit_code.map_or("none".to_owned(), |c| c.to_string());
    let oom = match r.oom_killed {
        Some(true) => "OOM-killed",
        Some(false) => "not OOM-killed",
        None => "OOM unknown",
    };
    let restarts = match r.restarts {
        Some(n) if n > 0 => format!(", restarted {n} time(s) by Docker"),
        _ => String::new(),
    };
    println!(
        "  replica {} ({}, {}): {}, exit code {code}, {oom}{restarts}",
        r.name, r.version, r.addr, r.state
    );
    if let Some(error) = &r.runtime_error {
        println!("    runtime: {error}");
    }
    if let Some(last) = &r.last_health {
        let passes = r.health_passes.map_or(String::new(), |(p, n)| {
            format!(" ({p} of {n} passes in a row)")
        });
        println!("    last health response: {last}{passes}");
    }
    if r.log_tail.trim().is_empty() {
        println!("    log: empty");
        return;
    }
    println!("    log tail:");
    for line in r.log_tail.lines() {
        println!("      | {line}");
    }
}

fn print_evidence(e: &FailureEvidence) {
    println!(
        "evidence: cause {}",
        e.cause.as_deref().unwrap_or("not recorded")
    );
    e.replicas.iter().for_each(print_replica);
    if !e.nginx_errors.is_empty() {
        println!("  nginx error log during the deploy:");
        for line in &e.nginx_errors {
            println!("      | {line}");
        }
    }
    for c in &e.checks {
        let rate = c
            .error_rate
            .map_or("no data".to_owned(), |r| format!("{:.2}%", r * 100.0));
        println!(
            "  check at {}%: {}: {} (requests {}, error rate {rate})",
            c.weight_percent,
            c.verdict,
            c.reason,
            c.requests.map_or("none".to_owned(), |r| format!("{r:.0}"))
        );
    }
    if let Some(t) = &e.thresholds {
        let p99 = t.max_p99_latency_s.map_or(String::new(), |s| {
            format!(", p99 at most {:.0} ms", s * 1000.0)
        });
        println!(
            "  thresholds: error rate at most {:.2}%, at least {:.0} requests{p99}",
            t.max_error_rate * 100.0,
            t.min_requests
        );
    }
}
