//! `switchyard status`: whether nginx runs; per service, whether its listen answers (a TCP
//! connect, then an HTTP request: a service is not reported as serving while nginx is dead),
//! the live version and colour, each instance with its port, runtime state and a health
//! probe, the retained versions, the deploy lock, and an interrupted deployment if there is
//! one (with what the next run will do about it).

use serde::Serialize;
use switchyard_app::live::{AnyRuntime, HttpProber, SystemHost};
use switchyard_app::serve::{ListenReport, ProxyState};
use switchyard_app::AppError;
use switchyard_engine::deploy::lock_is_stale;
use switchyard_engine::{Host, InstanceStatus, Lock, Prober, Runtime, ServiceSpec, Step, Store};
use switchyard_store::SqliteStore;

use super::proxy::listen_report;
use super::{json_list, open_lazy};
use crate::Cli;

#[derive(Serialize)]
struct ServiceStatus {
    service: String,
    listen: String,
    /// Whether the listen answers; None while nothing is deployed.
    listen_check: Option<ListenReport>,
    version: Option<String>,
    color: Option<String>,
    deployment: Option<i64>,
    instances: Vec<InstanceReport>,
    retained: Vec<String>,
    lock: Option<LockReport>,
    interrupted: Option<String>,
    canary: Option<CanaryReport>,
}

/// Where a running canary is: its step, the last check, the thresholds it is held to.
#[derive(Serialize)]
struct CanaryReport {
    deployment: i64,
    version: String,
    weight_percent: f64,
    paused: bool,
    last_check: Option<String>,
    thresholds: String,
}

#[derive(Serialize)]
struct InstanceReport {
    name: String,
    addr: String,
    /// None when the runtime could not be asked.
    state: Option<InstanceStatus>,
    health: String,
}

#[derive(Serialize)]
struct LockReport {
    #[serde(flatten)]
    lock: Lock,
    stale: bool,
}

/// What status reads from. Without a runtime (Docker unreachable) it still reports what the
/// store knows and what the health probes answer, and says that the runtime is down.
struct Sources<'a> {
    store: &'a SqliteStore,
    runtime: Option<&'a AnyRuntime>,
    prober: &'a HttpProber,
}

pub async fn run(cli: &Cli, service: Option<&str>) -> Result<(), AppError> {
    let live = open_lazy(cli)?;
    let unreachable = live.runtime.reachable().await.err();
    let sources = Sources {
        store: &live.store,
        runtime: unreachable.is_none().then_some(&live.runtime),
        prober: &live.prober,
    };
    let config = &live.config;
    let specs: Vec<&ServiceSpec> = match service {
        Some(name) => vec![config
            .service(name)
            .ok_or_else(|| AppError::input(format!("no service {name:?} in the config")))?],
        None => config.services.iter().collect(),
    };
    let proxy = ProxyState::read(&live.router, &config.proxy.mode);
    let mut all = Vec::new();
    for spec in specs {
        let mut status = service_status(&sources, spec).await?;
        status.listen_check = listen_report(&live, spec, &proxy).await?;
        all.push(status);
    }
    let down = unreachable.map(|e| format!("runtime: {e}; instance states are unknown"));
    if json_list(cli, "services", &all) {
        // stdout stays one JSON document.
        if let Some(down) = &down {
            eprintln!("{down}");
        }
        return Ok(());
    }
    if let Some(down) = &down {
        println!("{down}");
    }
    println!("{}", proxy.line());
    let routing = live.router.routing();
    println!(
        "routing: {}: {}",
        live.router.routing_note(),
        routing.client_view()
    );
    for s in &all {
        print_human(s);
    }
    Ok(())
}

