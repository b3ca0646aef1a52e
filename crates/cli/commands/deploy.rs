//! `switchyard deploy` and `switchyard rollback`.

use switchyard_app::live::Live;
use switchyard_app::notify::{Notifier, Trigger, FLUSH_WITHIN};
use switchyard_app::progress::Progress;
use switchyard_app::AppError;
use switchyard_engine::config::StrategyKind;
use switchyard_engine::deploy::DeployReport;

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
    let deployer = live.deployer(&notifier);
    let result = match strategy.unwrap_or(spec.strategy) {
        StrategyKind::BlueGreen => deployer.deploy(spec, &version).await,
        StrategyKind::Canary => {
            deployer
                .canary(spec, &version, &live.metrics(service)?)
                .await
        }
        kind @ (StrategyKind::Rolling | StrategyKind::InPlace) => {
            deployer.roll(spec, &version, kind).await
        }
    };
    let error = result.as_ref().err().map(|e| e.to_string());
    notifier.finish(error.as_deref(), FLUSH_WITHIN).await;
    let report = result?;
    print_report(cli, &report);
    Ok(())
}

pub async fn rollback(cli: &Cli, service: &str) -> Result<(), AppError> {
    let live = open(cli).await?;
    let spec = live.spec(service)?;
    live.ensure_nginx().await?;
    let progress = Progress::new(cli.output == Output::Human);
    say_routing(cli, &live);
    let notifier = Notifier::new(&live.config.notify, &progress, service, Trigger::Rollback);
    let result = live.deployer(&notifier).rollback(spec).await;
    let error = result.as_ref().err().map(|e| e.to_string());
    notifier.finish(error.as_deref(), FLUSH_WITHIN).await;
    let report = result?;
    print_report(cli, &report);
    Ok(())
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
