//! What a deploy leaves behind for the person who reads `switchyard history --show ID`,
//! collected here in the app layer so the engine stays free of IO: a [`Recorder`] wraps the
//! seams one deploy runs against ([`recording`]), and when the [`Deployer`] has returned,
//! [`Recorder::keep`] stores beside the deployment
//!
//! - for every deploy, its [`Disruption`]: the requests that failed at the proxy during it,
//!   per track, next to the window before it ([`disruption`]);
//! - for a failed one, its [`FailureEvidence`]: each new replica's last health response, log
//!   tail, exit code and OOM flag, the nginx error-log lines of the deploy mentioning its
//!   upstreams or replicas, and the judge's checks with the thresholds they were held to.
//!
//! The hooks a deployment ran are read back from its journal when shown ([`hooks::ran`]).
//!
//! Nothing here adds an environment value: logs hold what the app printed, and every value
//! of the service's `env_file` and `secrets` is replaced by `[redacted]` wherever it shows.
//! Evidence that cannot be collected or stored is a warning; it never changes the deploy's
//! result.

pub mod disruption;
pub mod hooks;
pub mod recording;

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde::{Deserialize, Serialize};
use switchyard_engine::deploy::{DeployError, DeployReport, Deployer};
use switchyard_engine::judge::{Policy, Verdict};
use switchyard_engine::*;
use switchyard_nginx::NginxRouter;
use switchyard_store::SqliteStore;

pub use disruption::Disruption;
pub use hooks::HookEvidence;
use recording::{EventLog, RecordingRuntime};

use crate::live::{HttpProber, Live, SystemHost};

/// The format of [`FailureEvidence`] as stored and printed.
pub const SCHEMA: u32 = 1;
/// nginx error-log lines kept, the newest.
pub const ERROR_LINES: usize = 50;
/// At most this much of the error log written during a deploy is read.
const ERROR_LOG_READ_MAX: u64 = 4 * 1024 * 1024;

/// What a failed deployment left behind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureEvidence {
    pub schema: u32,
    pub deployment: DeploymentId,
    /// The failure's [`Cause`] (`unhealthy`, `threshold`, ...), when the engine gave one.
    pub cause: Option<String>,
    pub message: String,
    pub replicas: Vec<ReplicaEvidence>,
    /// Lines of nginx's error log written during the deploy that mention the service's
    /// upstreams (`sy_<service>_`) or a new replica's address.
    pub nginx_errors: Vec<String>,
    pub checks: Vec<CheckEvidence>,
    /// What the checks were held to (canaries).
    pub thresholds: Option<Thresholds>,
}

/// One new replica of the deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaEvidence {
    pub name: String,
    pub version: String,
    pub addr: String,
    /// Its state before the engine stopped or removed it: `exited`, `running`, ...
    pub state: String,
    pub exit_code: Option<i64>,
    /// None where the runtime cannot tell (processes).
    pub oom_killed: Option<bool>,
    pub runtime_error: Option<String>,
    /// Restarts by Docker's restart policy during the deploy.
    #[serde(default)]
    pub restarts: Option<i64>,
    /// Its last health response, with the passes in a row it had and needed.
    pub last_health: Option<String>,
    pub health_passes: Option<(u32, u32)>,
    pub log_tail: String,
}

/// One judgement of a canary step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckEvidence {
    pub weight_percent: f64,
    /// `pass`, `nodata`, `inconclusive` or `fail`.
    pub verdict: String,
    pub reason: String,
    pub requests: Option<f64>,
    pub errors: Option<f64>,
    pub error_rate: Option<f64>,
    pub p99_latency_s: Option<f64>,
}

/// A canary's thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub max_error_rate: f64,
    pub max_p99_latency_s: Option<f64>,
    pub min_requests: f64,
    pub baseline_margin: Option<f64>,
}

impl From<&Policy> for Thresholds {
    fn from(p: &Policy) -> Thresholds {
        Thresholds {
            max_error_rate: p.max_error_rate,
            max_p99_latency_s: p.max_p99_latency.map(|d| d.as_secs_f64()),
            min_requests: p.min_requests,
            baseline_margin: p.baseline_margin,
        }
    }
}

/// What [`Recorder::keep`] stored.
#[derive(Debug, Clone, Default)]
pub struct Kept {
    pub deployment: Option<DeploymentId>,
    pub disruption: Option<Disruption>,
    pub failure: Option<FailureEvidence>,
    /// What could not be collected or stored.
    pub warnings: Vec<String>,
}

/// The seams of one deploy, recording what its evidence needs.
pub struct Recorder<'a> {
    live: &'a Live,
    runtime: RecordingRuntime<'a>,
    events: EventLog<'a>,
    started_ms: i64,
    /// Where nginx's error log ended when the deploy began.
    error_log_from: u64,
}

