//! `cargo bench --bench control`: operating switchyard from anywhere (issue 12), measured.
//!
//! Each part runs its own [`host::Host`]: a sandbox (managed nginx, the demo-app as local
//! processes answering after [`LATENCY_MS`]) whose API is opened with a token file, the
//! `switchyard` binary as a child process for every deploy and history read, and, where the
//! part needs it, `switchyard serve` as a process of its own. The front is loaded by
//! `wrk -t2 -c64 --timeout 5s`, which never re-sends; its socket errors and non-2xx/3xx
//! answers are failed requests.
//!
//! - `api` (`control/api.rs`): blue-green deploys driven by the CLI and by the API
//!   (`switchyard --remote`: `POST …/deploy`, then the event stream to its `end`),
//!   alternating; wall time, the engine's time, and failed requests, which must be 0.
//! - `disruption` (`control/disruption.rs`): what each deploy recorded about its own
//!   disruption against what wrk saw, with reload and with dynamic routing.
//! - `status` (`control/status.rs`): `GET /api/v1/status` latency and serve's CPU per
//!   answer with 1 and 8 services, the front under load.
//!
//! Knobs: `SWITCHYARD_BENCH_ROUNDS` (rounds of `api` and `disruption`, default 8),
//! `SWITCHYARD_BENCH_STATUS_REQUESTS` (default 500), `SWITCHYARD_BENCH_PARTS` (`api`,
//! `disruption`, `status`; default all). Every row goes to `target/bench-control.json`.
//! Needs nginx with its Lua module, `/usr/bin/wrk` and the demo-app
//! (`scripts/build-demo-app`); not Docker.

#[path = "control/api.rs"]
mod api;
mod common;
#[path = "control/disruption.rs"]
mod disruption;
#[path = "control/host.rs"]
mod host;
#[path = "control/status.rs"]
mod status;

use std::path::Path;

use anyhow::{bail, Context};
use serde::Serialize;
use switchyard_app::evidence::Disruption;

use common::*;

const REPLICAS: u16 = 4;
const LATENCY_MS: u32 = 20;
const CONNECTIONS: usize = 64;
const WRK_THREADS: usize = 2;

/// Requests and failures at the proxy in one window, as a deploy recorded them or as the
/// bench counted them from the access log with the same code.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Recorded {
    pub requests: u64,
    pub failed: u64,
    pub from_ms: i64,
    pub to_ms: i64,
}

impl Recorded {
    /// The `disruption` of a deployment as `history --output json` lists it.
    fn of(record: &serde_json::Value) -> anyhow::Result<Recorded> {
        let d: Disruption = serde_json::from_value(record["disruption"].clone())
            .with_context(|| format!("no disruption recorded: {record}"))?;
        Ok(Recorded::from(&d))
    }
}

impl From<&Disruption> for Recorded {
    fn from(d: &Disruption) -> Recorded {
        let total = d.during.total();
        Recorded {
            requests: total.requests,
            failed: total.failed,
            from_ms: d.during.from_ms,
            to_ms: d.during.to_ms,
        }
    }
}

#[derive(Default, Serialize)]
struct Report {
    machine: Option<Machine>,
    api: Vec<api::Row>,
    disruption: Vec<disruption::Row>,
    status: Vec<status::Row>,
}

fn main() -> anyhow::Result<()> {
    block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let rounds = knob("SWITCHYARD_BENCH_ROUNDS", 8)?;
    let requests = knob("SWITCHYARD_BENCH_STATUS_REQUESTS", 500)?;
    let parts = bench_parts(&["api", "disruption", "status"])?;
    let app = demo_app()?;
    if !Path::new(WRK).exists() {
        bail!("wrk not found at {WRK}: install it with scripts/install-deps (Debian package wrk)");
    }
    let machine = Machine::read().await;
    println!("{}\n", machine.line());
    let mut report = Report {
        machine: Some(machine),
        ..Report::default()
    };
    let mut result = Ok(());
    for part in parts {
        let done = match part {
            "api" => api::run(&app, rounds).await.map(|rows| report.api = rows),
            "disruption" => disruption::run(&app, rounds)
                .await
                .map(|rows| report.disruption = rows),
            _ => status::run(&app, requests)
                .await
                .map(|rows| report.status = rows),
        };
        if let Err(e) = done {
            result = Err(e.context(format!("part {part}")));
            break;
        }
    }
    let path = json_path("bench-control.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    result?;
    let failed: u64 = report.api.iter().map(|r| r.wrk.failed).sum();
    if failed > 0 {
        bail!("{failed} requests failed under wrk in the api part: it must be 0");
    }
    Ok(())
}
