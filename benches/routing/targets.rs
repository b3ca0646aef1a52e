//! The targets table ([`print_targets`]): each of issue 9's targets, whether this run met
//! it, and the numbers it was judged on.

use crate::common::{spread, Table};
use crate::flows::{Flow, PAIRINGS, STRATEGIES};
use crate::row::Row;
use crate::scale::Scale;
use crate::tables::{select, strategy_name, values};
use crate::Plan;

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT MET"
    }
}

pub fn print_targets(plan: &Plan, rows: &[Row], scale: Option<&Scale>) {
    let mut t = Table::new(&["target", "result", "numbers"]);
    if plan.deploys {
        let dynamic: Vec<&Row> = rows.iter().filter(|r| r.flow == Flow::Dynamic).collect();
        let mut zero = true;
        let mut words = Vec::new();
        for s in STRATEGIES {
            for p in PAIRINGS {
                let rs = select(rows, Flow::Dynamic, s, Some(p));
                let failed: u64 = rs.iter().map(|r| r.wrk.failed).sum();
                zero &= failed == 0 && rs.len() >= 20;
                words.push(format!(
                    "{} wrk {}: {failed} in {}",
                    strategy_name(s),
                    p.wrk_method(),
                    rs.len()
                ));
            }
        }
        t.row(vec![
            "0 failed with wrk in every dynamic row over ≥ 20 deploys".into(),
            verdict(zero).into(),
            words.join("; "),
        ]);
        let cut = values(&dynamic, |r| r.route_to_first_new_ms);
        let decided = values(&dynamic, |r| r.healthy_to_first_new_ms);
        let worst = |v: &[f64]| v.iter().copied().fold(f64::MIN, f64::max);
        let median = |v: &[f64]| spread(v.to_vec()).map_or(f64::NAN, |s| s.median);
        t.row(vec![
            "cutover under 5 ms (route event → first new-version response)".into(),
            verdict(!cut.is_empty() && worst(&cut) < 5.0).into(),
            format!(
                "median {:.1} ms, max {:.1} ms; healthy → first new: median {:.1}, max {:.1}",
                median(&cut),
                worst(&cut),
                median(&decided),
                worst(&decided)
            ),
        ]);
        let extra = dynamic
            .iter()
            .filter(|r| r.workers.most > r.workers_at_rest || r.workers.started > 0)
            .count();
        t.row(vec![
            "no extra nginx workers in dynamic rows".into(),
            verdict(extra == 0).into(),
            format!("{extra} of {} dynamic deploys saw more", dynamic.len()),
        ]);
    }
    if let Some(s) = scale {
        let median = |v: &[f64]| spread(v.to_vec()).map_or(f64::NAN, |s| s.median);
        let max = |v: &[f64]| v.iter().copied().fold(f64::MIN, f64::max);
        t.row(vec![
            "one dynamic route change < 10 ms (100 × 10)".into(),
            verdict(median(&s.route_change_ms) < 10.0).into(),
            format!(
                "median {:.1} ms, max {:.1} ms over {}",
                median(&s.route_change_ms),
                max(&s.route_change_ms),
                s.route_change_ms.len()
            ),
        ]);
        t.row(vec![
            "structural reload of 100 services < 1 s".into(),
            verdict(max(&s.structural_ms) < 1000.0).into(),
            format!(
                "median {:.0} ms, max {:.0} ms over {}",
                median(&s.structural_ms),
                max(&s.structural_ms),
                s.structural_ms.len()
            ),
        ]);
    }
    t.print();
}
