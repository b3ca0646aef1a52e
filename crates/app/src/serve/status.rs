//! `GET /api/status`: [`StatusReport`], whether nginx runs, and per service whether its
//! listen answers (checked at each request, once something is deployed), the active version,
//! colour and instances (with their last health probe), the running deployment if any (its
//! current canary weight, last step and last analysis), and the deploy lock.
//!
//! ```json
//! {"proxy": {"up": true, "master": 4242, "mode": "managed", "routing": "dynamic",
//!            "detail": "master 4242"},
//!  "services": [{"service": "web", "listen": "127.0.0.1:8080",
//!   "listen_check": {"listen": "127.0.0.1:8080", "answering": true, "detail": "HTTP 200",
//!                    "sentence": "listen 127.0.0.1:8080 answers (HTTP 200)"},
//!   "active": {"version": "v1", "color": "blue", "deployment": 1,
//!              "instances": [{"name": "sy-web-blue-d1-r0", "addr": "127.0.0.1:40001",
//!                             "health": {"ok": true, "summary": "200 ok", "latency_ms": 0.8, "at_ms": 0}}]},
//!   "deployment": {"id": 2, "kind": "deploy", "strategy": "canary", "from_version": "v1",
//!                  "to_version": "v2", "started_ms": 0, "step": "paused",
//!                  "weight_bp": 500, "canary_weight": 0.05, "paused": true,
//!                  "analysis": {"weight_bp": 500, "verdict": "pass", "detail": "…", "at_ms": 0}},
//!   "lock": {"service": "web", "pid": 42, "host": "h", "deployment": 2,
//!            "acquired_ms": 0, "heartbeat_ms": 0, "stale": false}}]}
//! ```

use serde::Serialize;
use switchyard_engine::deploy::lock_is_stale;
use switchyard_engine::{Config, Host, Lock, ServiceSpec, Step, Store, StoreError};
use switchyard_store::SqliteStore;

use super::health::{HealthBoard, LastProbe};
use super::listen::{probe_listen, ListenCheck};
use super::nginx::ProxyState;
use super::tracks::TrackState;
use crate::live::SystemHost;

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub proxy: ProxyState,
    pub services: Vec<ServiceStatus>,
}

#[derive(Debug, Serialize)]
pub struct ServiceStatus {
    pub service: String,
    pub listen: String,
    /// None until something is deployed (nginx has no server for it before).
    pub listen_check: Option<ListenReport>,
    pub active: Option<ActiveSlot>,
    pub deployment: Option<RunningDeployment>,
    pub lock: Option<LockStatus>,
}

#[derive(Debug, Serialize)]
pub struct ActiveSlot {
    pub version: String,
    pub color: &'static str,
    pub deployment: i64,
    pub instances: Vec<InstanceStatus>,
}

#[derive(Debug, Serialize)]
pub struct InstanceStatus {
    pub name: String,
    pub addr: String,
    /// None until serve has probed it.
    pub health: Option<LastProbe>,
}

#[derive(Debug, Serialize)]
pub struct RunningDeployment {
    pub id: i64,
    pub kind: &'static str,
    pub strategy: String,
    pub from_version: Option<String>,
    pub to_version: String,
    pub started_ms: i64,
    /// The last journaled step, `begin` before the first.
    pub step: &'static str,
    /// The canary's share in hundredths of a percent, and as a fraction.
    pub weight_bp: u32,
    pub canary_weight: f64,
    /// Waiting for `switchyard promote` or `switchyard abort`.
    pub paused: bool,
    /// In the post-cutover watch until then (ms since the epoch): the new version has all
    /// the traffic, the previous one is kept ready.
    pub watching_until_ms: Option<i64>,
    pub analysis: Option<Analysis>,
}

#[derive(Debug, Serialize)]
pub struct Analysis {
    pub weight_bp: u32,
    /// `pass`, `fail`, `no_data` or `inconclusive`.
    pub verdict: String,
    pub detail: String,
    pub at_ms: i64,
}

#[derive(Debug, Serialize)]
pub struct LockStatus {
    #[serde(flatten)]
    pub lock: Lock,
    /// Its holder is gone: the next deploy takes it over.
    pub stale: bool,
}

/// A [`ListenCheck`] with the sentence `status` prints.
#[derive(Debug, Serialize)]
pub struct ListenReport {
    #[serde(flatten)]
    pub check: ListenCheck,
    pub sentence: String,
}

/// Checks the listen of every service that has an active version, concurrently.
pub async fn check_listens(report: &mut StatusReport, config: &Config) {
    let checks = report.services.iter().map(|s| async {
        let spec = config.service(&s.service)?;
        s.active.as_ref()?;
        Some(probe_listen(spec.listen, &spec.health.path).await)
    });
    let checks = futures_util::future::join_all(checks).await;
    for (service, check) in report.services.iter_mut().zip(checks) {
        service.listen_check = check.map(|check| ListenReport {
            sentence: check.sentence(&report.proxy),
            check,
        });
    }
}

pub fn service_status(
    store: &SqliteStore,
    spec: &ServiceSpec,
    tracks: &TrackState,
    health: &HealthBoard,
) -> Result<ServiceStatus, StoreError> {
    let service = spec.name.as_str();
    let active = store.service(&spec.name)?.active.map(|slot| ActiveSlot {
        version: slot.version.to_string(),
        color: slot.color.as_str(),
        deployment: slot.deployment,
        instances: slot
            .instances
            .iter()
            .map(|i| InstanceStatus {
                name: i.name.clone(),
                addr: i.addr().to_string(),
                health: health.last(service, &i.name),
            })
            .collect(),
    });
    let now = SystemHost.now_ms();
    let lock = store.lock(&spec.name)?.map(|lock| LockStatus {
        stale: lock_is_stale(&lock, &SystemHost, now),
        lock,
    });
    Ok(ServiceStatus {
        service: service.to_owned(),
        listen: spec.listen.to_string(),
        listen_check: None,
        active,
        deployment: running(tracks),
        lock,
    })
}

fn running(tracks: &TrackState) -> Option<RunningDeployment> {
    let (d, journal) = tracks.running.as_ref()?;
    let analysis = journal.iter().rev().find_map(|e| match &e.step {
        Step::Analysis {
            weight_bp,
            verdict,
            detail,
        } => Some(Analysis {
            weight_bp: *weight_bp,
            verdict: verdict.clone(),
            detail: detail.clone(),
            at_ms: e.at_ms,
        }),
        _ => None,
    });
    let last = journal.last().map(|e| &e.step);
    Some(RunningDeployment {
        id: d.id,
        kind: d.kind.as_str(),
        strategy: d.strategy.clone(),
        from_version: d.from_version.as_ref().map(|v| v.to_string()),
        to_version: d.to_version.to_string(),
        started_ms: d.started_ms,
        step: last.map_or("begin", Step::name),
        weight_bp: tracks.canary_bp,
        canary_weight: f64::from(tracks.canary_bp) / 10_000.0,
        // A paused canary is still judged: its checks come after the pause in the journal.
        paused: journal
            .iter()
            .rev()
            .find(|e| !matches!(e.step, Step::Analysis { .. }))
            .is_some_and(|e| matches!(e.step, Step::Paused { .. })),
        watching_until_ms: switchyard_engine::deploy::watching_until(journal),
        analysis,
    })
}
