//! A deterministic simulation of every strategy on the fakes and paused time.
//!
//! Each schedule, drawn from a seed, mixes random replica counts and bounds (gaps refused), kills after any
//! journal write, versions whose health never passes, crashing versions, refused nginx
//! changes, canaries the judge fails or has no data for, and random `deploy` / `rollback`
//! commands. At every step (through the fakes' watch): each route change sends traffic
//! only to addresses whose last health probe passed, and nothing nginx routes to is stopped.
//! After every command that was not killed: nginx routes only to running
//! instances of the active version, the store's active slot is exactly what runs, no
//! deployment is left running and the lock is free; rollouts never ran more than
//! `replicas + max_surge` instances. Every schedule ends settled by one clean deploy. (Plans
//! with a gap are refused here: `allow_downtime` keeps the old address routed on purpose.)
//! A failure prints its seed; `SIM_SEED=<seed>` replays that one schedule.

use super::*;
use std::collections::BTreeSet;

use super::rolling::bounded;
use crate::deploy::rolling::batches::{self, Limits};

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A random service of `kind`: 1 to 4 replicas, valid bounds without a gap.
fn world(rng: &mut Rng, kind: StrategyKind) -> World {
    loop {
        let replicas = 1 + rng.below(4) as u16;
        let surge = match kind {
            StrategyKind::InPlace => 0,
            _ => rng.below(u64::from(replicas) + 1) as u16,
        };
        let unavailable = rng.below(u64::from(replicas) + 1) as u16;
        let limits = Limits {
            replicas,
            max_surge: surge,
            max_unavailable: unavailable,
        };
        if surge + unavailable > 0 && !batches::has_gap(limits, replicas) {
            return bounded(kind, replicas, surge, unavailable);
        }
    }
}

async fn command(
    w: &World,
    kind: StrategyKind,
    version: &str,
    rollback: bool,
    m: &FakeMetrics,
) -> Result<DeployReport, DeployError> {
    let d = w.deployer();
    match (rollback, kind) {
        (true, _) => d.rollback(&w.spec).await,
        (false, StrategyKind::Canary) => d.canary(&w.spec, &v(version), m).await,
        (false, kind) => d.roll(&w.spec, &v(version), kind).await,
    }
}

/// nginx routes only to running instances.
fn assert_routes_to_running(w: &World, ctx: &str) {
    for addr in w.router.backends("web") {
        let at = w.runtime.version_at(addr);
        assert!(
            at.is_some(),
            "{ctx}: nginx routes to {addr}, which does not run"
        );
    }
}

/// nginx routes only to running instances, all of the active slot, which is what runs.
fn assert_settled(w: &World, ctx: &str) {
    let record = w.store.service(&w.spec.name).unwrap();
    let active: BTreeSet<String> = record
        .active
        .iter()
        .flat_map(|s| s.instances.iter().map(|i| i.id.clone()))
        .collect();
    assert_eq!(
        w.runtime.running(),
        active,
        "{ctx}: only the active slot runs; calls: {:#?}",
        w.shared.calls().iter().rev().take(60).collect::<Vec<_>>()
    );
    let version = record.active.as_ref().map(|s| s.version.to_string());
    for addr in w.router.backends("web") {
        let at = w.runtime.version_at(addr);
        assert!(
            at.is_some(),
            "{ctx}: nginx routes to {addr}, which does not run"
        );
        assert_eq!(at, version, "{ctx}: nginx routes to the active version");
    }
    assert!(
        w.store.unfinished(&w.spec.name).unwrap().is_none(),
        "{ctx}: settled"
    );
    assert!(
        w.store.lock(&w.spec.name).unwrap().is_none(),
        "{ctx}: unlocked"
    );
}

async fn schedule(seed: u64, kind: StrategyKind) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let w = world(&mut rng, kind);
    w.shared.watch();
    let metrics = FakeMetrics::default();
    for round in 1..=5u32 {
        let version = format!("v{round}");
        let ctx = format!("seed {seed} ({kind:?}, {:?}) round {round}", w.spec.rolling);
        metrics.set(&version, 1000.0, if rng.chance(15) { 0.5 } else { 0.0 });
        metrics.unreachable.set(rng.chance(5));
        if rng.chance(15) {
            w.runtime.unhealthy.borrow_mut().insert(version.clone());
        }
        if rng.chance(5) {
            w.runtime.crashing.borrow_mut().insert(version.clone());
        }
        w.router.reject_next.set(rng.chance(10));
        let killed = rng.chance(40);
        if killed {
            w.shared
                .kill_after_journal(1 + rng.below(40) as usize, rng.chance(80));
        }
        let rollback = round > 1 && rng.chance(25);
        let run = command(&w, kind, &version, rollback, &metrics);
        let result = tokio::time::timeout(Duration::from_secs(36_000), run).await;
        let broken = w.shared.violations();
        assert!(broken.is_empty(), "{ctx}: at some step {broken:#?}");
        assert_routes_to_running(&w, &ctx);
        let dead = w.shared.is_dead();
        w.shared.revive();
        match result {
            _ if dead => w.host.restart(),
            // nginx refused the way back too: left for the next command, documented.
            Ok(Err(e)) if e.exit_code() == 3 => {}
            Ok(_) => assert_settled(&w, &ctx),
            Err(_) => panic!("{ctx}: the command never ended"),
        }
        w.router.reject_next.set(false);
        if kind.is_rolling() {
            let bound = usize::from(w.spec.replicas + w.spec.rolling.max_surge);
            assert!(w.runtime.peak_running() <= bound, "{ctx}: surge crossed");
        }
    }
    metrics.unreachable.set(false);
    metrics.set("v9", 1000.0, 0.0);
    let done = command(&w, kind, "v9", false, &metrics).await;
    assert!(
        done.is_ok(),
        "seed {seed}: the settling deploy failed: {done:?}"
    );
    let ctx = format!("seed {seed} ({kind:?}) settling");
    assert_settled(&w, &ctx);
    let record = w.store.service(&w.spec.name).unwrap();
    assert_eq!(
        record.active.map(|s| s.version.to_string()),
        Some("v9".into()),
        "{ctx}"
    );
}

async fn simulate(kind: StrategyKind, schedules: u64) {
    if let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return schedule(seed, kind).await;
    }
    for seed in 0..schedules {
        schedule(seed, kind).await;
    }
}

#[tokio::test(start_paused = true)]
async fn random_schedules_of_blue_green_settle_with_the_invariants_held() {
    simulate(StrategyKind::BlueGreen, 400).await;
}

#[tokio::test(start_paused = true)]
async fn random_schedules_of_canaries_settle_with_the_invariants_held() {
    simulate(StrategyKind::Canary, 150).await;
}

#[tokio::test(start_paused = true)]
async fn random_schedules_of_rolling_settle_with_the_invariants_held() {
    simulate(StrategyKind::Rolling, 400).await;
}

#[tokio::test(start_paused = true)]
async fn random_schedules_of_in_place_settle_with_the_invariants_held() {
    simulate(StrategyKind::InPlace, 400).await;
}
