//! What a deploy would do, without doing it: [`for_strategy`] returns a [`Plan`] of steps,
//! from [`blue_green`], [`canary`] or [`rolling`] (which also plans in-place).
//!
//! `switchyard plan` prints these with the nginx diff from [`crate::Router::preview`].
//! Host ports are allocated when replicas start, so the previewed upstream shows port 0.
//! A plan also warns ([`Plan::warnings`]) when the old and the new version will run at once
//! on a writable volume they share ([`shared_volumes`]).
//! The golden tests in `plan/tests.rs` pin each preset's plan (`plan/golden/`).

mod canary;
#[cfg(test)]
mod tests;

pub use canary::canary;

use std::net::{Ipv4Addr, SocketAddr};

use serde::Serialize;

use crate::config::container::VolumeSource;
use crate::config::{RollingSpec, ServiceSpec, Source, StrategyKind};
use crate::deploy::rolling::batches::{self, Batch, Counts, Limits};
use crate::model::{Color, ServiceRecord};
use crate::names::Version;
use crate::seams::UpstreamSet;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub service: String,
    pub strategy: String,
    pub from: Option<String>,
    pub to: String,
    pub color: Color,
    pub steps: Vec<String>,
    /// What the user should know before deploying (a writable volume two versions share).
    pub warnings: Vec<String>,
    /// The upstream to preview: the new replicas, with port 0 standing for "allocated later".
    #[serde(skip)]
    pub upstream: UpstreamSet,
}

impl Plan {
    /// A plan of `steps` deploying `version` of `spec` by `kind` from what `record` says is
    /// live, previewing the upstream with `upstream` for the new replicas.
    fn new(
        spec: &ServiceSpec,
        record: &ServiceRecord,
        version: &Version,
        kind: StrategyKind,
        steps: Vec<String>,
        upstream: UpstreamSet,
    ) -> Plan {
        let old = record.active.as_ref();
        Plan {
            service: spec.name.to_string(),
            strategy: kind.as_str().into(),
            from: old.map(|s| s.version.to_string()),
            to: version.to_string(),
            color: old.map_or(Color::Blue, |s| s.color.other()),
            steps,
            warnings: shared_volumes(spec, record, version, kind),
            upstream,
        }
    }
}

/// A warning per writable volume of `spec` when the live version and `version` will both
/// run during the deploy: always for blue-green and canary (the new replicas start beside
/// the old), and for rolling and in-place when a batch starts new replicas while old ones
/// still run (not in place with one replica, or `max_unavailable = replicas`, where every
/// old replica stops first).
fn shared_volumes(
    spec: &ServiceSpec,
    record: &ServiceRecord,
    version: &Version,
    kind: StrategyKind,
) -> Vec<String> {
    let Some(old) = record.active.as_ref() else {
        return Vec::new();
    };
    let stale = old.instances.len() as u16;
    let overlap = match kind {
        StrategyKind::BlueGreen | StrategyKind::Canary => stale > 0,
        StrategyKind::Rolling | StrategyKind::InPlace => {
            let r = spec.rolling.for_kind(kind);
            let limits = Limits {
                replicas: spec.replicas,
                max_surge: r.max_surge,
                max_unavailable: r.max_unavailable,
            };
            let mut running_old = stale;
            batches::plan(limits, stale).iter().any(|b| {
                let both = b.add > 0 && running_old > 0;
                running_old -= b.remove;
                both
            })
        }
    };
    if !overlap {
        return Vec::new();
    }
    spec.container
        .volumes
        .iter()
        .filter(|v| !v.read_only)
        .map(|v| {
            let source = match &v.source {
                VolumeSource::Bind(path) => format!("bind {}", path.display()),
                VolumeSource::Named(name) => format!("volume {name}"),
            };
            format!(
                "{source} (at {}) is writable and shared: {} and {version} both run during this {} deploy and may write to it at once; mount it read-only (:ro) if they only read, or deploy in place with max_unavailable = replicas and allow_downtime = true, which stops every old replica before a new one starts (a gap in service)",
                v.target,
                old.version,
                kind.as_str()
            )
        })
        .collect()
}

/// The stable track alone, on `backends`.
fn stable_only(spec: &ServiceSpec, backends: Vec<SocketAddr>) -> UpstreamSet {
    UpstreamSet {
        service: spec.name.clone(),
        listen: spec.listen,
        backends,
        canary: None,
    }
}

/// How the router moves traffic, in a plan's words.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RouteBy {
    /// A validated, confirmed nginx reload per change; the drain waits for old workers.
    #[default]
    Reload,
    /// A routing document in nginx's shared memory; the drain waits for in-flight requests.
    Dynamic,
}

