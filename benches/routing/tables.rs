//! The deploy tables: failed requests per strategy, flow and pairing ([`print_failures`]),
//! timing and nginx workers ([`print_timing`]), the cutover ([`print_cutover`]), all under
//! [`print_deploys`], and the cell formats and row selection [`crate::targets`] shares.

use crate::common::{num, spread, Table};
use crate::flows::{Flow, Pairing, Strategy, FLOWS, PAIRINGS, STRATEGIES};
use crate::row::Row;
use crate::{Plan, CONNECTIONS, LATENCY_MS, REPLICAS, WRK_THREADS};

pub fn values(rows: &[&Row], pick: impl Fn(&Row) -> Option<f64>) -> Vec<f64> {
    rows.iter().filter_map(|r| pick(r)).collect()
}

fn flat(rows: &[&Row], pick: impl Fn(&Row) -> &[f64]) -> Vec<f64> {
    rows.iter().flat_map(|r| pick(r).iter().copied()).collect()
}

/// "median (p25–p75; min–max)", or "–".
fn cell(values: Vec<f64>) -> String {
    match spread(values) {
        None => "–".into(),
        Some(s) => format!(
            "{} ({}–{}; {}–{})",
            num(s.median),
            num(s.p25),
            num(s.p75),
            num(s.min),
            num(s.max)
        ),
    }
}

/// "median (min–max)", or "–".
fn short(values: Vec<f64>) -> String {
    match spread(values) {
        None => "–".into(),
        Some(s) => format!("{} ({}–{})", num(s.median), num(s.min), num(s.max)),
    }
}

pub fn strategy_name(s: Strategy) -> &'static str {
    s.kind().as_str()
}

pub fn select(rows: &[Row], flow: Flow, s: Strategy, p: Option<Pairing>) -> Vec<&Row> {
    rows.iter()
        .filter(|r| r.flow == flow && r.strategy == strategy_name(s))
        .filter(|r| p.is_none_or(|p| r.wrk_method == p.wrk_method()))
        .collect()
}

pub fn print_deploys(plan: &Plan, rows: &[Row]) {
    println!(
        "{REPLICAS} replicas of the demo-app as processes (LATENCY_MS={LATENCY_MS}); per deploy, \
         fresh loads running together: wrk -t{WRK_THREADS} -c{CONNECTIONS} with one method and \
         the generator ({CONNECTIONS} keep-alive connections, never re-sending) with the other; \
         {} dynamic deploys per strategy and pairing, {} naive and reload\n",
        plan.dynamic_deploys, plan.other_deploys
    );
    let before: u64 = rows.iter().map(|r| r.own_failed_before).sum();
    println!(
        "{} deploys; of the generator's failed requests, {before} were sent before a deploy \
         was called (warm-up and settle)\n",
        rows.len()
    );
    print_failures(rows);
    print_timing(rows);
    print_cutover(rows);
    let failed: Vec<&Row> = rows.iter().filter(|r| r.error.is_some()).collect();
    for r in &failed {
        println!(
            "DEPLOY FAILED: {} {} round {}: {}",
            r.flow.name(),
            r.strategy,
            r.round,
            r.error.as_deref().unwrap_or_default()
        );
    }
    for r in rows
        .iter()
        .filter(|r| r.flow != Flow::Naive && r.own_failed > 0)
    {
        println!(
            "{} {} round {} own-generator failures: {:?}",
            r.flow.name(),
            r.strategy,
            r.round,
            r.own_failures
        );
    }
}

fn print_failures(rows: &[Row]) {
    println!("Failed requests, each client's whole run around each deploy:\n");
    let mut t = Table::new(&[
        "strategy",
        "routing",
        "wrk",
        "own",
        "deploys",
        "wrk requests",
        "wrk failed",
        "wrk failed/deploy (min–max)",
        "wrk connect/read/write/timeout/non-2xx",
        "own requests",
        "own failed",
        "own failed/deploy (min–max)",
        "own p99 steady ms",
        "own p99 during ms",
    ]);
    for s in STRATEGIES {
        for flow in FLOWS {
            for p in PAIRINGS {
                let rs = select(rows, flow, s, Some(p));
                if rs.is_empty() {
                    continue;
                }
                let sum = |f: fn(&Row) -> u64| rs.iter().map(|r| f(r)).sum::<u64>();
                t.row(vec![
                    strategy_name(s).into(),
                    flow.name().into(),
                    p.wrk_method().into(),
                    p.own_method().into(),
                    rs.len().to_string(),
                    sum(|r| r.wrk.requests).to_string(),
                    format!("**{}**", sum(|r| r.wrk.failed)),
                    short(values(&rs, |r| Some(r.wrk.failed as f64))),
                    format!(
                        "{}/{}/{}/{}/{}",
                        sum(|r| r.wrk.connect),
                        sum(|r| r.wrk.read),
                        sum(|r| r.wrk.write),
                        sum(|r| r.wrk.timeout),
                        sum(|r| r.wrk.non_2xx_3xx)
                    ),
                    sum(|r| r.own_requests).to_string(),
                    format!("**{}**", sum(|r| r.own_failed)),
                    short(values(&rs, |r| Some(r.own_failed as f64))),
                    short(values(&rs, |r| r.p99_steady_ms)),
                    short(values(&rs, |r| r.p99_during_ms)),
                ]);
            }
        }
    }
    t.print();
}

fn print_timing(rows: &[Row]) {
    println!("Per deploy, both pairings together: median (min–max):\n");
    let mut t = Table::new(&[
        "strategy",
        "routing",
        "deploys",
        "wall ms",
        "route changes",
        "first route: router confirm ms",
        "route → old peers idle (drain) ms",
        "old peer idle → stopped ms",
        "nginx workers at rest",
        "peak nginx workers",
        "nginx workers started",
        "worker samples",
    ]);
    for s in STRATEGIES {
        for flow in FLOWS {
            let rs = select(rows, flow, s, None);
            if rs.is_empty() {
                continue;
            }
            t.row(vec![
                strategy_name(s).into(),
                flow.name().into(),
                rs.len().to_string(),
                short(values(&rs, |r| Some(r.wall_ms))),
                short(values(&rs, |r| Some(r.route_changes as f64))),
                short(values(&rs, |r| r.first_route_confirm_ms)),
                short(flat(&rs, |r| &r.drain_ms)),
                short(flat(&rs, |r| &r.idle_to_stopped_ms)),
                short(values(&rs, |r| Some(r.workers_at_rest as f64))),
                short(values(&rs, |r| Some(r.workers.most as f64))),
                short(values(&rs, |r| Some(r.workers.started as f64))),
                short(values(&rs, |r| Some(r.workers.samples as f64))),
            ]);
        }
    }
    t.print();
}

fn print_cutover(rows: &[Row]) {
    println!(
        "Cutover, ms, signed (negative: the new version answered before the event): \
         median (p25–p75; min–max):\n"
    );
    let mut t = Table::new(&[
        "strategy",
        "routing",
        "deploys",
        "route event → first new-version response",
        "healthy → first new-version response",
    ]);
    for s in STRATEGIES {
        for flow in FLOWS {
            let rs = select(rows, flow, s, None);
            if rs.is_empty() {
                continue;
            }
            t.row(vec![
                strategy_name(s).into(),
                flow.name().into(),
                rs.len().to_string(),
                cell(values(&rs, |r| r.route_to_first_new_ms)),
                cell(values(&rs, |r| r.healthy_to_first_new_ms)),
            ]);
        }
    }
    t.print();
}
