//! Which version each track of a service serves right now, and with what share of its
//! traffic: [`TrackState`], read from the store by [`TrackState::read`] (the active slot,
//! and the journal of the service's unfinished deployment).
//!
//! Both come from the journal's fold ([`fold`]): the last confirmed route change.
//! - stable: the active slot's version, or the unfinished deployment's `to_version` once a
//!   confirmed route change put its instances on the stable track (a blue-green flip, a
//!   rollback, a canary's promotion, a rolling batch) — the store marks the new slot active
//!   only after the old workers drained, but traffic moved when the change was confirmed;
//!   back to the active slot when a change routed back to it.
//! - canary: the `to_version` of the unfinished canary deployment; with no canary running,
//!   the canary track keeps the last canary version it had (so late log lines of a canary
//!   that just ended still count under its version), or [`NONE`] if the service never had
//!   one.
//! - the canary's weight: that of the canary track in the last confirmed change of the
//!   running canary, 0 before its first step and after its promotion or rollback.
//! - the stable track's versions: one, except mid-rollout (rolling, in-place), when nginx
//!   serves replicas of both: each version's share of the instances the last confirmed
//!   change lists ([`TrackState::stable_weights`]).

use switchyard_engine::deploy::fold::fold;
use switchyard_engine::{DeploymentRecord, JournalEntry, Name, Store, StoreError};
use switchyard_store::SqliteStore;

/// The `version` label of a track that serves no version (nothing deployed, no canary yet).
pub const NONE: &str = "none";

/// One service's tracks at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackState {
    pub stable: String,
    pub canary: String,
    /// The canary's share in hundredths of a percent.
    pub canary_bp: u32,
    /// The stable track's versions and each one's share of its replicas, by version; one
    /// version at 1 but mid-rollout.
    pub stable_shares: Vec<(String, f64)>,
    /// Whether any version serves the stable track.
    pub deployed: bool,
    /// The unfinished deployment and its journal, if any.
    pub running: Option<(DeploymentRecord, Vec<JournalEntry>)>,
}

impl TrackState {
    /// Reads `service`'s tracks from the store. `last_canary` is the canary version the
    /// service had last (see the module docs); it is updated when a canary is running.
    pub fn read(
        store: &SqliteStore,
        service: &Name,
        last_canary: &mut Option<String>,
    ) -> Result<TrackState, StoreError> {
        // The deployment first: one that finishes between the two reads has activated its
        // slot by then, so both name the same version.
        let running = store.unfinished(service)?;
        let active = store.service(service)?.active;
        let active_version = active.map(|s| s.version.to_string());
        Ok(TrackState::resolve(active_version, running, last_canary))
    }

    /// [`TrackState::read`] without the store.
    pub fn resolve(
        active: Option<String>,
        running: Option<(DeploymentRecord, Vec<JournalEntry>)>,
        last_canary: &mut Option<String>,
    ) -> TrackState {
        let mut stable = active.clone();
        let mut canary_bp = 0;
        let mut shares = None;
        if let Some((d, journal)) = &running {
            let is_canary = d.strategy == "canary";
            if is_canary {
                *last_canary = Some(d.to_version.to_string());
            }
            // What nginx serves is what the last confirmed route change says.
            let f = fold(d.id, journal, &[]);
            if f.reloads > 0 {
                let old = active.as_deref().unwrap_or(NONE);
                let versions: Vec<String> = f
                    .confirmed
                    .stable
                    .iter()
                    .map(|id| match f.known.iter().find(|k| &k.id == id) {
                        Some(k) => k.version.to_string(),
                        None => old.to_owned(),
                    })
                    .collect();
                let to = d.to_version.to_string();
                stable = match versions.contains(&to) {
                    true => Some(to.clone()),
                    false => active.clone(),
                };
                canary_bp = match &f.confirmed.canary {
                    Some((_, weight_bp)) if is_canary => *weight_bp,
                    _ => 0,
                };
                shares = split(&versions);
            }
        }
        let deployed = stable.is_some();
        let stable = stable.unwrap_or_else(|| NONE.to_owned());
        TrackState {
            deployed,
            stable_shares: shares.unwrap_or_else(|| vec![(stable.clone(), 1.0)]),
            stable,
            canary: last_canary.clone().unwrap_or_else(|| NONE.to_owned()),
            canary_bp,
            running,
        }
    }

    /// The version label of `track` ("stable" or "canary"); None for any other track.
    pub fn version(&self, track: &str) -> Option<&str> {
        match track {
            "stable" => Some(&self.stable),
            "canary" => Some(&self.canary),
            _ => None,
        }
    }

    /// The share of the service's traffic on `track`, 0 to 1; both 0 when nothing is
    /// deployed.
    pub fn weight(&self, track: &str) -> f64 {
        if !self.deployed {
            return 0.0;
        }
        let canary = f64::from(self.canary_bp.min(10_000)) / 10_000.0;
        match track {
            "canary" => canary,
            _ => 1.0 - canary,
        }
    }

    /// The stable track's share of the service's traffic per version, 0 to 1: nginx
    /// balances evenly over the replicas it serves, so mid-rollout each version has its
    /// share of them.
    pub fn stable_weights(&self) -> Vec<(&str, f64)> {
        let total = self.weight("stable");
        self.stable_shares
            .iter()
            .map(|(version, share)| (version.as_str(), share * total))
            .collect()
    }
}

/// Each version's share of `versions` (one entry per instance), oldest first; None when
/// one version has them all.
fn split(versions: &[String]) -> Option<Vec<(String, f64)>> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for v in versions {
        match counts.iter_mut().find(|(name, _)| name == v) {
            Some((_, n)) => *n += 1,
            None => counts.push((v.clone(), 1)),
        }
    }
    if counts.len() < 2 {
        return None;
    }
    let total = versions.len() as f64;
    Some(
        counts
            .into_iter()
            .map(|(v, n)| (v, n as f64 / total))
            .collect(),
    )
}

/// The newest canary deployment's version per service, newest first in `history`.
pub fn last_canaries(history: &[DeploymentRecord]) -> Vec<(String, String)> {
    let mut seen: Vec<(String, String)> = Vec::new();
    for d in history.iter().filter(|d| d.strategy == "canary") {
        if !seen.iter().any(|(s, _)| s == d.service.as_str()) {
            seen.push((d.service.to_string(), d.to_version.to_string()));
        }
    }
    seen
}
