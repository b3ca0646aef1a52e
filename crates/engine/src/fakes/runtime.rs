//! [`FakeRuntime`]: containers in memory, which is also the health [`Prober`]; tests pick
//! versions that cannot be prepared (a failed pull), and versions or instances that fail to
//! start, crash, stay unhealthy or refuse to stop.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use super::Shared;
use crate::model::*;
use crate::names::Name;
use crate::seams::*;

struct FakeInstance {
    instance: Instance,
    running: bool,
}

/// Containers in memory. Versions listed in `unhealthy` never pass a probe; versions in
/// `crashing` exit right after start; versions in `unstartable` fail to start; versions in
/// `unpreparable` fail `prepare` (a pull the registry refused).
pub struct FakeRuntime {
    shared: Rc<Shared>,
    instances: RefCell<BTreeMap<String, FakeInstance>>,
    next: Cell<u16>,
    pub unhealthy: RefCell<BTreeSet<String>>,
    pub crashing: RefCell<BTreeSet<String>>,
    pub unstartable: RefCell<BTreeSet<String>>,
    pub unpreparable: RefCell<BTreeSet<String>>,
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
            unpreparable: RefCell::default(),
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
    async fn prepare(&self, spec: &InstanceSpec) -> Result<(), RuntimeError> {
        self.shared.alive().await;
        self.shared
            .record(format!("runtime.prepare {} {}", spec.service, spec.version));
        if self.unpreparable.borrow().contains(spec.version.as_str()) {
            return Err(RuntimeError::Failed {
                what: format!("pulling image {}:{}", spec.service, spec.version),
                message: "unauthorized: authentication required".into(),
            });
        }
        Ok(())
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
        let instance = spec.instance(format!("c{n}"), name, host_port);
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
            if f.running {
                self.shared.stopped(f.instance.addr());
            }
            f.running = false;
        }
        Ok(())
    }

    async fn remove(&self, instance: &Instance) -> Result<(), RuntimeError> {
        self.shared.alive().await;
        self.shared
            .record(format!("runtime.remove {}", instance.name));
        if let Some(f) = self.instances.borrow_mut().remove(&instance.id) {
            if f.running {
                self.shared.stopped(f.instance.addr());
            }
        }
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
        self.shared.probed(addr, ok);
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
