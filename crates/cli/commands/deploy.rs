//! `switchyard deploy` and `switchyard rollback`. Both run through an evidence
//! [`Recorder`], which keeps the deploy's disruption at the proxy and, when it fails, what
//! its new replicas left behind (`switchyard history --show ID`).

use switchyard_app::evidence::{Kept, Recorder};
use switchyard_app::live::Live;
use switchyard_app::notify::{Notifier, Trigger, FLUSH_WITHIN};
use switchyard_app::progress::Progress;
use switchyard_app::AppError;
use switchyard_engine::deploy::{DeployError, DeployReport};

use super::{json, open, target};
use crate::{Cli, Output};

pub async fn deploy(
    cli: &Cli,
    service: &str,
    version: &str,
    strategy: Option<&str>,
) -> Result<(), AppError> {
    let (version, strategy) = target(version, strategy)?;
    let live = open(cli).await?;
    let spec = live.spec(service)?;
    live.ensure_nginx().await?;
    let progress = Progress::new(cli.output == Output::Human);
    say_routing(cli, &live);
    let notifier = Notifier::new(&live.config.notify, &progress, service, Trigger::Deploy);
    let recorder = Recorder::new(&live, &notifier);
    let deployer = recorder.deployer();
    let kind = strategy.unwrap_or(spec.strategy);
    let metrics = live.deploy_metrics(spec, kind)?;
    let result = deployer.run(spec, &version, kind, &metrics).await;
    finish(cli, &recorder, &notifier, spec, result).await
}

pub async fn rollback(cli: &Cli, service: &str) -> Result<(), AppError> {
    let live = open(cli).await?;
    let spec = live.spec(service)?;
    live.ensure_nginx().await?;
    let progress = Progress::new(cli.output == Output::Human);
    say_routing(cli, &live);
    let notifier = Notifier::new(&live.config.notify, &progress, service, Trigger::Rollback);
    let recorder = Recorder::new(&live, &notifier);
    let result = recorder.deployer().rollback(spec).await;
    finish(cli, &recorder, &notifier, spec, result).await
}

/// Keeps the deploy's evidence, lets the notifications go out (bounded), then reports: the
/// deploy's own output and what it cost at the proxy, or (on stderr, before the error) where
/// its evidence is.
async fn finish(
    cli: &Cli,
    recorder: &Recorder<'_>,
    notifier: &Notifier<'_>,
    spec: &switchyard_engine::ServiceSpec,
    result: Result<DeployReport, DeployError>,
) -> Result<(), AppError> {
    let kept = recorder.keep(spec, &result).await;
    let error = result.as_ref().err().map(|e| e.to_string());
    notifier.finish(error.as_deref(), FLUSH_WITHIN).await;
    for w in &kept.warnings {
        eprintln!("warning: evidence: {w}");
    }
    match result {
        Ok(report) => {
            print_report(cli, &report);
            if cli.output == Output::Human {
                if let Some(d) = &kept.disruption {
                    println!("requests failed at the proxy: {}", d.summary());
                }
            }
            Ok(())
        }
        Err(e) => {
            say_failure_kept(&kept);
            Err(e.into())
        }
    }
}

/// Where the evidence of a failed deploy is, before the error itself is printed.
fn say_failure_kept(kept: &Kept) {
    let (Some(id), Some(_)) = (kept.deployment, &kept.failure) else {
        return;
    };
    if let Some(d) = &kept.disruption {
        eprintln!("requests failed at the proxy: {}", d.summary());
    }
    eprintln!("evidence kept: switchyard history --show {id}");
}

/// How this deploy moves traffic, before it starts.
fn say_routing(cli: &Cli, live: &Live) {
    if cli.output == Output::Human {
        println!("routing: {}", live.router.routing_note());
    }
}

fn print_report(cli: &Cli, r: &DeployReport) {
    if json(cli, r) {
        return;
    }
    let from = r
        .from
        .as_ref()
        .map_or("nothing".to_owned(), |v| v.to_string());
    if let Some(rollout) = &r.rollout {
        println!(
            "{} {} is live ({}, was {from}): {} batch(es), {} route change(s), at most {} instance(s) running, {} ms in all",
            r.service,
            r.to,
            rollout.strategy,
            rollout.batches.len(),
            rollout.reloads,
            rollout.peak_running,
            r.total_ms
        );
        for (i, b) in rollout.batches.iter().enumerate() {
            println!(
                "  batch {}: +{} -{}, healthy after {} ms, routed {}, drained in {} ms",
                i + 1,
                b.added.len(),
                b.removed.len(),
                b.healthy_ms,
                b.confirm_ms.map_or("not needed".to_owned(), |ms| format!(
                    "confirmed in {ms} ms"
                )),
                b.drained_ms
            );
        }
        if let Some(gap) = rollout.gap_ms {
            println!("  downtime (allow_downtime = true): no replica answered for {gap} ms");
        }
        for w in &r.warnings {
            println!("warning: {w}");
        }
        return;
    }
    println!(
        "{} {} is live ({} slot, was {from}): healthy after {} ms, route change confirmed in {} ms, old traffic drained after {} ms, {} ms in all",
        r.service,
        r.to,
        r.color.as_str(),
        r.healthy_ms,
        r.reload.confirm_ms,
        r.drained.waited_ms,
        r.total_ms
    );
    for w in &r.warnings {
        println!("warning: {w}");
    }
}
