//! Part `disruption`: does what a deploy records about itself match what a client saw? Four
//! hosts ([`ROUTINGS`]): `[proxy] routing = "reload"` (each route change reloads nginx, whose
//! exiting workers close keep-alive connections), `routing = "dynamic"`, and twice dynamic
//! routing whose old replicas are stopped and exit at once, with requests in flight, once
//! under GETs and once under POSTs; each round, each deploys blue-green and rolling
//! (`max_surge = 1`, 4 route changes) through the CLI under `wrk -t2 -c64`, started [`WARM`]
//! before the command and stopped [`SETTLE`] after it. A [`Row`] holds, for one deploy, what
//! wrk counted failing over its run, what the deploy recorded (`switchyard history --output
//! json`: its window, `started_ms` to `finished_ms`), and what nginx's access log holds over
//! wrk's whole run, counted by the same code ([`measure`]) so that a gap splits into
//! "outside the deploy's window" and "never in the log".

use std::collections::BTreeMap;
use std::io::{BufRead, Seek};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;
use switchyard_app::evidence::disruption::{failed_at_proxy, measure};
use switchyard_app::sandbox::SandboxOptions;
use switchyard_engine::config::RuntimeChoice;
use switchyard_nginx::tailer::{parse_line, ProxyRecord};

use crate::common::*;
use crate::host::{Driver, Host, WEB};
use crate::{Recorded, CONNECTIONS, LATENCY_MS, REPLICAS, WRK_THREADS};

const WARM: Duration = Duration::from_millis(1000);
const SETTLE: Duration = Duration::from_millis(1000);
/// The hosts: reload routing, dynamic routing, and dynamic routing with old replicas that
/// are stopped at once and exit at once (`drain.timeout = "0s"`, the demo-app's
/// `SHUTDOWN_GRACE_MS=0`), so that requests in flight at the stop do fail at the proxy:
/// under GETs, which nginx sends again to another peer, and under POSTs, which it does not.
pub const ROUTINGS: [&str; 4] = [
    "reload",
    "dynamic",
    "dynamic, abrupt stop",
    "dynamic, abrupt stop, POST",
];
/// The body of each POST.
const POST_BODY: usize = 256;
pub const STRATEGIES: [&str; 2] = ["blue-green", "rolling"];

#[derive(Debug, Serialize)]
pub struct Row {
    pub routing: &'static str,
    pub strategy: &'static str,
    pub round: usize,
    pub deployment: i64,
    pub wrk: WrkReport,
    /// What the deploy recorded about itself.
    pub recorded: Recorded,
    /// The access log over wrk's run, from just before wrk started to just after it stopped.
    pub logged_over_wrk: Recorded,
    /// The failed requests of that stretch of the log by [`class`]: when they were logged
    /// (before, during or after the deploy's window), the status and the upstream attempts.
    pub failures_in_log: BTreeMap<String, u64>,
}

pub async fn run(app: &Path, rounds: usize) -> anyhow::Result<Vec<Row>> {
    let scripts = tempfile::tempdir().context("a directory for the wrk script")?;
    let post = post_script(scripts.path(), POST_BODY)?;
    let mut hosts = Vec::new();
    for routing in ROUTINGS {
        let abrupt = routing.contains("abrupt stop");
        let mut options = SandboxOptions::new(RuntimeChoice::Process, app.to_owned())
            .replicas(REPLICAS)
            .env("LATENCY_MS", &LATENCY_MS.to_string())
            .routing(routing.split(',').next().unwrap_or(routing))
            .strategy("blue-green", "max_surge = 1\nmax_unavailable = 0");
        // Reload routing lets the old workers finish for at most the drain timeout; the
        // sandbox's 10 s would hold each rolling batch that long.
        options.drain_timeout = if abrupt { "0s" } else { "3s" }.into();
        if abrupt {
            options = options.env("SHUTDOWN_GRACE_MS", "0");
        }
        let host = Host::start(options, 0, false)
            .await
            .with_context(|| format!("the {routing} host"))?;
        let script = routing.ends_with("POST").then_some(post.as_path());
        hosts.push((routing, host, script));
    }
    let rows = rounds_of(&hosts, rounds).await;
    for (routing, host, _) in hosts {
        if let Err(e) = host.shutdown().await {
            eprintln!("shutting the {routing} host down: {e:#}");
        }
    }
    let rows = rows?;
    print(&rows);
    Ok(rows)
}

