//! The deployment metrics, read from the store at scrape time so they are right whichever
//! process ran the deploy: [`HistoryMetrics`] exports
//!
//! - `switchyard_deployments_total{service,strategy,outcome}`: finished deployments
//!   (`succeeded` or `failed`; rollbacks are deployments too, with strategy `blue-green`);
//! - `switchyard_deployment_duration_seconds{service,strategy,outcome}`: a histogram of
//!   their durations, start to finish;
//! - `switchyard_rollbacks_total{service,reason}`: deployments that took traffic back, by
//!   [`rollback_reason`];
//! - `switchyard_reload_duration_seconds{service,step}`: journal timestamps from each route
//!   change (`serve`) to its confirmation (`routed`), `step="shift"` for canary steps and
//!   `step="route"` for every other: render, validate, reload and confirm, including a
//!   running deployment's reloads so far;
//! - `switchyard_deploy_failed_requests{service}`: the requests that failed at the proxy
//!   during the service's last deployment with a measured disruption (see
//!   [`crate::evidence::disruption`]), 0 before the first.
//!
//! A finished deployment never changes, so what it contributes ([`Facts`]) is computed once
//! and cached; only new and running deployments are read with their journals. Every series
//! of every configured service is exported from the first scrape, at 0 until it counts
//! something.

use std::collections::{BTreeMap, HashMap};

use prometheus::proto::MetricFamily;
use switchyard_engine::{
    Cause, DeployKind, DeploymentId, DeploymentRecord, JournalEntry, Outcome, Step, Store,
    StoreError,
};
use switchyard_store::{LatestDisruption, SqliteStore};

use super::exposition::{Family, Histogram};
use crate::evidence::Disruption;

pub const STRATEGIES: [&str; 4] = ["blue-green", "canary", "rolling", "in-place"];
pub const OUTCOMES: [&str; 2] = ["succeeded", "failed"];
/// See [`rollback_reason`].
pub const ROLLBACK_REASONS: [&str; 9] = [
    "threshold",
    "no_data",
    "aborted",
    "unhealthy",
    "start",
    "manual",
    "interrupted",
    "nginx",
    "other",
];
pub const RELOAD_STEPS: [&str; 2] = ["route", "shift"];

/// Seconds; a deploy takes from seconds (blue-green) to an hour (a long canary).
pub const DEPLOYMENT_BUCKETS: [f64; 11] = [
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];
/// Seconds; a confirmed nginx reload takes tens to hundreds of milliseconds.
pub const RELOAD_BUCKETS: [f64; 10] = [0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Why a finished deployment took traffic back, or None if it did not:
///
/// - `manual`: a `switchyard rollback` (kind `rollback`), whatever its outcome;
/// - for a failed canary, or a failed deployment that had moved traffic (a confirmed route
///   change before it failed: a rolling batch, a resumed flip), the [`Cause`] its journal
///   recorded in `failing`: `prepare`, `start`, `unhealthy`, `nginx`, `threshold`, `no_data`,
///   `aborted`, `interrupted`; `other` for a journal written before causes were recorded.
///
/// A failed blue-green deploy that never moved traffic is not a rollback. Nothing here reads
/// the wording of a message.
pub fn rollback_reason(d: &DeploymentRecord, journal: &[JournalEntry]) -> Option<&'static str> {
    if d.outcome == Outcome::Running {
        return None;
    }
    if d.kind == DeployKind::Rollback {
        return Some("manual");
    }
    if d.outcome != Outcome::Failed {
        return None;
    }
    let mut moved = d.strategy == "canary";
    let mut cause = None;
    for entry in journal {
        match &entry.step {
            Step::Routed { .. } | Step::Shifted { .. } | Step::RoutedBack { .. }
                if cause.is_none() =>
            {
                moved = true
            }
            Step::Failing { cause: c, .. } => cause = cause.or(Some(*c)),
            _ => {}
        }
    }
    moved.then(|| cause.map_or("other", Cause::as_str))
}

