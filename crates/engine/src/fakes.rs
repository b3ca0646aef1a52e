//! Recording fakes of every seam, for the engine's unit tests: [`FakeRuntime`] (also the
//! [`Prober`]), [`FakeRouter`], [`MemStore`], [`FakeHost`], sharing one [`Shared`] call log
//! and kill switch.
//!
//! The kill switch simulates `kill -9` right after the Nth journal write (persisted or not):
//! from then on every store write fails and every runtime and router call never returns,
//! so nothing after that point has any effect, exactly as if the process had died there.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use crate::model::*;

mod store;
use crate::names::Name;
use crate::seams::*;
pub use store::MemStore;

/// The call log and kill switch all fakes of one test share.
#[derive(Default)]
pub struct Shared {
    pub log: RefCell<Vec<String>>,
    journal_writes: Cell<usize>,
    kill_at: Cell<Option<(usize, bool)>>,
    dead: Cell<bool>,
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

struct FakeInstance {
    instance: Instance,
    running: bool,
}

/// Containers in memory. Versions listed in `unhealthy` never pass a probe; versions in
/// `crashing` exit right after start; versions in `unstartable` fail to start.
pub struct FakeRuntime {
    shared: Rc<Shared>,
    instances: RefCell<BTreeMap<String, FakeInstance>>,
    next: Cell<u16>,
    pub unhealthy: RefCell<BTreeSet<String>>,
    pub crashing: RefCell<BTreeSet<String>>,
    pub unstartable: RefCell<BTreeSet<String>>,
    /// Instance ids whose restart fails (a retained container whose port was taken).
    pub unrestartable: RefCell<BTreeSet<String>>,
    /// Instance names that never pass a probe (one replica of a version).
    pub unhealthy_names: RefCell<BTreeSet<String>>,
    /// Instance names whose stop fails (and which keep running).
    pub unstoppable: RefCell<BTreeSet<String>>,
    /// Docker HEALTHCHECK status by version; versions not listed have no HEALTHCHECK.
    pub docker_health: RefCell<BTreeMap<String, RuntimeHealth>>,
    peak: Cell<usize>,
}

fn port_allocated(name: &str, port: u16) -> RuntimeError {
    RuntimeError::Failed {
        what: name.to_owned(),
        message: format!("127.0.0.1:{port}: port is already allocated"),
    }
}

impl FakeRuntime {
    pub fn new(shared: &Rc<Shared>) -> FakeRuntime {
        FakeRuntime {
            shared: shared.clone(),
            instances: RefCell::default(),
            next: Cell::new(0),
            unhealthy: RefCell::default(),
            crashing: RefCell::default(),
            unstartable: RefCell::default(),
            docker_health: RefCell::default(),
            unrestartable: RefCell::default(),
            unhealthy_names: RefCell::default(),
            unstoppable: RefCell::default(),
            peak: Cell::new(0),
        }
    }

    /// Instances currently running, by id.
    pub fn running(&self) -> BTreeSet<String> {
        self.instances
            .borrow()
            .values()
            .filter(|f| f.running)
            .map(|f| f.instance.id.clone())
            .collect()
    }

    /// Every instance that exists (running or stopped), by id.
    pub fn existing(&self) -> BTreeSet<String> {
        self.instances.borrow().keys().cloned().collect()
    }

    pub fn version_at(&self, addr: SocketAddr) -> Option<String> {
        let instances = self.instances.borrow();
        let found = instances
            .values()
            .find(|f| f.running && f.instance.addr() == addr);
        found.map(|f| f.instance.version.to_string())
    }

    /// Whether a running instance other than `except` publishes `port`.
    fn port_taken(&self, port: u16, except: Option<&str>) -> bool {
        self.instances.borrow().values().any(|f| {
            f.running && f.instance.host_port == port && Some(f.instance.id.as_str()) != except
        })
    }

    /// The most instances running at once so far.
    pub fn peak_running(&self) -> usize {
        self.peak.get()
    }

    fn note_running(&self) {
        let now = self.running().len();
        self.peak.set(self.peak.get().max(now));
    }