/// A host, its name in [`ROUTINGS`], and wrk's script there.
type Lane<'s> = (&'static str, Host, Option<&'s Path>);

async fn rounds_of(hosts: &[Lane<'_>], rounds: usize) -> anyhow::Result<Vec<Row>> {
    for (routing, host, _) in hosts {
        host.deploy(Driver::Cli, WEB, "v0", None)
            .await
            .with_context(|| format!("the first {routing} deploy"))?;
    }
    let mut rows = Vec::new();
    for round in 0..rounds {
        for (routing, host, script) in hosts {
            for strategy in STRATEGIES {
                let row = measure_one(host, routing, *script, strategy, round)
                    .await
                    .with_context(|| format!("round {round}, {routing} {strategy}"))?;
                eprintln!(
                    "disruption round {round} {routing} {strategy}: deploy #{}: wrk {} failed \
                     of {} (read {}, non-2xx {}), recorded {} of {}, log over wrk's run {} of {}",
                    row.deployment,
                    row.wrk.failed,
                    row.wrk.requests,
                    row.wrk.read,
                    row.wrk.non_2xx_3xx,
                    row.recorded.failed,
                    row.recorded.requests,
                    row.logged_over_wrk.failed,
                    row.logged_over_wrk.requests
                );
                rows.push(row);
            }
        }
    }
    Ok(rows)
}

async fn measure_one(
    host: &Host,
    routing: &'static str,
    script: Option<&Path>,
    strategy: &'static str,
    round: usize,
) -> anyhow::Result<Row> {
    let slug: String = routing
        .chars()
        .filter_map(|c| match c {
            ',' => None,
            ' ' => Some('-'),
            c => Some(c.to_ascii_lowercase()),
        })
        .collect();
    let version = format!("{slug}-{strategy}-{round}");
    let url = host.sandbox.url();
    let log = &host.sandbox.live().router.layout.access_log;
    let log_from = std::fs::metadata(log).map_or(0, |m| m.len());
    let from_ms = unix_ms();
    let (report, deployed) = under_wrk(
        &url,
        (WRK_THREADS, CONNECTIONS),
        (WARM, SETTLE),
        script,
        host.deploy(Driver::Cli, WEB, &version, Some(strategy)),
    )
    .await?;
    // nginx logs a request wrk abandoned (499) when it notices, a moment after.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let to_ms = unix_ms();
    deployed?;
    let record = host.last_deployment(WEB).await?;
    if record["to_version"] != version.as_str() {
        bail!("the newest deployment is not {version}: {record}");
    }
    let over_wrk =
        measure(log, WEB, from_ms, to_ms).with_context(|| format!("reading {}", log.display()))?;
    let recorded = Recorded::of(&record)?;
    let mut failures_in_log = BTreeMap::new();
    for r in records_from(log, log_from)? {
        if r.service == WEB && failed_at_proxy(&r) {
            *failures_in_log.entry(class(&r, &recorded)).or_default() += 1;
        }
    }
    Ok(Row {
        routing,
        strategy,
        round,
        deployment: record["id"].as_i64().unwrap_or(0),
        wrk: report,
        recorded,
        logged_over_wrk: Recorded::from(&over_wrk),
        failures_in_log,
    })
}

/// The records of `log` from byte `offset` on (nothing rotates it: no serve runs here).
fn records_from(log: &Path, offset: u64) -> anyhow::Result<Vec<ProxyRecord>> {
    let mut file =
        std::fs::File::open(log).with_context(|| format!("opening {}", log.display()))?;
    file.seek(std::io::SeekFrom::Start(offset))?;
    let mut records = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        if let Ok(record) = parse_line(&line?) {
            records.push(record);
        }
    }
    Ok(records)
}

