//! `switchyard history`: past deployments, newest first.

use switchyard_app::AppError;
use switchyard_engine::{Name, Store};

use super::{json_list, open_lazy, timestamp};
use crate::Cli;

pub async fn run(cli: &Cli, service: Option<&str>, limit: usize) -> Result<(), AppError> {
    let live = open_lazy(cli)?;
    let name = service
        .map(|s| live.spec(s).map(|spec| spec.name.clone()))
        .transpose()?;
    let history = live
        .store
        .history(name.as_ref().map(|n: &Name| n), limit)
        .map_err(|e| AppError::environment(e.to_string()))?;
    if json_list(cli, "deployments", &history) {
        return Ok(());
    }
    println!(
        "{:>4}  {:<10} {:<8} {:<22} {:<10} {:<20} {:>8}  {:<24} message",
        "id", "service", "kind", "from -> to", "outcome", "started", "took", "who"
    );
    for d in history {
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
            "{:>4}  {:<10} {:<8} {:<22} {:<10} {:<20} {:>8}  {:<24} {message}",
            d.id,
            d.service.as_str(),
            d.kind.as_str(),
            format!("{from} -> {}", d.to_version),
            d.outcome.as_str(),
            timestamp(d.started_ms),
            took,
            d.who
        );
    }
    Ok(())
}
