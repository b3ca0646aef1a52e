//! `switchyard demo`: see `switchyard_app::demo`. Exits 1 if any request failed.

use std::path::PathBuf;

use switchyard_app::demo::{self, DemoOptions};
use switchyard_app::sandbox::demo_app_binary;
use switchyard_app::AppError;
use switchyard_engine::config::RuntimeChoice;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// The static demo-app binary (default: where scripts/build-demo-app puts it).
    #[arg(long)]
    app_binary: Option<PathBuf>,
    /// docker or process (default: docker when the daemon answers).
    #[arg(long)]
    runtime: Option<String>,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    #[arg(long, default_value_t = 2)]
    replicas: u16,
    /// Backend latency of the demo-app, per request.
    #[arg(long, default_value_t = 20)]
    latency_ms: u32,
}

pub async fn run(args: &DemoArgs) -> Result<(), AppError> {
    let runtime = match args.runtime.as_deref() {
        None => None,
        Some("docker") => Some(RuntimeChoice::Docker),
        Some("process") => Some(RuntimeChoice::Process),
        Some(other) => {
            return Err(AppError::input(format!(
                "--runtime: unknown runtime {other:?}: use docker or process"
            )))
        }
    };
    let options = DemoOptions {
        runtime,
        app_binary: args.app_binary.clone().unwrap_or_else(demo_app_binary),
        connections: args.connections,
        replicas: args.replicas,
        latency_ms: args.latency_ms,
    };
    let summary = demo::run(&options).await?;
    println!("{}", summary.table());
    // Only the bad versions' own 5xx may fail: every other failure is the cutover's fault.
    let elsewhere: u64 = summary
        .canaries
        .iter()
        .map(|c| c.failed_elsewhere)
        .sum::<u64>()
        + summary.rollouts.iter().map(|r| r.failed).sum::<u64>()
        + summary.watched.as_ref().map_or(0, |w| w.failed_elsewhere);
    if elsewhere > 0 {
        return Err(AppError {
            code: 1,
            message: format!("{elsewhere} requests failed that were not the bad versions' own"),
        });
    }
    if let [good, bad] = summary.canaries.as_slice() {
        if good.outcome != "promoted" || !bad.outcome.starts_with("rolled back") {
            return Err(AppError {
                code: 1,
                message: format!(
                    "expected the good canary promoted and the bad one rolled back, got: {}; {}",
                    good.outcome, bad.outcome
                ),
            });
        }
    }
    if let Some(w) = &summary.watched {
        if !w.outcome.starts_with("rolled back") {
            return Err(AppError {
                code: 1,
                message: format!(
                    "expected the watch to route {} back, got: {}",
                    w.version, w.outcome
                ),
            });
        }
    }
    if summary.failed > 0 {
        return Err(AppError {
            code: 1,
            message: format!("{} requests failed during the deploy", summary.failed),
        });
    }
    Ok(())
}
