//! The rows of the strategies bench: a [`Flow`] and the service it deploys ([`Case`]), and
//! the rows a list of names asks for ([`cases`]).

use std::path::Path;

use switchyard_app::sandbox::SandboxOptions;
use switchyard_engine::config::{RuntimeChoice, StrategyKind};

use crate::{CANARY, LATENCY_MS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Engine(StrategyKind),
    Naive,
}

/// One row: a flow and the service it deploys.
#[derive(Debug, Clone)]
pub struct Case {
    name: &'static str,
    pub flow: Flow,
    pub replicas: u16,
    pub max_surge: u16,
    pub max_unavailable: u16,
    /// Only for the batches table.
    pub batches_only: bool,
    /// Shown in the batches table.
    pub in_batches: bool,
    /// The `in-place-1` table: one replica, `allow_downtime = true`.
    pub one_replica: bool,
}

impl Case {
    fn new(name: &'static str, flow: Flow, replicas: u16) -> Case {
        Case {
            name,
            flow,
            replicas,
            max_surge: 0,
            max_unavailable: 0,
            batches_only: false,
            in_batches: false,
            one_replica: false,
        }
    }

    fn rolling(name: &'static str, kind: StrategyKind, replicas: u16, surge: u16) -> Case {
        Case {
            max_surge: surge,
            max_unavailable: u16::from(surge == 0),
            ..Case::new(name, Flow::Engine(kind), replicas)
        }
    }

    pub fn label(&self) -> String {
        if self.batches_only {
            format!(
                "rolling, {} replicas, max_surge {}",
                self.replicas, self.max_surge
            )
        } else {
            self.name.to_owned()
        }
    }

    pub fn options(&self, binary: &Path) -> SandboxOptions {
        let base = SandboxOptions::new(RuntimeChoice::Docker, binary.to_owned())
            .replicas(self.replicas)
            .env("LATENCY_MS", &LATENCY_MS.to_string());
        if self.one_replica {
            return base.strategy("in-place", "allow_downtime = true");
        }
        match self.flow {
            Flow::Naive => base,
            Flow::Engine(StrategyKind::Canary) => SandboxOptions {
                canary: CANARY.to_owned(),
                ..base.strategy("canary", "")
            },
            Flow::Engine(StrategyKind::BlueGreen) => base.strategy("blue-green", ""),
            Flow::Engine(kind) => base.strategy(
                kind.as_str(),
                &format!(
                    "max_surge = {}\nmax_unavailable = {}",
                    self.max_surge, self.max_unavailable
                ),
            ),
        }
    }
}

/// The rows asked for. The batches table reuses the main table's rolling row (max_surge 1)
/// when that runs, and adds max_surge 2 and `replicas`, and 2 replicas with max_surge 1.
pub fn cases(rows: &[String], replicas: u16) -> Vec<Case> {
    let wanted = |name: &str| rows.iter().any(|r| r == name);
    let mut cases = Vec::new();
    let main = [
        ("blue-green", Flow::Engine(StrategyKind::BlueGreen)),
        ("canary", Flow::Engine(StrategyKind::Canary)),
        ("rolling", Flow::Engine(StrategyKind::Rolling)),
        ("in-place", Flow::Engine(StrategyKind::InPlace)),
        ("naive", Flow::Naive),
    ];
    for (name, flow) in main {
        if !wanted(name) {
            continue;
        }
        cases.push(match flow {
            Flow::Engine(StrategyKind::Rolling) => Case {
                in_batches: wanted("batches"),
                ..Case::rolling(name, StrategyKind::Rolling, replicas, 1)
            },
            Flow::Engine(StrategyKind::InPlace) => {
                Case::rolling(name, StrategyKind::InPlace, replicas, 0)
            }
            _ => Case::new(name, flow, replicas),
        });
    }
    if wanted("batches") {
        cases.extend(batch_cases(replicas, wanted("rolling")));
    }
    if wanted("in-place-1") {
        cases.push(Case {
            one_replica: true,
            ..Case::rolling("in-place-1", StrategyKind::InPlace, 1, 0)
        });
    }
    cases
}

/// The batches table's own rows: max_surge 1 (unless the main table's `rolling` row
/// already runs it), 2 and `replicas` at `replicas`, and 2 replicas with max_surge 1.
fn batch_cases(replicas: u16, rolling_runs: bool) -> Vec<Case> {
    let mut more: Vec<(u16, u16)> = Vec::new();
    for surge in [1, 2, replicas] {
        let reused = surge == 1 && rolling_runs;
        if surge <= replicas && !reused && !more.contains(&(replicas, surge)) {
            more.push((replicas, surge));
        }
    }
    if replicas > 2 {
        more.push((2, 1));
    }
    more.into_iter()
        .map(|(replicas, surge)| Case {
            batches_only: true,
            in_batches: true,
            ..Case::rolling("rolling", StrategyKind::Rolling, replicas, surge)
        })
        .collect()
}