impl RouteBy {
    /// One route change.
    fn change(self) -> &'static str {
        match self {
            RouteBy::Reload => "one validated, confirmed reload",
            RouteBy::Dynamic => "one confirmed routing change (no reload)",
        }
    }

    /// The wait before old replicas stop.
    fn drain(self) -> &'static str {
        match self {
            RouteBy::Reload => "wait for the nginx workers that served the old config to exit",
            RouteBy::Dynamic => "wait until no request is in flight on the old replicas",
        }
    }

    /// Steps 3–4 of the cutover: the flip itself; `first` when the service is new to nginx.
    fn flip(self, service: &str, first: bool) -> [String; 2] {
        match self {
            RouteBy::Dynamic if first => [
                format!("write {service}'s routing document (the new replicas) to the state file, render its server, validate a staged copy of the whole nginx tree with `nginx -t`, rename it into place"),
                "reload nginx once (a new service is a config change; later deploys are not) and read the live routing generation back on a fresh connection until it matches".to_owned(),
            ],
            RouteBy::Reload => [
                format!("render upstream {service} to the new replicas, validate a staged copy of the whole nginx tree with `nginx -t`, rename it into place"),
                "reload nginx and poll the control endpoint on fresh connections until the new generation answers".to_owned(),
            ],
            RouteBy::Dynamic => [
                format!("write {service}'s routing document (the new replicas) to the state file and post it to the control endpoint: nginx is not reloaded"),
                "read the live routing generation back on a fresh connection until it matches".to_owned(),
            ],
        }
    }
}

/// The plan of a deploy of `version` by `kind`, the way `switchyard deploy` would run it.
pub fn for_strategy(
    spec: &ServiceSpec,
    record: &ServiceRecord,
    version: &Version,
    kind: StrategyKind,
    by: RouteBy,
) -> Plan {
    match kind {
        StrategyKind::BlueGreen => blue_green(spec, record, version, by),
        StrategyKind::Canary => canary(spec, record, version, by),
        StrategyKind::Rolling | StrategyKind::InPlace => rolling(spec, record, version, kind, by),
    }
}

pub fn blue_green(
    spec: &ServiceSpec,
    record: &ServiceRecord,
    version: &Version,
    by: RouteBy,
) -> Plan {
    let old = record.active.as_ref();
    let color = old.map_or(Color::Blue, |s| s.color.other());
    let mut steps = start_and_wait(spec, version, color, "");
    steps.extend(by.flip(spec.name.as_str(), old.is_none()));
    steps.extend(retire(spec, record, by));
    let upstream = stable_only(spec, placeholders(spec.replicas));
    Plan::new(
        spec,
        record,
        version,
        StrategyKind::BlueGreen,
        steps,
        upstream,
    )
}

/// Steps 1–2 of the cutover: the new replicas in `color`'s slot (`beside` says next to
/// what), then the health wait.
fn start_and_wait(
    spec: &ServiceSpec,
    version: &Version,
    color: Color,
    beside: &str,
) -> Vec<String> {
    let what = match spec.source_for(version) {
        Source::Image(image) => format!("image {image}"),
        Source::Command(argv) => format!("command {argv:?}"),
    };
    let h = &spec.health;
    vec![
        format!(
            "start {} replica(s) of {} {version} ({what}) in the {} slot{beside}, each on a new 127.0.0.1 port; no traffic yet",
            spec.replicas,
            spec.name,
            color.as_str()
        ),
        format!(
            "wait until every replica passes GET {} {} times in a row (every {:?}, each within {:?}, deadline {:?}); otherwise remove them and stop",
            h.path, h.healthy_after, h.interval, h.timeout, h.deadline
        ),
    ]
}

/// Steps 5–6 of the cutover: the drain after the flip, the old slot stopped and kept, and
/// the retained versions beyond `retain` removed.
fn retire(spec: &ServiceSpec, record: &ServiceRecord, by: RouteBy) -> Vec<String> {
    let old = record.active.as_ref();
    let mut steps = vec![format!("{} (at most {:?})", by.drain(), spec.drain_timeout)];
    match old {
        Some(slot) => steps.push(format!(
            "stop {} {} ({} slot, {} instance(s)): {}, SIGKILL after {:?}; keep it stopped for rollback",
            spec.name,
            slot.version,
            slot.color.as_str(),
            slot.instances.len(),
            spec.container.stop_signal.as_deref().unwrap_or("SIGTERM"),
            spec.stop_timeout
        )),
        None => steps.push(format!("{} has no live version: nothing to stop", spec.name)),
    }
    let kept = record.retained.len() + usize::from(old.is_some());
    if kept > spec.retain {
        let prune: Vec<String> = record
            .retained
            .iter()
            .skip(spec.retain.saturating_sub(usize::from(old.is_some())))
            .map(|s| s.version.to_string())
            .collect();
        steps.push(format!(
            "remove retained version(s) beyond retain = {}: {}",
            spec.retain,
            prune.join(", ")
        ));
    }
    steps
}