/// Seconds from each route change journaled to its confirmation: `step="shift"` for a
/// canary step (a serve set with a canary track, or a `shift` of older journals),
/// `step="route"` for every other (a blue-green flip, a rolling batch, a way back).
pub fn reload_durations(journal: &[JournalEntry]) -> Vec<(&'static str, f64)> {
    let mut out = Vec::new();
    let mut pending: Option<(&'static str, i64)> = None;
    for entry in journal {
        let intent = match &entry.step {
            Step::Serve {
                canary: Some(_), ..
            }
            | Step::Shift { .. } => Some("shift"),
            Step::Serve { .. } | Step::Route { .. } | Step::RouteBack { .. } => Some("route"),
            _ => None,
        };
        if let Some(step) = intent {
            pending = Some((step, entry.at_ms));
            continue;
        }
        if matches!(
            entry.step,
            Step::Routed { .. } | Step::Shifted { .. } | Step::RoutedBack { .. }
        ) {
            if let Some((step, at)) = pending.take() {
                out.push((step, (entry.at_ms - at).max(0) as f64 / 1000.0));
            }
        }
    }
    out
}

/// What one deployment adds to the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    service: String,
    strategy: String,
    /// None while running.
    finished: Option<(&'static str, f64)>,
    rollback: Option<&'static str>,
    reloads: Vec<(&'static str, f64)>,
}

impl Facts {
    pub fn of(d: &DeploymentRecord, journal: &[JournalEntry]) -> Facts {
        let finished = d.finished_ms.filter(|_| d.outcome != Outcome::Running);
        Facts {
            service: d.service.to_string(),
            strategy: d.strategy.clone(),
            finished: finished.map(|at| {
                let seconds = (at - d.started_ms).max(0) as f64 / 1000.0;
                (d.outcome.as_str(), seconds)
            }),
            rollback: rollback_reason(d, journal),
            reloads: reload_durations(journal),
        }
    }
}

/// The deployment metrics, with finished deployments' [`Facts`] cached.
#[derive(Debug, Default)]
pub struct HistoryMetrics {
    finished: HashMap<DeploymentId, Facts>,
}

impl HistoryMetrics {
    /// Reads the history (and the journals of deployments not seen finished before) and
    /// builds the four families, with every series of `services` present.
    pub fn families(
        &mut self,
        store: &SqliteStore,
        services: &[String],
    ) -> Result<Vec<MetricFamily>, StoreError> {
        let mut facts = Vec::new();
        for d in store.history(None, usize::MAX)? {
            if let Some(known) = self.finished.get(&d.id) {
                facts.push(known.clone());
                continue;
            }
            let journal = match store.deployment(d.id)? {
                Some((_, journal)) => journal,
                None => Vec::new(),
            };
            let f = Facts::of(&d, &journal);
            if f.finished.is_some() {
                self.finished.insert(d.id, f.clone());
            }
            facts.push(f);
        }
        let mut families = build(&facts, services);
        families.push(failed_requests(&store.latest_disruptions()?, services));
        Ok(families)
    }
}

/// `switchyard_deploy_failed_requests{service}` from each service's latest disruption; a
/// document this build cannot read counts as none.
pub fn failed_requests(latest: &[LatestDisruption], services: &[String]) -> MetricFamily {
    let mut failed: BTreeMap<&str, u64> = services.iter().map(|s| (s.as_str(), 0)).collect();
    for l in latest {
        if let Ok(d) = serde_json::from_value::<Disruption>(l.disruption.clone()) {
            failed.insert(l.service.as_str(), d.during.total().failed);
        }
    }
    let mut family = Family::gauge(
        "switchyard_deploy_failed_requests",
        "Requests that failed at the proxy (5xx, upstream attempts without a response, 499) during the service's last deployment.",
    );
    for (service, n) in failed {
        family.value(&[("service", service)], n as f64);
    }
    family.into_inner()
}

/// Counts and histograms keyed by their label values, so every series exists once.
struct Tally {
    deployments: BTreeMap<(String, String, String), (u64, Histogram)>,
    rollbacks: BTreeMap<(String, String), u64>,
    reloads: BTreeMap<(String, String), Histogram>,
}

pub fn build(facts: &[Facts], services: &[String]) -> Vec<MetricFamily> {
    let mut t = Tally {
        deployments: BTreeMap::new(),
        rollbacks: BTreeMap::new(),
        reloads: BTreeMap::new(),
    };
    let new_deployment = || (0, Histogram::new(&DEPLOYMENT_BUCKETS));
    for service in services {
        for strategy in STRATEGIES {
            for outcome in OUTCOMES {
                let key = (service.clone(), strategy.to_owned(), outcome.to_owned());
                t.deployments.entry(key).or_insert_with(new_deployment);
            }
        }
        for reason in ROLLBACK_REASONS {
            t.rollbacks.insert((service.clone(), reason.to_owned()), 0);
        }
        for step in RELOAD_STEPS {
            let histogram = Histogram::new(&RELOAD_BUCKETS);
            t.reloads
                .insert((service.clone(), step.to_owned()), histogram);
        }
    }
    for f in facts {
        if let Some((outcome, seconds)) = f.finished {
            let key = (f.service.clone(), f.strategy.clone(), outcome.to_owned());
            let (count, durations) = t.deployments.entry(key).or_insert_with(new_deployment);
            *count += 1;
            durations.observe(seconds);
        }
        if let Some(reason) = f.rollback {
            *t.rollbacks
                .entry((f.service.clone(), reason.to_owned()))
                .or_default() += 1;
        }
        for &(step, seconds) in &f.reloads {
            t.reloads
                .entry((f.service.clone(), step.to_owned()))
                .or_insert_with(|| Histogram::new(&RELOAD_BUCKETS))
                .observe(seconds);
        }
    }
    families(t)
}

fn families(t: Tally) -> Vec<MetricFamily> {
    let mut total = Family::counter(
        "switchyard_deployments_total",
        "Finished deployments (rollbacks included), by strategy and outcome.",
    );
    let mut duration = Family::histogram(
        "switchyard_deployment_duration_seconds",
        "Duration of finished deployments, from start to finish, in seconds.",
    );
    for ((service, strategy, outcome), (count, durations)) in t.deployments {
        let labels = [
            ("service", service.as_str()),
            ("strategy", strategy.as_str()),
            ("outcome", outcome.as_str()),
        ];
        total.value(&labels, count as f64);
        duration.histogram_series(&labels, &durations);
    }
    let mut rollbacks = Family::counter(
        "switchyard_rollbacks_total",
        "Deployments that took traffic back to the previous version, by reason.",
    );
    for ((service, reason), count) in t.rollbacks {
        let labels = [("service", service.as_str()), ("reason", reason.as_str())];
        rollbacks.value(&labels, count as f64);
    }
    let mut reloads = Family::histogram(
        "switchyard_reload_duration_seconds",
        "Time from journaling a route or shift to the confirmed nginx reload, in seconds.",
    );
    for ((service, step), histogram) in t.reloads {
        let labels = [("service", service.as_str()), ("step", step.as_str())];
        reloads.histogram_series(&labels, &histogram);
    }
    vec![
        total.into_inner(),
        duration.into_inner(),
        rollbacks.into_inner(),
        reloads.into_inner(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::disruption::Counts;

    #[test]
    fn failed_requests_are_the_last_deployments_per_service_and_0_before_any() {
        let mut d = Disruption::empty("web", 1_000, 2_000);
        d.during.tracks.insert(
            "stable".into(),
            Counts {
                requests: 100,
                failed: 3,
            },
        );
        d.before.tracks.insert(
            "stable".into(),
            Counts {
                requests: 90,
                failed: 7,
            },
        );
        let latest = [LatestDisruption {
            service: "web".into(),
            deployment: 4,
            disruption: serde_json::to_value(&d).unwrap(),
        }];
        let services = ["web".to_owned(), "api".to_owned()];
        let text = super::super::exposition::encode(vec![failed_requests(&latest, &services)]);
        assert!(
            text.contains("switchyard_deploy_failed_requests{service=\"web\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("switchyard_deploy_failed_requests{service=\"api\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE switchyard_deploy_failed_requests gauge"),
            "{text}"
        );
    }
}
