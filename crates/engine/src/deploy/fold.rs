//! The journal fold: [`fold`], a pure function from a deployment's journal to what nginx
//! serves, what is running and what was intended ([`Folded`]). Resume starts from it, and
//! `status` and `serve`'s metrics read it.
//!
//! It reads journals of every version of switchyard: `serve` steps (by instance id, with the
//! canary track beside the stable one), and the `route`, `shift` and `route_back` steps
//! (by address) that blue-green and canary deploys wrote before every strategy ran one loop.

use std::net::SocketAddr;

use serde::Serialize;

use crate::model::*;
use crate::seams::{DrainHandle, Reload};

/// A serve set by instance id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Served {
    pub stable: Vec<String>,
    /// The canary track's instances and weight in hundredths of a percent.
    pub canary: Option<(Vec<String>, u32)>,
}

/// What a journal says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Folded {
    /// Every instance the deployment started or restarted, and those live before it, as last
    /// recorded.
    pub known: Vec<Instance>,
    /// What nginx served at the last confirmed route change (at first: what was live).
    pub confirmed: Served,
    /// A route change journaled and not confirmed: nginx serves this or `confirmed`.
    pub pending: Option<Served>,
    /// The last confirmed route change whose old workers were not seen drained.
    pub undrained: Option<Reload>,
    /// Why the deployment failed, if it decided so.
    pub failing: Option<(Cause, String)>,
    /// Left paused after a failed batch (`on_failure = "pause"`).
    pub halted: bool,
    /// Confirmed route changes.
    pub reloads: u32,
    /// The last step written, `begin` if none.
    pub last_step: &'static str,
}

impl Folded {
    /// The instances of `ids` this journal knows, in order.
    pub fn instances(&self, ids: &[String]) -> Vec<Instance> {
        ids.iter()
            .filter_map(|id| self.known.iter().find(|k| &k.id == id).cloned())
            .collect()
    }

    fn at(&self, backends: &[SocketAddr], started: bool, deployment: DeploymentId) -> Vec<String> {
        let from_here = |i: &&Instance| (i.deployment == deployment) == started;
        backends
            .iter()
            .filter_map(|a| {
                let mut matching = self.known.iter().filter(|i| i.addr() == *a);
                let pick = matching.clone().find(from_here).or_else(|| matching.next());
                pick.map(|i| i.id.clone())
            })
            .collect()
    }
}

/// Folds deployment `id`'s journal over `live`, the instances nginx served before it.
pub fn fold(id: DeploymentId, journal: &[JournalEntry], live: &[Instance]) -> Folded {
    let mut f = Folded {
        known: live.to_vec(),
        confirmed: Served {
            stable: live.iter().map(|i| i.id.clone()).collect(),
            canary: None,
        },
        last_step: "begin",
        ..Folded::default()
    };
    for entry in journal {
        f.last_step = entry.step.name();
        step(&mut f, id, &entry.step);
    }
    f
}

fn step(f: &mut Folded, id: DeploymentId, step: &Step) {
    match step {
        Step::InstanceStarted { instance } | Step::RestartInstance { instance } => {
            f.known.retain(|k| k.id != instance.id);
            f.known.push(instance.clone());
        }
        Step::Serve {
            instances, canary, ..
        } => {
            f.pending = Some(Served {
                stable: instances.clone(),
                canary: canary.as_ref().map(|c| (c.instances.clone(), c.weight_bp)),
            })
        }
        Step::Route { backends } => {
            f.pending = Some(Served {
                stable: f.at(backends, true, id),
                canary: None,
            })
        }
        Step::RouteBack { backends } => {
            f.pending = Some(Served {
                stable: f.at(backends, false, id),
                canary: None,
            })
        }
        Step::Shift {
            weight_bp,
            backends,
        } => {
            f.pending = Some(Served {
                stable: f.confirmed.stable.clone(),
                canary: Some((f.at(backends, true, id), *weight_bp)),
            })
        }
        Step::Routed { generation, drain }
        | Step::Shifted {
            generation, drain, ..
        } => confirm(f, *generation, drain),
        Step::RoutedBack { generation } => confirm(f, *generation, &DrainHandle::default()),
        Step::Drained { .. } => f.undrained = None,
        Step::Failing { cause, reason } => f.failing = Some((*cause, reason.clone())),
        Step::Halted { .. } => f.halted = true,
        _ => {}
    }
}

fn confirm(f: &mut Folded, generation: u64, drain: &DrainHandle) {
    if let Some(pending) = f.pending.take() {
        f.confirmed = pending;
        f.reloads += 1;
        f.undrained = Some(Reload {
            generation,
            drain: drain.clone(),
            confirm_ms: 0,
        });
    }
}