/// `n` upstream addresses with port 0: allocated when the replicas start.
fn placeholders(n: u16) -> Vec<SocketAddr> {
    vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 0)); usize::from(n)]
}

/// What one batch does, `serving` replicas in the upstream after it.
fn batch_step(
    spec: &ServiceSpec,
    r: &RollingSpec,
    version: &Version,
    reuses_ports: bool,
    b: Batch,
    serving: u16,
    by: RouteBy,
) -> String {
    let h = &spec.health;
    let ports = match reuses_ports {
        true => "on the ports the old replicas freed",
        false => "each on a new 127.0.0.1 port",
    };
    let mut parts = Vec::new();
    if b.add > 0 {
        parts.push(format!(
            "start {} replica(s) of {version} {ports} and wait until each passes GET {} {} times in a row",
            b.add, h.path, h.healthy_after
        ));
    }
    if serving == 0 {
        parts.push(format!(
            "stop the last old replica: nginx keeps its address, and requests fail until the replacement answers (allow_downtime = {})",
            r.allow_downtime
        ));
    } else {
        parts.push(format!(
            "{}: {} new in, {} old out ({serving} in the upstream)",
            by.change(),
            b.add,
            b.remove
        ));
    }
    if b.remove > 0 && serving > 0 {
        let wait = match by {
            RouteBy::Reload => "wait for the old workers to exit",
            RouteBy::Dynamic => "wait until nothing is in flight on them",
        };
        parts.push(format!(
            "{wait} (at most {:?}), then stop the {} old replica(s) and keep them",
            spec.drain_timeout, b.remove
        ));
    }
    parts.join("; ")
}

/// A rolling or in-place deploy of `version`: one step per batch, within the service's
/// `max_surge` and `max_unavailable`.
pub fn rolling(
    spec: &ServiceSpec,
    record: &ServiceRecord,
    version: &Version,
    kind: StrategyKind,
    by: RouteBy,
) -> Plan {
    let old = record.active.as_ref();
    let r = spec.rolling.for_kind(kind);
    let limits = Limits {
        replicas: spec.replicas,
        max_surge: r.max_surge,
        max_unavailable: r.max_unavailable,
    };
    let stale = old.map_or(0, |s| s.instances.len() as u16);
    let mut steps = vec![format!(
        "{} {} -> {version} in batches: at most {} replica(s) running ({} + max_surge {}), at least {} in the upstream ({} - max_unavailable {})",
        kind.as_str(),
        spec.name,
        spec.replicas + r.max_surge,
        spec.replicas,
        r.max_surge,
        spec.replicas.saturating_sub(r.max_unavailable),
        spec.replicas,
        r.max_unavailable
    )];
    if batches::has_gap(limits, stale) && !r.allow_downtime {
        steps.push("refused: a batch would leave no replica in the upstream; set allow_downtime = true in [service.rolling] to accept the gap".into());
    }
    let mut now = Counts { fresh: 0, stale };
    for (i, b) in batches::plan(limits, stale).iter().enumerate() {
        now.fresh += b.add;
        now.stale -= b.remove;
        // In place, replacements take the ports of the replicas they replace, if any live.
        let reuses_ports = kind == StrategyKind::InPlace && stale > 0;
        let what = batch_step(
            spec,
            &r,
            version,
            reuses_ports,
            *b,
            now.fresh + now.stale,
            by,
        );
        steps.push(format!("batch {}: {what}", i + 1));
    }
    steps.push(format!(
        "on a failed batch: {}",
        match r.on_failure {
            crate::config::OnFailure::Rollback =>
                "remove its replicas, then restore the replaced ones to the previous version in batches (exit 1)",
            crate::config::OnFailure::Pause =>
                "remove its replicas and stop there (exit 1); `switchyard rollback` or `switchyard deploy` finishes",
        }
    ));
    let backends = match (kind, old) {
        (StrategyKind::InPlace, Some(slot)) => slot.instances.iter().map(|i| i.addr()).collect(),
        _ => placeholders(spec.replicas),
    };
    Plan::new(
        spec,
        record,
        version,
        kind,
        steps,
        stable_only(spec, backends),
    )
}