    fn is_crashing(&self, instance: &Instance) -> bool {
        self.crashing.borrow().contains(instance.version.as_str())
    }
}

impl Runtime for FakeRuntime {
    fn kind(&self) -> &'static str {
        "fake"
    }

    async fn start(&self, spec: &InstanceSpec) -> Result<Instance, RuntimeError> {
        self.shared.alive().await;
        let name = spec.instance_name();
        self.shared.record(format!("runtime.start {name}"));
        if self.unstartable.borrow().contains(spec.version.as_str()) {
            return Err(RuntimeError::Failed {
                what: name,
                message: "image not found".into(),
            });
        }
        let n = self.next.get() + 1;
        self.next.set(n);
        let host_port = spec.host_port.unwrap_or(20000 + n);
        if self.port_taken(host_port, None) {
            return Err(port_allocated(&name, host_port));
        }
        let instance = Instance {
            id: format!("c{n}"),
            name,
            service: spec.service.clone(),
            version: spec.version.clone(),
            color: spec.color,
            deployment: spec.deployment,
            origin: spec.deployment,
            replica: spec.replica,
            host_port,
        };
        let running = !self.crashing.borrow().contains(spec.version.as_str());
        self.instances.borrow_mut().insert(
            instance.id.clone(),
            FakeInstance {
                instance: instance.clone(),
                running,
            },
        );
        self.note_running();
        Ok(instance)
    }

    async fn restart(&self, instance: &Instance) -> Result<Instance, RuntimeError> {
        self.shared.alive().await;
        self.shared
            .record(format!("runtime.restart {}", instance.name));
        if self.unrestartable.borrow().contains(&instance.id) {
            return Err(RuntimeError::Failed {
                what: instance.name.clone(),
                message: "port is already allocated".into(),
            });
        }
        if self.port_taken(instance.host_port, Some(&instance.id)) {
            return Err(port_allocated(&instance.name, instance.host_port));
        }
        let crashing = self.is_crashing(instance);
        let mut instances = self.instances.borrow_mut();
        let Some(found) = instances.get_mut(&instance.id) else {
            return Err(RuntimeError::Failed {
                what: instance.name.clone(),
                message: "no such container".into(),
            });
        };
        found.running = !crashing;
        let instance = found.instance.clone();
        drop(instances);
        self.note_running();
        Ok(instance)
    }

    async fn status(&self, instance: &Instance) -> Result<InstanceStatus, RuntimeError> {
        self.shared.alive().await;
        let health = self
            .docker_health
            .borrow()
            .get(instance.version.as_str())
            .copied();
        Ok(match self.instances.borrow().get(&instance.id) {
            None => InstanceStatus::Missing,
            Some(f) if f.running => InstanceStatus::Running {
                health: health.unwrap_or(RuntimeHealth::None),
            },
            Some(_) => InstanceStatus::Exited { code: Some(1) },
        })
    }

    async fn stop(&self, instance: &Instance, _timeout: Duration) -> Result<(), RuntimeError> {
        self.shared.alive().await;
        self.shared
            .record(format!("runtime.stop {}", instance.name));
        if self.unstoppable.borrow().contains(&instance.name) {
            return Err(RuntimeError::Failed {
                what: instance.name.clone(),
                message: "did not stop".into(),
            });
        }
        if let Some(f) = self.instances.borrow_mut().get_mut(&instance.id) {
            f.running = false;
        }
        Ok(())
    }

    async fn remove(&self, instance: &Instance) -> Result<(), RuntimeError> {
        self.shared.alive().await;
        self.shared
            .record(format!("runtime.remove {}", instance.name));
        self.instances.borrow_mut().remove(&instance.id);
        Ok(())
    }

    async fn logs(&self, instance: &Instance, _lines: usize) -> String {
        self.shared.alive().await;
        format!("{} log line", instance.name)
    }

