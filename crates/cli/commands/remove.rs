//! `switchyard remove`: a service out of nginx, then every replica of it stopped and removed
//! (retained ones too); its history stays.

use std::time::Duration;

use switchyard_app::progress::Progress;
use switchyard_app::AppError;
use switchyard_engine::Name;

use super::{json, open_lazy};
use crate::{Cli, Output};

pub async fn run(cli: &Cli, service: &str) -> Result<(), AppError> {
    let name = Name::parse(service).map_err(|e| AppError::input(format!("service: {e}")))?;
    let live = open_lazy(cli)?;
    live.runtime
        .reachable()
        .await
        .map_err(|e| AppError::environment(e.to_string()))?;
    live.ensure_nginx().await?;
    // The service may already be gone from the config: the defaults then.
    let (drain, stop) = live
        .config
        .service(service)
        .map_or((Duration::from_secs(30), Duration::from_secs(10)), |s| {
            (s.drain_timeout, s.stop_timeout)
        });
    let progress = Progress::new(cli.output == Output::Human);
    let report = live.deployer(&progress).remove(&name, drain, stop).await?;
    if json(cli, &report) {
        return Ok(());
    }
    println!(
        "{service} removed: out of nginx (generation {}), {} replica(s) stopped and removed; its history is kept",
        report.generation,
        report.removed.len()
    );
    if let Some(left) = &report.lingering {
        println!("  drain timeout: {left}");
    }
    Ok(())
}
