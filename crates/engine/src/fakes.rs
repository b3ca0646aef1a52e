//! Recording fakes of every seam, for the engine's unit tests: [`FakeRuntime`] (also the
//! [`Prober`]), [`FakeRouter`], [`MemStore`], [`FakeHost`], [`FakeMetrics`], [`FakeHooks`],
//! sharing one [`Shared`] call log and kill switch. The runtime, router, store and hooks live
//! in submodules.
//!
//! The kill switch simulates `kill -9` right after the Nth journal write (persisted or not):
//! from then on every store write fails and every runtime and router call never returns,
//! so nothing after that point has any effect, exactly as if the process had died there.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::rc::Rc;

mod hooks;
mod router;
mod runtime;
mod store;
use crate::seams::*;
pub use hooks::FakeHooks;
pub use router::FakeRouter;
pub use runtime::FakeRuntime;
pub use store::MemStore;

/// The call log and kill switch all fakes of one test share.
#[derive(Default)]
pub struct Shared {
    pub log: RefCell<Vec<String>>,
    journal_writes: Cell<usize>,
    kill_at: Cell<Option<(usize, bool)>>,
    dead: Cell<bool>,
    /// The step-by-step invariants, when a test asks for them ([`Shared::watch`]).
    watch: RefCell<Option<Watch>>,
}

/// What the runtime and router fakes report to check the invariants at every step: the
/// last probe of each address, and what nginx routes to.
#[derive(Default)]
struct Watch {
    probed_ok: BTreeMap<SocketAddr, bool>,
    routed: BTreeSet<SocketAddr>,
    violations: Vec<String>,
}

impl Shared {
    pub fn new() -> Rc<Shared> {
        Rc::new(Shared::default())
    }

    /// Dies right after journal write number `n` (1-based); `persist` says whether that
    /// write reached the store.
    pub fn kill_after_journal(&self, n: usize, persist: bool) {
        self.journal_writes.set(0);
        self.kill_at.set(Some((n, persist)));
        self.dead.set(false);
    }

    /// A new process: alive again, no kill planned.
    pub fn revive(&self) {
        self.kill_at.set(None);
        self.dead.set(false);
    }

    pub fn is_dead(&self) -> bool {
        self.dead.get()
    }

    /// From now on, checks at every route change that traffic goes only to addresses whose
    /// last probe passed, and at every stop that nothing routed is stopped.
    pub fn watch(&self) {
        *self.watch.borrow_mut() = Some(Watch::default());
    }

    /// What broke the invariants since the last call.
    pub fn violations(&self) -> Vec<String> {
        let mut watch = self.watch.borrow_mut();
        watch
            .as_mut()
            .map_or(vec![], |w| std::mem::take(&mut w.violations))
    }

    fn probed(&self, addr: SocketAddr, ok: bool) {
        if let Some(w) = self.watch.borrow_mut().as_mut() {
            w.probed_ok.insert(addr, ok);
        }
    }

    fn routed(&self, backends: &[SocketAddr]) {
        if let Some(w) = self.watch.borrow_mut().as_mut() {
            for addr in backends {
                if w.probed_ok.get(addr) != Some(&true) {
                    w.violations
                        .push(format!("routed to {addr}, not healthy at its last probe"));
                }
            }
            w.routed = backends.iter().copied().collect();
        }
    }

    fn stopped(&self, addr: SocketAddr) {
        if let Some(w) = self.watch.borrow_mut().as_mut() {
            w.probed_ok.remove(&addr);
            if w.routed.contains(&addr) {
                w.violations
                    .push(format!("stopped {addr} while nginx routes to it"));
            }
        }
    }

    pub fn record(&self, call: String) {
        self.log.borrow_mut().push(call);
    }

    pub fn calls(&self) -> Vec<String> {
        self.log.borrow().clone()
    }

    async fn alive(&self) {
        if self.dead.get() {
            std::future::pending::<()>().await;
        }
    }

    fn write_allowed(&self) -> Result<(), StoreError> {
        if self.dead.get() {
            Err(StoreError("process was killed".into()))
        } else {
            Ok(())
        }
    }

    /// Counts a journal write; returns whether it persists.
    fn journal_write(&self) -> Result<bool, StoreError> {
        self.write_allowed()?;
        let n = self.journal_writes.get() + 1;
        self.journal_writes.set(n);
        match self.kill_at.get() {
            Some((at, persist)) if at == n => {
                self.dead.set(true);
                Ok(persist)
            }
            _ => Ok(true),
        }
    }
}

/// The clock and process table: a fixed pid per "process", advanced by [`FakeHost::restart`].
pub struct FakeHost {
    pub now: Cell<i64>,
    pub pid: Cell<u32>,
    pub alive: RefCell<BTreeSet<u32>>,
}

impl Default for FakeHost {
    fn default() -> Self {
        FakeHost {
            now: Cell::new(1_000_000),
            pid: Cell::new(100),
            alive: RefCell::new(BTreeSet::from([100])),
        }
    }
}

impl FakeHost {
    /// The previous process died; a new one with a new pid runs.
    pub fn restart(&self) {
        let old = self.pid.get();
        self.alive.borrow_mut().remove(&old);
        self.pid.set(old + 1);
        self.alive.borrow_mut().insert(old + 1);
    }
}

impl Host for FakeHost {
    fn now_ms(&self) -> i64 {
        self.now.get()
    }
    fn pid(&self) -> u32 {
        self.pid.get()
    }
    fn hostname(&self) -> String {
        "testhost".into()
    }
    fn user(&self) -> String {
        "tester".into()
    }
    fn process_alive(&self, pid: u32) -> bool {
        self.alive.borrow().contains(&pid)
    }
}

/// Canary measurements by version, as a metric source would report them for the current
/// window. A version without an entry has no data; `unreachable` makes every query fail.
#[derive(Default)]
pub struct FakeMetrics {
    pub by_version: RefCell<BTreeMap<String, crate::judge::Measurement>>,
    pub unreachable: Cell<bool>,
    pub queries: Cell<usize>,
}

impl FakeMetrics {
    /// `requests` in the window, `error_rate` of them 5xx.
    pub fn set(&self, version: &str, requests: f64, error_rate: f64) {
        let m = crate::judge::Measurement {
            requests: Some(requests),
            errors: Some(requests * error_rate),
            p99_latency: Some(0.02),
        };
        self.by_version.borrow_mut().insert(version.to_owned(), m);
    }
}

impl MetricSource for FakeMetrics {
    async fn measure(
        &self,
        query: &crate::judge::TrackWindow,
    ) -> Result<crate::judge::Measurement, MetricError> {
        self.queries.set(self.queries.get() + 1);
        if self.unreachable.get() {
            return Err(MetricError(
                "prometheus at 127.0.0.1:9090 unreachable".into(),
            ));
        }
        Ok(self
            .by_version
            .borrow()
            .get(query.version.as_str())
            .copied()
            .unwrap_or_default())
    }
}
