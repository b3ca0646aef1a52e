//! The strategies bench's first two tables, [`print_strategies`] and [`print_phases`], the
//! batches table with its least-squares [`fit`] ([`print_batches`]), the run-by-run
//! problems ([`print_problems`]), and the cell formats every table shares.

use switchyard_engine::deploy::rolling::RolloutReport;

use crate::case::Case;
use crate::common::{num, spread, Table};
use crate::run::{PhaseTimes, Run};

pub fn runs_of<'r>(case: &Case, runs: &'r [Run]) -> Vec<&'r Run> {
    let label = case.label();
    runs.iter().filter(|r| r.case == label).collect()
}

pub fn median(values: Vec<f64>) -> String {
    spread(values).map_or("–".to_owned(), |s| num(s.median))
}

pub fn min_max(values: Vec<f64>) -> String {
    spread(values).map_or("–".to_owned(), |s| {
        format!("{}–{}", num(s.min), num(s.max))
    })
}

/// One value when every run agrees, else the range.
pub fn range(values: Vec<f64>) -> String {
    spread(values).map_or("–".to_owned(), |s| {
        if s.min == s.max {
            num(s.min)
        } else {
            format!("{}–{}", num(s.min), num(s.max))
        }
    })
}

pub fn ok_runs(runs: &[&Run]) -> String {
    let ok = runs.iter().filter(|r| r.error.is_none()).count();
    if ok == runs.len() {
        ok.to_string()
    } else {
        format!("{ok} ok of {}", runs.len())
    }
}

pub fn print_strategies(cases: &[&Case], runs: &[Run]) {
    let mut table = Table::new(&[
        "strategy",
        "runs",
        "req/s",
        "failed",
        "failed/run",
        "retried",
        "wall ms",
        "wall min–max",
        "peak extra containers",
        "fewest running",
        "p99 steady ms",
        "p99 during ms",
        "reloads",
    ]);
    for case in cases {
        let rs = runs_of(case, runs);
        let col = |value: &dyn Fn(&Run) -> f64| rs.iter().map(|r| value(r)).collect::<Vec<_>>();
        table.row(vec![
            case.label(),
            ok_runs(&rs),
            median(col(&|r| r.requests_per_second.round())),
            rs.iter().map(|r| r.failed).sum::<u64>().to_string(),
            median(col(&|r| r.failed as f64)),
            rs.iter().map(|r| r.retried).sum::<u64>().to_string(),
            median(col(&|r| r.wall_ms)),
            min_max(col(&|r| r.wall_ms)),
            range(col(&|r| r.peak_running as f64 - f64::from(r.replicas))),
            range(col(&|r| r.fewest_running as f64)),
            median(rs.iter().filter_map(|r| r.p99_steady_ms).collect()),
            median(rs.iter().filter_map(|r| r.p99_during_ms).collect()),
            range(col(&|r| r.reloads as f64)),
        ]);
    }
    table.print();
}

pub fn print_phases(cases: &[&Case], runs: &[Run]) {
    println!("where the deploy wall time goes (median ms per run)\n");
    let mut table = Table::new(&[
        "strategy",
        "wall",
        "lock",
        "start containers",
        "health wait",
        "reloads",
        "canary holds",
        "drain",
        "stop old",
        "finish",
    ]);
    for case in cases {
        let rs = runs_of(case, runs);
        let col = |value: &dyn Fn(&PhaseTimes) -> f64| {
            median(rs.iter().map(|r| value(&r.phases)).collect())
        };
        table.row(vec![
            case.label(),
            median(rs.iter().map(|r| r.wall_ms).collect()),
            col(&|p| p.lock),
            col(&|p| p.start),
            col(&|p| p.health),
            col(&|p| p.reload),
            col(&|p| p.hold),
            col(&|p| p.drain),
            col(&|p| p.stop),
            col(&|p| p.finish),
        ]);
    }
    table.print();
}