impl<'a> Recorder<'a> {
    /// Starts recording now; `observer` still sees every event.
    pub fn new(live: &'a Live, observer: &'a dyn Observer) -> Recorder<'a> {
        let error_log_from =
            std::fs::metadata(&live.router.layout.error_log).map_or(0, |m| m.len());
        Recorder {
            live,
            runtime: RecordingRuntime::new(&live.runtime),
            events: EventLog::new(observer),
            started_ms: live.host.now_ms(),
            error_log_from,
        }
    }

    /// The deployer to run the deploy with.
    pub fn deployer(
        &self,
    ) -> Deployer<'_, RecordingRuntime<'a>, HttpProber, NginxRouter, SqliteStore, SystemHost> {
        Deployer {
            runtime: &self.runtime,
            prober: &self.live.prober,
            router: &self.live.router,
            store: &self.live.store,
            host: &self.live.host,
            hooks: &self.live.hooks,
            observer: &self.events,
        }
    }

    /// Stores the disruption of the deployment this command ran and, if it failed, its
    /// evidence. Never fails: what goes wrong is in [`Kept::warnings`].
    pub async fn keep(
        &self,
        spec: &ServiceSpec,
        result: &Result<DeployReport, DeployError>,
    ) -> Kept {
        let mut kept = Kept::default();
        let Some(record) = self.deployment_of(spec, result, &mut kept.warnings) else {
            return kept;
        };
        kept.deployment = Some(record.id);
        let from = record.started_ms.max(self.started_ms);
        let to = record.finished_ms.unwrap_or(self.live.host.now_ms());
        // Requests sent before the end are logged when they end: let those lines come.
        let late = disruption::LATE_LINES.as_millis() as i64 - (self.live.host.now_ms() - to);
        if late > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(late as u64)).await;
        }
        let now = self.live.host.now_ms();
        let log = &self.live.router.layout.access_log;
        match disruption::measure(log, spec.name.as_str(), from, to) {
            Ok(d) => {
                let stored = serde_json::to_value(&d).expect("serializable");
                if let Err(e) = self.live.store.put_disruption(record.id, &stored, now) {
                    kept.warnings.push(e.to_string());
                }
                kept.disruption = Some(d);
            }
            Err(e) => kept
                .warnings
                .push(format!("reading {}: {e}", log.display())),
        }
        if let Err(error) = result {
            let failure = self.failure(spec, record.id, error).await;
            let stored = redact(serde_json::to_value(&failure).expect("serializable"), spec);
            if let Err(e) = self.live.store.put_failure(record.id, &stored, now) {
                kept.warnings.push(e.to_string());
            }
            kept.failure = serde_json::from_value(stored).ok();
        }
        kept
    }

    /// The deployment `result` names, else the newest of `spec`'s begun by this command.
    fn deployment_of(
        &self,
        spec: &ServiceSpec,
        result: &Result<DeployReport, DeployError>,
        warnings: &mut Vec<String>,
    ) -> Option<DeploymentRecord> {
        let named = match result {
            Ok(report) => Some(report.deployment),
            Err(DeployError::Failed { deployment, .. }) => Some(*deployment),
            Err(_) => None,
        };
        let found = match named {
            Some(id) => self.live.store.deployment(id).map(|d| d.map(|(r, _)| r)),
            None => self
                .live
                .store
                .history(Some(&spec.name), 1)
                .map(|h| h.into_iter().find(|d| d.started_ms >= self.started_ms)),
        };
        found.unwrap_or_else(|e| {
            warnings.push(e.to_string());
            None
        })
    }

    async fn failure(
        &self,
        spec: &ServiceSpec,
        id: DeploymentId,
        error: &DeployError,
    ) -> FailureEvidence {
        let cause = match error {
            DeployError::Failed { cause, .. } => Some(cause.as_str().to_owned()),
            _ => None,
        };
        let replicas: Vec<ReplicaEvidence> = self
            .runtime
            .snapshots()
            .await
            .into_iter()
            .filter(|s| s.instance.service == spec.name)
            .map(|s| {
                let health = self.events.health(&s.instance.name);
                ReplicaEvidence {
                    name: s.instance.name.clone(),
                    version: s.instance.version.to_string(),
                    addr: s.instance.addr().to_string(),
                    state: s.state,
                    exit_code: s.exit_code,
                    oom_killed: s.oom_killed,
                    runtime_error: s.runtime_error,
                    restarts: s.restarts,
                    last_health: health.as_ref().map(|h| h.last.clone()),
                    health_passes: health.map(|h| (h.passes, h.needed)),
                    log_tail: s.log_tail,
                }
            })
            .collect();
        let mut needles = vec![format!("sy_{}_", spec.name)];
        needles.extend(replicas.iter().map(|r| r.addr.clone()));
        let checks: Vec<CheckEvidence> = self.events.checks().iter().map(check).collect();
        let thresholds = (!checks.is_empty()).then(|| Thresholds::from(&spec.canary.policy));
        FailureEvidence {
            schema: SCHEMA,
            deployment: id,
            cause,
            message: error.to_string(),
            replicas,
            nginx_errors: error_lines(
                &self.live.router.layout.error_log,
                self.error_log_from,
                &needles,
            ),
            checks,
            thresholds,
        }
    }
}

