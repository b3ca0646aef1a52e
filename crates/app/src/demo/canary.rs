//! The demo's judged scenes: a good canary promoted step by step, a bad one (30 % of its
//! requests fail) rolled back automatically, and a blue-green deploy of a bad version under a
//! post-cutover watch, routed back at its first check; each under its own load, summarized
//! per step.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use switchyard_engine::judge::{Measurement, Verdict};
use switchyard_engine::{Event, Observer};

use crate::progress::{percent, Progress};
use crate::sandbox::Sandbox;
use crate::AppError;

/// The `[service.canary]` lines the demo runs with: short steps so a canary takes seconds.
pub const DEMO_CANARY: &str = r#"steps = [10, 50, 100]
hold = "3s"
interval = "1s"
window = "3s"
min_requests = 30
inconclusive_limit = 10"#;

/// The version the demo makes fail (demo-app's `FAILING_VERSIONS` / `FAIL_RATE` knobs).
pub const BAD_VERSION: &str = "v4";
/// The bad version the watch scene deploys blue-green, and how long it is watched.
pub const WATCHED_BAD_VERSION: &str = "v7";
pub const DEMO_WATCH: Duration = Duration::from_secs(30);
pub const BAD_FAIL_RATE: &str = "0.3";

#[derive(Debug, Serialize)]
pub struct CanaryScene {
    /// "canary", or "watched blue-green".
    pub kind: &'static str,
    pub version: String,
    /// "promoted", or "rolled back: <reason>".
    pub outcome: String,
    pub steps: Vec<StepSummary>,
    pub requests: u64,
    pub failed: u64,
    /// Failed requests that were not the canary's own 5xx (the cutover's fault): must be 0.
    pub failed_elsewhere: u64,
    pub retried: u64,
    /// From the first route change (a canary's first step, a blue-green flip) to all traffic
    /// back on the previous version, when it was rolled back.
    pub first_step_to_rollback_ms: Option<u64>,
    pub duration_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct StepSummary {
    pub weight_percent: String,
    pub checks: usize,
    pub last_verdict: String,
    pub requests: Option<f64>,
    pub error_rate: Option<f64>,
}

/// Prints like [`Progress`] and keeps what the summary needs.
struct Recorder {
    progress: Progress,
    analyses: Mutex<Vec<(u32, Verdict, Measurement)>>,
    first_shift: Mutex<Option<Instant>>,
    rolled_back: Mutex<Option<Instant>>,
}

impl Observer for Recorder {
    fn event(&self, event: &Event) {
        self.progress.event(event);
        match event {
            Event::Shifted { .. } | Event::Reloaded { .. } => {
                self.first_shift
                    .lock()
                    .expect("recorder lock")
                    .get_or_insert_with(Instant::now);
            }
            Event::Analysis {
                weight_bp,
                verdict,
                measurement,
            } => self.analyses.lock().expect("recorder lock").push((
                *weight_bp,
                verdict.clone(),
                *measurement,
            )),
            Event::RolledBack { .. } => {
                *self.rolled_back.lock().expect("recorder lock") = Some(Instant::now())
            }
            _ => {}
        }
    }
}

/// How a scene deploys.
pub enum Judged {
    Canary,
    /// Blue-green, watched this long after the cutover.
    Watched(Duration),
}

pub async fn scene(
    sandbox: &Sandbox,
    version: &str,
    connections: usize,
) -> Result<CanaryScene, AppError> {
    judged_scene(sandbox, version, Judged::Canary, connections).await
}

pub async fn judged_scene(
    sandbox: &Sandbox,
    version: &str,
    how: Judged,
    connections: usize,
) -> Result<CanaryScene, AppError> {
    sandbox.ensure_image(version).await?;
    let load = super::scene_load(sandbox, connections).await;
    let recorder = Recorder {
        progress: Progress::new(true),
        analyses: Mutex::default(),
        first_shift: Mutex::default(),
        rolled_back: Mutex::default(),
    };
    let started = Instant::now();
    let (kind, result) = match how {
        Judged::Canary => ("canary", sandbox.deploy_canary(version, &recorder).await),
        Judged::Watched(watch) => (
            "watched blue-green",
            sandbox.deploy_watched(version, watch, &recorder).await,
        ),
    };
    let duration_ms = started.elapsed().as_millis() as u64;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let traffic = load.stop().await;
    let outcome = match result {
        Ok(_) => "promoted".to_owned(),
        Err(e) if e.code == 1 => format!("rolled back: {}", e.message),
        Err(e) => return Err(e),
    };
    // Every failure with the version's own header is its own answer; the rest, the switch's.
    let own = traffic.failed_by_version.get(version).copied().unwrap_or(0);
    let failed_elsewhere = traffic.failed - own;
    let steps = summarize_steps(&recorder.analyses.lock().expect("recorder lock"));
    let first_shift = *recorder.first_shift.lock().expect("recorder lock");
    let rolled_back = *recorder.rolled_back.lock().expect("recorder lock");
    Ok(CanaryScene {
        kind,
        version: version.to_owned(),
        outcome,
        steps,
        requests: traffic.total,
        failed: traffic.failed,
        failed_elsewhere,
        retried: traffic.retried,
        first_step_to_rollback_ms: first_shift
            .zip(rolled_back)
            .map(|(a, b)| (b - a).as_millis() as u64),
        duration_ms,
    })
}

fn summarize_steps(analyses: &[(u32, Verdict, Measurement)]) -> Vec<StepSummary> {
    let mut by_step: BTreeMap<u32, Vec<&(u32, Verdict, Measurement)>> = BTreeMap::new();
    for a in analyses {
        by_step.entry(a.0).or_default().push(a);
    }
    by_step
        .into_iter()
        .map(|(weight_bp, checks)| {
            let (_, verdict, m) = checks.last().expect("a step has a check");
            let last_verdict = match verdict {
                Verdict::Pass(_) => "pass",
                Verdict::NoData(_) => "no data",
                Verdict::Inconclusive(_) => "inconclusive",
                Verdict::Fail(_) => "fail",
            };
            StepSummary {
                weight_percent: percent(weight_bp),
                checks: checks.len(),
                last_verdict: last_verdict.to_owned(),
                requests: m.requests,
                error_rate: m.error_rate(),
            }
        })
        .collect()
}

impl CanaryScene {
    pub fn table(&self) -> String {
        let mut text = format!(
            "\n{} {}: {} ({} ms)\n",
            self.kind, self.version, self.outcome, self.duration_ms
        );
        text.push_str(&format!(
            "  {:>6}  {:>6}  {:<13} {:>9}  {:>10}\n",
            "step", "checks", "last verdict", "requests", "error rate"
        ));
        for s in &self.steps {
            let requests = s.requests.map_or("-".to_owned(), |r| format!("{r:.0}"));
            let rate = s
                .error_rate
                .map_or("-".to_owned(), |r| format!("{:.2}%", r * 100.0));
            text.push_str(&format!(
                "  {:>5}%  {:>6}  {:<13} {:>9}  {:>10}\n",
                s.weight_percent, s.checks, s.last_verdict, requests, rate
            ));
        }
        text.push_str(&format!(
            "  requests {}, failed {} (the version's own 5xx: {}, anything else: {}), re-sent after an idle keep-alive close {}\n",
            self.requests,
            self.failed,
            self.failed - self.failed_elsewhere,
            self.failed_elsewhere,
            self.retried
        ));
        if let Some(ms) = self.first_step_to_rollback_ms {
            text.push_str(&format!(
                "  first route change -> all traffic back on the previous version: {ms} ms\n"
            ));
        }
        text
    }
}