pub fn print_batches(cases: &[&Case], runs: &[Run], replicas: u16) {
    println!("rolling (max_unavailable 0): wall time against batches\n");
    let mut table = Table::new(&[
        "replicas",
        "max_surge",
        "batches",
        "runs",
        "wall ms",
        "wall min–max",
        "ms per batch",
        "start per batch",
        "health per batch",
        "reload per batch",
        "drain per batch",
        "stop per batch",
        "failed",
    ]);
    // (batches, wall ms) of every successful run at `replicas`, for the fit below.
    let mut points: Vec<(f64, f64)> = Vec::new();
    for case in cases {
        let rs = runs_of(case, runs);
        let rollouts: Vec<(&Run, &RolloutReport)> = rs
            .iter()
            .filter_map(|r| r.rollout.as_ref().map(|o| (*r, o)))
            .collect();
        if case.replicas == replicas {
            points.extend(
                rollouts
                    .iter()
                    .map(|(r, o)| (o.batches.len() as f64, r.wall_ms)),
            );
        }
        table.row(batch_row(case, &rs, &rollouts));
    }
    table.print();
    if let Some((a, b, r2)) = fit(&points) {
        println!(
            "least squares over the {} runs with {replicas} replicas: wall ≈ {a:.0} ms + \
             {b:.0} ms × batches (r² = {r2:.3})\n",
            points.len()
        );
    }
}

/// One row of the batches table; times per batch come from the runs whose rollout had
/// batches.
fn batch_row(case: &Case, rs: &[&Run], rollouts: &[(&Run, &RolloutReport)]) -> Vec<String> {
    let per_batch = |value: &dyn Fn(&Run) -> f64| {
        rollouts
            .iter()
            .filter(|(_, o)| !o.batches.is_empty())
            .map(|(r, o)| value(r) / o.batches.len() as f64)
            .collect::<Vec<_>>()
    };
    vec![
        case.replicas.to_string(),
        case.max_surge.to_string(),
        range(
            rollouts
                .iter()
                .map(|(_, o)| o.batches.len() as f64)
                .collect(),
        ),
        ok_runs(rs),
        median(rs.iter().map(|r| r.wall_ms).collect()),
        min_max(rs.iter().map(|r| r.wall_ms).collect()),
        median(per_batch(&|r| r.wall_ms)),
        median(per_batch(&|r| r.phases.start)),
        median(per_batch(&|r| r.phases.health)),
        median(per_batch(&|r| r.phases.reload)),
        median(per_batch(&|r| r.phases.drain)),
        median(per_batch(&|r| r.phases.stop)),
        rs.iter().map(|r| r.failed).sum::<u64>().to_string(),
    ]
}

/// `y = a + b·x` by least squares, and r²; `None` with fewer than two distinct `x`.
fn fit(points: &[(f64, f64)]) -> Option<(f64, f64, f64)> {
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let syy: f64 = points.iter().map(|p| (p.1 - mean_y).powi(2)).sum();
    if points.len() < 2 || sxx == 0.0 {
        return None;
    }
    let b = sxy / sxx;
    let r2 = if syy == 0.0 {
        1.0
    } else {
        sxy * sxy / (sxx * syy)
    };
    Some((mean_y - b * mean_x, b, r2))
}

/// Failed deploys, failed requests and sampling errors, run by run.
pub fn print_problems(cases: &[Case], runs: &[Run]) {
    let mut any = false;
    for case in cases {
        for (n, run) in runs_of(case, runs).iter().enumerate() {
            let mut lines = Vec::new();
            if let Some(e) = &run.error {
                lines.push(format!("deploy failed: {e}"));
            }
            if run.failed > 0 {
                lines.push(format!(
                    "{} failed requests{}; first: {}",
                    run.failed,
                    if case.one_replica {
                        " (expected: the allowed gap)"
                    } else {
                        ""
                    },
                    run.failure_examples.join(" | ")
                ));
            }
            if run.sample_errors > 0 {
                lines.push(format!(
                    "{} of {} container counts failed: {}",
                    run.sample_errors,
                    run.samples + run.sample_errors,
                    run.sample_error.as_deref().unwrap_or("?")
                ));
            }
            for line in lines {
                any = true;
                println!("- {} run {}: {line}", case.label(), n + 1);
            }
        }
    }
    if any {
        println!();
    }
}