/// `after the deploy: 499, upstream 499` — when a failed request was logged against the
/// deploy's recorded window, what the client got and each upstream attempt's status (`-`
/// for none).
fn class(r: &ProxyRecord, deploy: &Recorded) -> String {
    let at = (r.time * 1000.0).round() as i64;
    let when = if at < deploy.from_ms {
        "before the deploy"
    } else if at > deploy.to_ms {
        "after the deploy"
    } else {
        "during the deploy"
    };
    let attempts: Vec<String> = r
        .attempts
        .iter()
        .map(|a| a.status.map_or("-".into(), |s| s.to_string()))
        .collect();
    format!("{when}: {}, upstream {}", r.status, attempts.join(" then "))
}

fn print(rows: &[Row]) {
    println!(
        "### disruption: self-measured against wrk, {REPLICAS} replicas, CLI deploys under \
         wrk -t{WRK_THREADS} -c{CONNECTIONS}\n"
    );
    let mut table = Table::new(&[
        "routing",
        "strategy",
        "deploys",
        "wrk requests",
        "wrk failed (read/non-2xx)",
        "self-measured failed",
        "deploys where they agree",
        "access log, wrk's whole run: failed of requests",
    ]);
    for routing in ROUTINGS {
        for strategy in STRATEGIES {
            let mine: Vec<&Row> = rows
                .iter()
                .filter(|r| r.routing == routing && r.strategy == strategy)
                .collect();
            let sum = |f: &dyn Fn(&Row) -> u64| mine.iter().map(|r| f(r)).sum::<u64>();
            let agree = mine
                .iter()
                .filter(|r| r.recorded.failed == r.wrk.failed)
                .count();
            table.row(vec![
                routing.to_owned(),
                strategy.to_owned(),
                mine.len().to_string(),
                sum(&|r| r.wrk.requests).to_string(),
                format!(
                    "**{}** ({}/{})",
                    sum(&|r| r.wrk.failed),
                    sum(&|r| r.wrk.read),
                    sum(&|r| r.wrk.non_2xx_3xx)
                ),
                format!(
                    "**{}** of {}",
                    sum(&|r| r.recorded.failed),
                    sum(&|r| r.recorded.requests)
                ),
                format!("{agree} of {}", mine.len()),
                format!(
                    "{} of {}",
                    sum(&|r| r.logged_over_wrk.failed),
                    sum(&|r| r.logged_over_wrk.requests)
                ),
            ]);
        }
    }
    table.print();
    println!("Per deploy (wrk failed / self-measured failed):\n");
    let mut each = Table::new(&["routing", "strategy", "deploys: wrk / self-measured"]);
    for routing in ROUTINGS {
        for strategy in STRATEGIES {
            let pairs: Vec<String> = rows
                .iter()
                .filter(|r| r.routing == routing && r.strategy == strategy)
                .map(|r| format!("{}/{}", r.wrk.failed, r.recorded.failed))
                .collect();
            each.row(vec![routing.into(), strategy.into(), pairs.join(", ")]);
        }
    }
    each.print();
    println!("Failed requests in the access log over wrk's runs, by when and how:\n");
    let mut classes = Table::new(&["routing", "strategy", "class", "requests"]);
    for routing in ROUTINGS {
        for strategy in STRATEGIES {
            let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
            for r in rows
                .iter()
                .filter(|r| r.routing == routing && r.strategy == strategy)
            {
                for (class, n) in &r.failures_in_log {
                    *counts.entry(class).or_default() += n;
                }
            }
            for (class, n) in counts {
                classes.row(vec![
                    routing.into(),
                    strategy.into(),
                    class.into(),
                    n.to_string(),
                ]);
            }
        }
    }
    classes.print();
}
