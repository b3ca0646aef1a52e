//! What a deploy would do, without doing it: [`blue_green`] returns a [`Plan`] of steps.
//!
//! `switchyard plan` prints these with the nginx diff from [`crate::Router::preview`].
//! Host ports are allocated when replicas start, so the previewed upstream shows port 0.

use std::net::{Ipv4Addr, SocketAddr};

use serde::Serialize;

use crate::config::{ServiceSpec, Source};
use crate::model::{Color, ServiceRecord};
use crate::names::Version;
use crate::seams::UpstreamSet;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub service: String,
    pub from: Option<String>,
    pub to: String,
    pub color: Color,
    pub steps: Vec<String>,
    /// The upstream to preview: the new replicas, with port 0 standing for "allocated later".
    #[serde(skip)]
    pub upstream: UpstreamSet,
}

pub fn blue_green(spec: &ServiceSpec, record: &ServiceRecord, version: &Version) -> Plan {
    let old = record.active.as_ref();
    let color = old.map_or(Color::Blue, |s| s.color.other());
    let n = spec.replicas;
    let what = match spec.source_for(version) {
        Source::Image(image) => format!("image {image}"),
        Source::Command(argv) => format!("command {argv:?}"),
    };
    let h = &spec.health;
    let mut steps = vec![
        format!("start {n} replica(s) of {} {version} ({what}) in the {} slot, each on a new 127.0.0.1 port; no traffic yet", spec.name, color.as_str()),
        format!(
            "wait until every replica passes GET {} {} times in a row (every {:?}, each within {:?}, deadline {:?}); otherwise remove them and stop",
            h.path, h.healthy_after, h.interval, h.timeout, h.deadline
        ),
        format!("render upstream {} to the new replicas, validate a staged copy of the whole nginx tree with `nginx -t`, rename it into place", spec.name),
        "reload nginx and poll the control endpoint on fresh connections until the new generation answers".to_owned(),
        format!("wait for the nginx workers that served the old config to exit (at most {:?})", spec.drain_timeout),
    ];
    match old {
        Some(slot) => steps.push(format!(
            "stop {} {} ({} slot, {} instance(s)): SIGTERM, SIGKILL after {:?}; keep it stopped for rollback",
            spec.name,
            slot.version,
            slot.color.as_str(),
            slot.instances.len(),
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
    let placeholder = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    Plan {
        service: spec.name.to_string(),
        from: old.map(|s| s.version.to_string()),
        to: version.to_string(),
        color,
        steps,
        upstream: UpstreamSet {
            service: spec.name.clone(),
            listen: spec.listen,
            backends: vec![placeholder; usize::from(n)],
            canary: None,
        },
    }
}