fn check(c: &recording::Check) -> CheckEvidence {
    let (verdict, reason) = match &c.verdict {
        Verdict::Pass(r) => ("pass", r),
        Verdict::NoData(r) => ("nodata", r),
        Verdict::Inconclusive(r) => ("inconclusive", r),
        Verdict::Fail(r) => ("fail", r),
    };
    CheckEvidence {
        weight_percent: f64::from(c.weight_bp) / 100.0,
        verdict: verdict.to_owned(),
        reason: reason.clone(),
        requests: c.measurement.requests,
        errors: c.measurement.errors,
        error_rate: c.measurement.error_rate(),
        p99_latency_s: c.measurement.p99_latency,
    }
}

/// The last [`ERROR_LINES`] lines of `log` after byte `from` that contain one of `needles`.
/// A log shorter than `from` was rotated or truncated: it is read from its start.
pub fn error_lines(log: &Path, from: u64, needles: &[String]) -> Vec<String> {
    let Ok(mut file) = std::fs::File::open(log) else {
        return Vec::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let from = if len < from { 0 } else { from };
    let start = from.max(len.saturating_sub(ERROR_LOG_READ_MAX));
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let matching: Vec<&str> = text
        .lines()
        .filter(|l| needles.iter().any(|n| l.contains(n.as_str())))
        .collect();
    let skip = matching.len().saturating_sub(ERROR_LINES);
    matching[skip..].iter().map(|l| (*l).to_owned()).collect()
}

/// `value` with every secret value of `spec` (`env_file`, `secrets`) replaced in every string.
pub fn redact(value: serde_json::Value, spec: &ServiceSpec) -> serde_json::Value {
    let secrets = crate::secrets::values(spec);
    if secrets.is_empty() {
        return value;
    }
    redact_with(value, &secrets)
}

fn redact_with(value: serde_json::Value, secrets: &[&str]) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => Value::String(crate::secrets::redact(&s, secrets)),
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|v| redact_with(v, secrets)).collect())
        }
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, redact_with(v, secrets)))
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_are_those_of_the_deploy_that_name_the_service_or_a_replica() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("error.log");
        let before = "2026/12/02 01:00:00 [error] 1#0: *1 no live upstreams while connecting to upstream, upstream: \"http://sy_web_stable/\"\n";
        std::fs::write(&log, before).unwrap();
        let from = before.len() as u64;
        let during = [
            "2026/12/02 01:00:05 [error] 1#0: *7 connect() failed (111: Connection refused) while connecting to upstream, upstream: \"http://127.0.0.1:4001/\"",
            "2026/12/02 01:00:05 [error] 1#0: *8 upstream timed out, upstream: \"http://sy_web_canary/\"",
            "2026/12/02 01:00:06 [error] 1#0: *9 no live upstreams, upstream: \"http://sy_api_stable/\"",
            "2026/12/02 01:00:06 [notice] 1#0: signal process started",
        ];
        let mut text = before.to_owned();
        text.push_str(&(during.join("\n") + "\n"));
        std::fs::write(&log, text).unwrap();
        let needles = ["sy_web_".to_owned(), "127.0.0.1:4001".to_owned()];
        assert_eq!(error_lines(&log, from, &needles), during[..2]);
        // Truncated since: read from the start.
        std::fs::write(&log, during[1]).unwrap();
        assert_eq!(error_lines(&log, from, &needles), during[1..2]);
        assert!(error_lines(&dir.path().join("missing"), 0, &needles).is_empty());
    }

    #[test]
    fn secret_values_are_redacted_everywhere_in_the_evidence() {
        let value = serde_json::json!({
            "log_tail": "connecting with hunter2-token to db",
            "replicas": [{"last_health": "500 bad key hunter2-token"}],
            "exit_code": 2,
        });
        let redacted = redact_with(value, &["hunter2-token"]);
        let text = redacted.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("connecting with [redacted] to db"), "{text}");
        assert_eq!(redacted["exit_code"], 2);
    }
}
