//! The demo's rolling scenes: the service rolled to a new version in batches (one surge
//! replica at a time), then in place (no extra capacity, the freed ports reused), each under
//! its own load and summarized per batch.

use std::time::{Duration, Instant};

use serde::Serialize;
use switchyard_engine::config::StrategyKind;
use switchyard_engine::deploy::rolling::RolloutReport;

use crate::progress::Progress;
use crate::sandbox::Sandbox;
use crate::AppError;

#[derive(Debug, Serialize)]
pub struct RollingScene {
    pub version: String,
    pub rollout: RolloutReport,
    pub requests: u64,
    pub failed: u64,
    pub retried: u64,
    pub duration_ms: u64,
}

pub async fn scene(
    sandbox: &Sandbox,
    version: &str,
    kind: StrategyKind,
    connections: usize,
) -> Result<RollingScene, AppError> {
    sandbox.ensure_image(version).await?;
    let load = super::scene_load(sandbox, connections).await;
    let started = Instant::now();
    let result = sandbox
        .deploy_with(version, kind, &Progress::new(true))
        .await;
    let duration_ms = started.elapsed().as_millis() as u64;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let traffic = load.stop().await;
    let report = result?;
    Ok(RollingScene {
        version: version.to_owned(),
        rollout: report.rollout.unwrap_or_default(),
        requests: traffic.total,
        failed: traffic.failed,
        retried: traffic.retried,
        duration_ms,
    })
}

impl RollingScene {
    pub fn table(&self) -> String {
        let r = &self.rollout;
        let mut text = format!(
            "\n{} to {} (max_surge {}, max_unavailable {}): {} batches, {} route changes, at most {} instances running ({} ms)\n",
            r.strategy,
            self.version,
            r.max_surge,
            r.max_unavailable,
            r.batches.len(),
            r.reloads,
            r.peak_running,
            self.duration_ms
        );
        text.push_str(&format!(
            "  {:>5}  {:>3}  {:>3}  {:>10}  {:>10}  {:>8}\n",
            "batch", "in", "out", "healthy", "routed", "drained"
        ));
        for (i, b) in r.batches.iter().enumerate() {
            let reload = b.confirm_ms.map_or("-".to_owned(), |ms| format!("{ms} ms"));
            text.push_str(&format!(
                "  {:>5}  {:>3}  {:>3}  {:>7} ms  {:>10}  {:>5} ms\n",
                i + 1,
                b.added.len(),
                b.removed.len(),
                b.healthy_ms,
                reload,
                b.drained_ms
            ));
        }
        text.push_str(&format!(
            "  requests {}, failed {}, re-sent after an idle keep-alive close {}\n",
            self.requests, self.failed, self.retried
        ));
        text
    }
}
