//! What one deploy measured ([`Row`]) and how it is summed up from what the deploy and the
//! clients saw ([`Case`], [`Deployed`], [`Clients`]; [`Row::new`]), with the engine's route
//! events and retirements read off the timeline ([`retirements`]).

use std::time::Instant;

use serde::Serialize;
use switchyard_app::load::LoadReport;
use switchyard_engine::Event;

use crate::common::{ms, WorkerPeak, WrkReport};
use crate::flows::{Flow, Pairing, Strategy};
use crate::SETTLE;

/// One deploy. Times are milliseconds; signed where an event may come after what it is
/// compared with.
#[derive(Debug, Serialize)]
pub struct Row {
    pub flow: Flow,
    pub strategy: &'static str,
    pub wrk_method: &'static str,
    pub own_method: &'static str,
    pub round: usize,
    pub from: String,
    pub to: String,
    /// The engine's error, when the deploy failed (the row is still measured).
    pub error: Option<String>,
    pub wall_ms: f64,
    /// wrk's whole run: warm-up, settle, deploy and tail.
    pub wrk: WrkReport,
    /// The generator's whole run, as wrk's.
    pub own_requests: u64,
    pub own_failed: u64,
    /// Of those, failed before the deploy was called.
    pub own_failed_before: u64,
    pub own_failures: Vec<String>,
    /// First route event (`Reloaded` or `Shifted`; naive: the SIGHUP) → send time of the
    /// first response from the new version.
    pub route_to_first_new_ms: Option<f64>,
    /// First `Healthy` (the decision to route) → the same response.
    pub healthy_to_first_new_ms: Option<f64>,
    /// The router's own time for the first route change (`confirm_ms`); engine only.
    pub first_route_confirm_ms: Option<f64>,
    /// Confirmed route changes: `Reloaded` plus `Shifted` (naive: SIGHUPs).
    pub route_changes: usize,
    /// Per retirement of old replicas: the drain's wait (route → old peers idle, or old
    /// workers gone) and `Drained` → the last `Stopped`.
    pub drain_ms: Vec<f64>,
    pub idle_to_stopped_ms: Vec<f64>,
    pub workers_at_rest: usize,
    pub workers: WorkerPeak,
    pub p99_steady_ms: Option<f64>,
    pub p99_during_ms: Option<f64>,
}

impl Row {
    pub fn summary(&self) -> String {
        format!(
            "{:<7} {:<10} wrk {:<4} + own {:<4} round {:>2}: {:>5.0} ms, wrk {} failed of {}, \
             own {} failed of {}, workers {}→{} (+{} new), route→first new {}{}",
            self.flow.name(),
            self.strategy,
            self.wrk_method,
            self.own_method,
            self.round,
            self.wall_ms,
            self.wrk.failed,
            self.wrk.requests,
            self.own_failed,
            self.own_requests,
            self.workers_at_rest,
            self.workers.most,
            self.workers.started,
            self.route_to_first_new_ms
                .map_or("–".into(), |v| format!("{v:.1} ms")),
            self.error
                .as_ref()
                .map_or(String::new(), |e| format!(", DEPLOY FAILED: {e}")),
        )
    }
}

/// Which deploy a [`Row`] is.
pub struct Case {
    pub flow: Flow,
    pub strategy: Strategy,
    pub pairing: Pairing,
    pub round: usize,
    pub from: String,
    pub to: String,
}

/// What the two clients saw over their whole runs.
pub struct Clients {
    pub wrk: WrkReport,
    pub traffic: LoadReport,
    pub own_failed_before: u64,
}

/// What happened around one deploy call, until [`TAIL`] after it returned.
pub struct Deployed {
    pub outcome: anyhow::Result<()>,
    pub called: Instant,
    pub returned: Instant,
    pub events: Vec<(Instant, Event)>,
    pub workers_at_rest: usize,
    pub workers: WorkerPeak,
}

impl Row {
    pub fn new(case: Case, error: Option<String>, d: &Deployed, clients: Clients) -> Row {
        let (events, traffic) = (&d.events, &clients.traffic);
        let to_first_new = |pick: fn(&Event) -> bool| {
            let (at, _) = events.iter().find(|(_, e)| pick(e))?;
            let first = traffic.by_version.get(&case.to)?.first;
            Some(signed_ms(*at, first))
        };
        let p99 = |from: Instant, to: Instant| traffic.percentile(99.0, Some((from, to))).map(ms);
        let confirm = events.iter().find_map(|(_, e)| match e {
            Event::Reloaded { confirm_ms, .. } | Event::Shifted { confirm_ms, .. } => {
                Some(*confirm_ms as f64)
            }
            _ => None,
        });
        let (drain_ms, idle_to_stopped_ms) = retirements(events).into_iter().unzip();
        Row {
            flow: case.flow,
            strategy: case.strategy.kind().as_str(),
            wrk_method: case.pairing.wrk_method(),
            own_method: case.pairing.own_method(),
            round: case.round,
            error,
            wall_ms: ms(d.returned - d.called),
            own_requests: traffic.total,
            own_failed: traffic.failed,
            own_failed_before: clients.own_failed_before,
            own_failures: traffic
                .failures
                .iter()
                .take(5)
                .map(|f| f.to_string())
                .collect(),
            route_to_first_new_ms: to_first_new(is_route),
            healthy_to_first_new_ms: to_first_new(|e| matches!(e, Event::Healthy { .. })),
            first_route_confirm_ms: confirm.filter(|_| case.flow != Flow::Naive),
            route_changes: events.iter().filter(|(_, e)| is_route(e)).count(),
            drain_ms,
            idle_to_stopped_ms,
            workers_at_rest: d.workers_at_rest,
            workers: d.workers,
            p99_steady_ms: p99(d.called - SETTLE, d.called),
            p99_during_ms: p99(d.called, d.returned),
            from: case.from,
            to: case.to,
            wrk: clients.wrk,
        }
    }
}

fn is_route(e: &Event) -> bool {
    matches!(e, Event::Reloaded { .. } | Event::Shifted { .. })
}

/// `to − from` in milliseconds, negative when `to` came first.
fn signed_ms(from: Instant, to: Instant) -> f64 {
    match to.checked_duration_since(from) {
        Some(d) => ms(d),
        None => -ms(from - to),
    }
}

/// For each `Drained` that `Stopped` events follow before the next route change: the drain's
/// own wait, and from `Drained` to the last of those `Stopped`.
fn retirements(events: &[(Instant, Event)]) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let mut open: Option<(Instant, u64, Option<Instant>)> = None;
    let mut close = |open: &mut Option<(Instant, u64, Option<Instant>)>| {
        if let Some((drained, waited, Some(stopped))) = open.take() {
            out.push((waited as f64, ms(stopped - drained)));
        }
    };
    for (at, event) in events {
        match event {
            Event::Drained { waited_ms, .. } => {
                close(&mut open);
                open = Some((*at, *waited_ms, None));
            }
            Event::Stopped { .. } => {
                if let Some((_, _, stopped)) = open.as_mut() {
                    *stopped = Some(*at);
                }
            }
            e if is_route(e) || matches!(e, Event::Done { .. }) => close(&mut open),
            _ => {}
        }
    }
    close(&mut open);
    out
}
