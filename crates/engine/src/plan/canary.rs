//! The plan of a canary deploy: [`canary`], step for step what `Deployer::canary` runs.
//!
//! The replicas start beside the live ones, then each weighted step below 100 % is one
//! reload and a hold under the judge, then the blue-green flip. With no live version there
//! is nothing to compare with, so the first version goes live whole, as the engine does.

use std::time::Duration;

use super::{blue_green, placeholders, retire, start_and_wait, Plan, RouteBy};
use crate::config::{CanarySpec, ServiceSpec, StrategyKind};
use crate::deploy::canary::percent;
use crate::model::{ServiceRecord, Slot};
use crate::names::{RequestKey, Version};
use crate::seams::{CanaryRoute, UpstreamSet};

/// How long a rollback waits for the last step's workers; `deploy::canary` uses the same
/// bound (`ROLLBACK_DRAIN_WAIT`), capped by `drain_timeout`.
const ROLLBACK_DRAIN_WAIT: Duration = Duration::from_secs(1);

/// A canary deploy of `version`; a blue-green plan when nothing is live yet.
pub fn canary(spec: &ServiceSpec, record: &ServiceRecord, version: &Version, by: RouteBy) -> Plan {
    let Some(old) = record.active.as_ref() else {
        let mut plan = blue_green(spec, record, version, by);
        plan.strategy = StrategyKind::Canary.as_str().into();
        plan.steps.insert(
            0,
            format!(
                "{} has no live version to compare with or fall back to: the first version goes live whole (blue-green)",
                spec.name
            ),
        );
        return plan;
    };
    let c = &spec.canary;
    let color = old.color.other();
    let beside = format!(" beside {} ({} slot)", old.version, old.color.as_str());
    let mut steps = start_and_wait(spec, version, color, &beside);
    let weighted: Vec<u32> = c.steps.iter().copied().filter(|&w| w < 10_000).collect();
    for (i, &weight_bp) in weighted.iter().enumerate() {
        let after = if i == 0 || by == RouteBy::Dynamic {
            ""
        } else {
            " once the previous step's workers have exited"
        };
        steps.push(format!(
            "canary step {}, {}{after}: {}; {}",
            i + 1,
            by.change(),
            split(c, weight_bp, version),
            judged(c)
        ));
        if c.pause_after.contains(&weight_bp) {
            steps.push(format!(
                "pause at {}% until `switchyard promote` (go on) or `switchyard abort` (roll back), judged every {:?} meanwhile ({} failed check(s) roll back)",
                percent(weight_bp),
                c.interval,
                c.failure_limit
            ));
        }
    }
    let wait = match by {
        RouteBy::Reload => "wait for the last step's workers to exit, ",
        RouteBy::Dynamic => "",
    };
    steps.push(format!(
        "promote: {wait}check every canary replica's health once more, then route all traffic to {version} in {}",
        by.change()
    ));
    steps.extend(retire(spec, record, by));
    steps.push(on_failure(spec, old, by));
    let upstream = first_step(spec, old, weighted.first().copied().unwrap_or(10_000));
    Plan::new(spec, record, version, StrategyKind::Canary, steps, upstream)
}

/// Who gets the canary at `weight_bp`: the split, and the testers routed to it.
fn split(c: &CanarySpec, weight_bp: u32, version: &Version) -> String {
    let how = match &c.sticky {
        None => "split per request at random".to_owned(),
        Some(key) => format!("sticky on {}", key_name(key)),
    };
    let mut text = format!("{}% to {version} ({how})", percent(weight_bp));
    if let Some(route) = &c.route {
        text.push_str(&format!(
            ", and every request with {} = {} goes to {version}",
            key_name(&route.key),
            route.value
        ));
    }
    text
}

/// What the judge checks during a hold, and what ends it.
fn judged(c: &CanarySpec) -> String {
    let p = &c.policy;
    let mut checks = format!(
        "error rate at most {}% (max_error_rate {})",
        p.max_error_rate * 100.0,
        p.max_error_rate
    );
    if let Some(margin) = p.baseline_margin {
        checks.push_str(&format!(
            " and at most {} points above the stable track's (baseline_margin {margin})",
            margin * 100.0
        ));
    }
    if let Some(p99) = p.max_p99_latency {
        checks.push_str(&format!(", p99 latency at most {p99:?}"));
    }
    format!(
        "hold {:?}, judged every {:?} over the last {:?}: {checks}, with at least {} requests (min_requests; fewer is inconclusive); a pass after the hold advances, {} failed check(s) (failure_limit) or {} checks in a row without a verdict (inconclusive_limit) roll back",
        c.hold.max(c.window),
        c.interval,
        c.window,
        p.min_requests,
        c.failure_limit,
        c.inconclusive_limit
    )
}

fn key_name(key: &RequestKey) -> String {
    match key {
        RequestKey::Header(h) => format!("header {h}"),
        RequestKey::Cookie(c) => format!("cookie {c}"),
    }
}

fn on_failure(spec: &ServiceSpec, old: &Slot, by: RouteBy) -> String {
    match by {
        RouteBy::Reload => format!(
            "on a failed check, a refused reload, an unhealthy replica before the flip or `switchyard abort`: wait at most {:?} for the last step's workers, one reload back to weight 0 (all traffic on {}), drain, remove the canary replicas; exit 1",
            spec.drain_timeout.min(ROLLBACK_DRAIN_WAIT),
            old.version
        ),
        RouteBy::Dynamic => format!(
            "on a failed check, a refused route change, an unhealthy replica before the flip or `switchyard abort`: one routing change back to weight 0 (all traffic on {}), drain, remove the canary replicas; exit 1",
            old.version
        ),
    }
}

/// The upstream of the first step, the one `plan` previews.
fn first_step(spec: &ServiceSpec, old: &Slot, weight_bp: u32) -> UpstreamSet {
    UpstreamSet {
        service: spec.name.clone(),
        listen: spec.listen,
        backends: old.instances.iter().map(|i| i.addr()).collect(),
        canary: Some(CanaryRoute {
            backends: placeholders(spec.replicas),
            weight_bp,
            sticky: spec.canary.sticky.clone(),
            route: spec.canary.route.clone(),
        }),
    }
}