async fn service_status(live: &Sources<'_>, spec: &ServiceSpec) -> Result<ServiceStatus, AppError> {
    let env = |e: switchyard_engine::StoreError| AppError::environment(e.to_string());
    let record = live.store.service(&spec.name).map_err(env)?;
    let mut instances = Vec::new();
    for instance in record.active.iter().flat_map(|s| &s.instances) {
        let state = match live.runtime {
            Some(runtime) => Some(
                runtime
                    .status(instance)
                    .await
                    .map_err(|e| AppError::environment(e.to_string()))?,
            ),
            None => None,
        };
        let probe = live
            .prober
            .probe(instance.addr(), &spec.health.path, spec.health.timeout)
            .await;
        let health = format!("{} ({} ms)", probe.summary, probe.latency.as_millis());
        instances.push(InstanceReport {
            name: instance.name.clone(),
            addr: instance.addr().to_string(),
            state,
            health,
        });
    }
    let host = SystemHost;
    let now = host.now_ms();
    let lock = live.store.lock(&spec.name).map_err(env)?.map(|lock| {
        let stale = lock_is_stale(&lock, &host, now);
        LockReport { lock, stale }
    });
    let interrupted = live.store.unfinished(&spec.name).map_err(env)?.map(|(d, journal)| {
        let last = journal.last().map_or("begin", |e| e.step.name());
        let holder_alive = lock.as_ref().is_some_and(|l| !l.stale && l.lock.deployment == Some(d.id));
        let halted = journal.iter().rev().find_map(|e| match &e.step {
            Step::Halted { reason } => Some(reason.clone()),
            _ => None,
        });
        let watching = switchyard_engine::deploy::watching_until(&journal);
        if let (true, Some(until)) = (holder_alive, watching) {
            format!(
                "deployment #{} ({} to {}) is watching {} after cutover for {}s more, the previous version kept ready: `switchyard abort {}` routes back, `switchyard promote {}` ends the watch",
                d.id,
                d.kind.as_str(),
                d.to_version,
                d.to_version,
                (until - now).max(0) / 1000,
                spec.name,
                spec.name
            )
        } else if holder_alive {
            format!("deployment #{} ({} to {}) is in progress, at step `{last}`", d.id, d.kind.as_str(), d.to_version)
        } else if let Some(reason) = halted {
            format!(
                "{} deployment #{} ({} to {}) is paused after a failed batch: {reason}",
                d.strategy,
                d.id,
                d.kind.as_str(),
                d.to_version
            )
        } else {
            format!(
                "deployment #{} ({} to {}) was interrupted after step `{last}`; the next deploy or rollback of {} finishes it first",
                d.id,
                d.kind.as_str(),
                d.to_version,
                spec.name
            )
        }
    });
    let canary = live
        .store
        .unfinished(&spec.name)
        .map_err(env)?
        .filter(|(d, _)| d.strategy == "canary")
        .map(|(d, journal)| {
            let mut report = CanaryReport {
                deployment: d.id,
                version: d.to_version.to_string(),
                weight_percent: 0.0,
                paused: false,
                last_check: None,
                thresholds: thresholds(spec),
            };
            let folded = switchyard_engine::deploy::fold::fold(d.id, &journal, &[]);
            if let Some((_, weight_bp)) = folded.confirmed.canary {
                report.weight_percent = f64::from(weight_bp) / 100.0;
            }
            for entry in &journal {
                match &entry.step {
                    Step::Serve { .. } => report.paused = false,
                    Step::Paused { .. } => report.paused = true,
                    Step::Analysis {
                        verdict, detail, ..
                    } => report.last_check = Some(format!("{verdict}: {detail}")),
                    _ => {}
                }
            }
            report
        });
    let active = record.active.as_ref();
    Ok(ServiceStatus {
        service: spec.name.to_string(),
        listen: spec.listen.to_string(),
        listen_check: None,
        version: active.map(|s| s.version.to_string()),
        color: active.map(|s| s.color.as_str().to_owned()),
        deployment: active.map(|s| s.deployment),
        instances,
        retained: record
            .retained
            .iter()
            .map(|s| {
                format!(
                    "{} ({}, deployment #{})",
                    s.version,
                    s.color.as_str(),
                    s.deployment
                )
            })
            .collect(),
        lock,
        interrupted,
        canary,
    })
}

fn thresholds(spec: &ServiceSpec) -> String {
    let p = &spec.canary.policy;
    let mut text = format!(
        "error rate at most {:.2}%, at least {} requests per {:?} window",
        p.max_error_rate * 100.0,
        p.min_requests,
        spec.canary.window
    );
    if let Some(l) = p.max_p99_latency {
        text.push_str(&format!(", p99 at most {} ms", l.as_millis()));
    }
    if let Some(m) = p.baseline_margin {
        text.push_str(&format!(", at most {:.2} points above stable", m * 100.0));
    }
    text
}

fn print_human(s: &ServiceStatus) {
    // Not "listening" while nothing answers there (nginx down, say).
    let listening = match &s.listen_check {
        Some(c) if !c.check.answering => format!("listen {} not answering", s.listen),
        _ => format!("listening on {}", s.listen),
    };
    match (&s.version, &s.color, s.deployment) {
        (Some(v), Some(c), Some(d)) => {
            println!("{}  {v} ({c})  deployment #{d}  {listening}", s.service)
        }
        _ => println!(
            "{}  nothing deployed yet  listening on {}",
            s.service, s.listen
        ),
    }
    if let Some(check) = &s.listen_check {
        println!("  {}", check.sentence);
    }
    for i in &s.instances {
        let state = match &i.state {
            Some(InstanceStatus::Running { .. }) => "running".to_owned(),
            Some(InstanceStatus::Exited { code }) => {
                format!("exited ({})", code.map_or("?".into(), |c| c.to_string()))
            }
            Some(InstanceStatus::Missing) => "missing".to_owned(),
            None => "state unknown".to_owned(),
        };
        println!("  {}  {}  {state}  health: {}", i.name, i.addr, i.health);
    }
    if !s.retained.is_empty() {
        println!("  retained for rollback: {}", s.retained.join(", "));
    }
    match &s.lock {
        None => println!("  lock: free"),
        Some(l) => println!(
            "  lock: held by pid {} on {} (deployment #{}){}",
            l.lock.pid,
            l.lock.host,
            l.lock.deployment.map_or("?".into(), |d| d.to_string()),
            if l.stale {
                " — stale: the next deploy takes it over"
            } else {
                ""
            }
        ),
    }
    if let Some(c) = &s.canary {
        let state = if c.paused {
            " (paused: `switchyard promote` to go on, `switchyard abort` to roll back)"
        } else {
            ""
        };
        println!(
            "  canary: deployment #{} {} at {}% of traffic{state}",
            c.deployment, c.version, c.weight_percent
        );
        println!(
            "    last check: {}",
            c.last_check.as_deref().unwrap_or("none yet")
        );
        println!("    thresholds: {}", c.thresholds);
    }
    if let Some(i) = &s.interrupted {
        println!("  {i}");
    }
}
