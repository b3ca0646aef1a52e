//! [`FakeRouter`]: nginx in memory, recording which backends each service's traffic goes to
//! and every set applied; `reject_next` refuses an apply as `nginx -t` would.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use super::Shared;
use crate::names::Name;
use crate::seams::*;

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
        self.shared.routed(&reachable);
        self.live
            .borrow_mut()
            .insert(set.service.clone(), reachable);
        self.sets
            .borrow_mut()
            .insert(set.service.clone(), set.clone());
        self.history.borrow_mut().push(set.backends.clone());
        Ok(Reload {
            generation,
            drain: DrainHandle::new([generation * 100]),
            confirm_ms: 3,
        })
    }

    async fn wait_drained(
        &self,
        reload: &Reload,
        _timeout: Duration,
    ) -> Result<Drained, RouterError> {
        self.shared.alive().await;
        self.shared.record(format!(
            "router.wait_drained {:?}",
            reload.drain.token::<Vec<u64>>().unwrap_or_default()
        ));
        Ok(Drained {
            waited_ms: 7,
            lingering: None,
        })
    }

    async fn remove(&self, service: &Name) -> Result<Reload, RouterError> {
        self.shared.alive().await;
        self.shared.record(format!("router.remove {service}"));
        self.live.borrow_mut().remove(service);
        self.sets.borrow_mut().remove(service);
        let generation = self.generation.get() + 1;
        self.generation.set(generation);
        Ok(Reload {
            generation,
            drain: DrainHandle::new([generation * 100]),
            confirm_ms: 3,
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
