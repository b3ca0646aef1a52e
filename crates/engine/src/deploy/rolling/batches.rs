//! Batch planning for rolling deploys: [`next`] and [`plan`].
//!
//! Counts only, like a Kubernetes Deployment's rolling update: at most `replicas +
//! max_surge` instances run at once, and at least `replicas - max_unavailable` are in the
//! upstream. Each batch starts `add` new replicas, and once they are healthy one reload
//! adds them and takes `remove` old ones out. A batch removes as many old replicas as the
//! floor allows, so in-place (no surge) frees ports for the next batch's replacements.

use serde::Serialize;

/// One batch of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Batch {
    /// New replicas started (and waited for) before the reload.
    pub add: u16,
    /// Old replicas taken out of the upstream by the reload, then drained and stopped.
    pub remove: u16,
}

/// Where a rollout stands: replicas of the target version in the upstream (`fresh`) and
/// replicas still to be replaced (`stale`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub fresh: u16,
    pub stale: u16,
}

/// The rollout's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub replicas: u16,
    pub max_surge: u16,
    pub max_unavailable: u16,
}

/// The next batch from `now`, or `None` when every replica is on the target version.
///
/// # Panics
/// When `max_surge` and `max_unavailable` are both 0 (config loading rejects that).
pub fn next(limits: Limits, now: Counts) -> Option<Batch> {
    let Limits {
        replicas,
        max_surge,
        max_unavailable,
    } = limits;
    let Counts { fresh, stale } = now;
    if fresh >= replicas && stale == 0 {
        return None;
    }
    assert!(
        max_surge + max_unavailable > 0,
        "a rollout with no surge and no unavailability can never move"
    );
    let room = (replicas + max_surge).saturating_sub(fresh + stale);
    let add = replicas.saturating_sub(fresh).min(room);
    let floor = replicas.saturating_sub(max_unavailable);
    let remove = if fresh + add >= replicas {
        stale
    } else {
        stale.min((stale + fresh + add).saturating_sub(floor))
    };
    Some(Batch { add, remove })
}

/// Every batch of a rollout that starts with `stale` replicas of the old version live.
pub fn plan(limits: Limits, stale: u16) -> Vec<Batch> {
    let mut now = Counts { fresh: 0, stale };
    let mut batches = Vec::new();
    while let Some(batch) = next(limits, now) {
        now.fresh += batch.add;
        now.stale -= batch.remove;
        batches.push(batch);
    }
    batches
}

/// Whether some batch of the plan leaves no replica in the upstream (in-place with
/// `max_unavailable = replicas`, one replica in particular).
pub fn has_gap(limits: Limits, stale: u16) -> bool {
    let mut now = Counts { fresh: 0, stale };
    plan(limits, stale).iter().any(|b| {
        let before = now.fresh + now.stale;
        now.fresh += b.add;
        now.stale -= b.remove;
        before > 0 && now.fresh + now.stale == 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(replicas: u16, max_surge: u16, max_unavailable: u16) -> Limits {
        Limits {
            replicas,
            max_surge,
            max_unavailable,
        }
    }

    fn b(add: u16, remove: u16) -> Batch {
        Batch { add, remove }
    }

    #[test]
    fn one_surge_replaces_one_replica_per_batch() {
        assert_eq!(plan(limits(4, 1, 0), 4), [b(1, 1); 4]);
    }

    #[test]
    fn in_place_frees_ports_before_it_fills_them() {
        assert_eq!(
            plan(limits(3, 0, 1), 3),
            [b(0, 1), b(1, 1), b(1, 1), b(1, 0)]
        );
        assert_eq!(plan(limits(4, 0, 2), 4), [b(0, 2), b(2, 2), b(2, 0)]);
    }

    #[test]
    fn surge_and_unavailability_together_take_bigger_batches() {
        assert_eq!(plan(limits(4, 1, 1), 4), [b(1, 2), b(2, 2), b(1, 0)]);
        assert_eq!(plan(limits(4, 4, 0), 4), [b(4, 4)]);
        assert_eq!(plan(limits(4, 2, 0), 4), [b(2, 2), b(2, 2)]);
    }

    #[test]
    fn a_first_deploy_starts_everything_at_once() {
        assert_eq!(plan(limits(3, 1, 0), 0), [b(3, 0)]);
        assert_eq!(plan(limits(3, 0, 1), 0), [b(3, 0)]);
    }

    #[test]
    fn a_changed_replica_count_converges_too() {
        // Growing from 2 to 4 with one surge; shrinking from 4 to 2.
        assert_eq!(plan(limits(4, 1, 0), 2), [b(3, 1), b(1, 1)]);
        assert_eq!(plan(limits(2, 1, 0), 4), [b(0, 2), b(1, 1), b(1, 1)]);
    }

    #[test]
    fn one_replica_in_place_has_a_gap_and_surging_has_none() {
        assert!(has_gap(limits(1, 0, 1), 1));
        assert!(has_gap(limits(3, 0, 3), 3));
        assert!(!has_gap(limits(1, 1, 0), 1));
        assert!(!has_gap(limits(3, 0, 1), 3));
        assert!(!has_gap(limits(3, 0, 1), 0), "nothing was live: no gap");
    }

    /// Every combination up to 8 replicas: the plan ends with all replicas new, every batch
    /// moves, and neither bound is crossed at any moment.
    #[test]
    fn every_combination_converges_within_its_bounds() {
        for replicas in 1..=8u16 {
            for max_surge in 0..=replicas {
                for max_unavailable in 0..=replicas {
                    if max_surge + max_unavailable == 0 {
                        continue;
                    }
                    let l = limits(replicas, max_surge, max_unavailable);
                    let batches = plan(l, replicas);
                    let mut now = Counts {
                        fresh: 0,
                        stale: replicas,
                    };
                    for batch in &batches {
                        let ctx = format!("{l:?} {batches:?}");
                        assert!(batch.add + batch.remove > 0, "{ctx}");
                        let running = now.fresh + now.stale + batch.add;
                        assert!(running <= replicas + max_surge, "surge crossed: {ctx}");
                        now.fresh += batch.add;
                        now.stale -= batch.remove;
                        let serving = now.fresh + now.stale;
                        let gap_allowed = max_surge == 0 && max_unavailable == replicas;
                        assert!(
                            serving + max_unavailable >= replicas || gap_allowed,
                            "floor crossed: {ctx}"
                        );
                    }
                    assert_eq!(
                        now,
                        Counts {
                            fresh: replicas,
                            stale: 0
                        },
                        "{l:?}"
                    );
                    assert!(batches.len() <= usize::from(replicas) + 1, "{l:?}");
                }
            }
        }
    }

    #[test]
    fn batches_fall_as_surge_grows() {
        let counts: Vec<usize> = [1, 2, 4]
            .iter()
            .map(|&s| plan(limits(4, s, 0), 4).len())
            .collect();
        assert_eq!(counts, [4, 2, 1]);
    }

    #[test]
    #[should_panic(expected = "can never move")]
    fn no_surge_and_no_unavailability_is_refused() {
        next(limits(2, 0, 0), Counts { fresh: 0, stale: 2 });
    }
}