    async fn list(&self, service: &Name) -> Result<Vec<Instance>, RuntimeError> {
        self.shared.alive().await;
        let instances = self.instances.borrow();
        Ok(instances
            .values()
            .filter(|f| &f.instance.service == service)
            .map(|f| f.instance.clone())
            .collect())
    }
}

impl Prober for FakeRuntime {
    async fn probe(&self, addr: SocketAddr, path: &str, _timeout: Duration) -> Probe {
        self.shared.alive().await;
        let name = self
            .instances
            .borrow()
            .values()
            .find(|f| f.running && f.instance.addr() == addr)
            .map(|f| f.instance.name.clone());
        let ok = match self.version_at(addr) {
            Some(v) => {
                !self.unhealthy.borrow().contains(&v)
                    && !name.is_some_and(|n| self.unhealthy_names.borrow().contains(&n))
            }
            None => false,
        };
        let summary = match (ok, self.version_at(addr)) {
            (true, _) => "200 ok".to_owned(),
            (false, Some(_)) => format!("503 unhealthy at {path}"),
            (false, None) => format!("connection refused: {addr}"),
        };
        Probe {
            ok,
            summary,
            latency: Duration::from_millis(1),
        }
    }
}

/// nginx in memory: which backends each service's traffic goes to.
pub struct FakeRouter {
    shared: Rc<Shared>,
    pub live: RefCell<BTreeMap<Name, Vec<SocketAddr>>>,
    generation: Cell<u64>,
    /// The last set applied per service, canary split included.
    pub sets: RefCell<BTreeMap<Name, UpstreamSet>>,
    /// The next `apply` is refused as `nginx -t` would.
    pub reject_next: Cell<bool>,
    /// Every applied backend list, in order.
    pub history: RefCell<Vec<Vec<SocketAddr>>>,
}

impl FakeRouter {
    pub fn new(shared: &Rc<Shared>) -> FakeRouter {
        FakeRouter {
            shared: shared.clone(),
            live: RefCell::default(),
            generation: Cell::new(0),
            reject_next: Cell::new(false),
            sets: RefCell::default(),
            history: RefCell::default(),
        }
    }

    pub fn backends(&self, service: &str) -> Vec<SocketAddr> {
        let live = self.live.borrow();
        live.iter()
            .find(|(n, _)| n.as_str() == service)
            .map(|(_, b)| b.clone())
            .unwrap_or_default()
    }
}

impl Router for FakeRouter {
    async fn apply(&self, set: &UpstreamSet) -> Result<Reload, RouterError> {
        self.shared.alive().await;
        self.shared
            .record(format!("router.apply {} {:?}", set.service, set.backends));
        if self.reject_next.replace(false) {
            return Err(RouterError::Rejected {
                service: set.service.to_string(),
                stderr: "nginx: [emerg] test".into(),
            });
        }
        let generation = self.generation.get() + 1;
        self.generation.set(generation);
        let mut reachable = set.backends.clone();
        if let Some(c) = set
            .canary
            .as_ref()
            .filter(|c| c.weight_bp > 0 || c.route.is_some())
        {
            reachable.extend(&c.backends);
        }
        self.live
            .borrow_mut()
            .insert(set.service.clone(), reachable);
        self.sets
            .borrow_mut()
            .insert(set.service.clone(), set.clone());
        self.history.borrow_mut().push(set.backends.clone());
        Ok(Reload {
            generation,
            old_workers: vec![generation as u32 * 100],
            confirm_ms: 3,
        })
    }

    async fn wait_drained(
        &self,
        reload: &Reload,
        _timeout: Duration,
    ) -> Result<Drained, RouterError> {
        self.shared.alive().await;
        self.shared
            .record(format!("router.wait_drained {:?}", reload.old_workers));
        Ok(Drained {
            waited_ms: 7,
            lingering: vec![],
        })
    }

    fn preview(&self, set: &UpstreamSet) -> Result<ConfigDiff, RouterError> {
        Ok(ConfigDiff {
            path: format!("{}.conf", set.service),
            old: format!("{:?}\n", self.backends(set.service.as_str())),
            new: format!("{:?}\n", set.backends),
        })
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
