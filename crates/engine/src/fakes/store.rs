//! [`MemStore`]: the store in memory, with the same semantics as the SQLite one. The
//! contract suite in switchyard-store (`contract`) runs every behaviour against both.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use super::Shared;
use crate::model::*;
use crate::names::Name;
use crate::seams::*;

#[derive(Default)]
struct MemState {
    locks: BTreeMap<Name, Lock>,
    deployments: Vec<(DeploymentRecord, Vec<JournalEntry>)>,
    instances: BTreeMap<String, (Instance, InstanceState)>,
    controls: BTreeMap<DeploymentId, Control>,
}

/// The store in memory, with the same semantics as the SQLite one.
pub struct MemStore {
    shared: Rc<Shared>,
    state: RefCell<MemState>,
}

impl MemStore {
    pub fn new(shared: &Rc<Shared>) -> MemStore {
        MemStore {
            shared: shared.clone(),
            state: RefCell::default(),
        }
    }

    /// Where deployment `id` sits in `deployments`, or an error naming it, as SQLite's
    /// `no such deployment`.
    fn index(&self, id: DeploymentId) -> Result<usize, StoreError> {
        let len = self.state.borrow().deployments.len();
        usize::try_from(id)
            .ok()
            .and_then(|id| id.checked_sub(1))
            .filter(|i| *i < len)
            .ok_or_else(|| StoreError(format!("no such deployment {id}")))
    }

    fn slots(&self, service: &Name, state: InstanceState) -> Vec<Slot> {
        let st = self.state.borrow();
        let mut by_deployment: BTreeMap<DeploymentId, Slot> = BTreeMap::new();
        for (instance, s) in st.instances.values() {
            if &instance.service == service && *s == state {
                let slot = by_deployment
                    .entry(instance.deployment)
                    .or_insert_with(|| Slot {
                        version: instance.version.clone(),
                        color: instance.color,
                        deployment: instance.deployment,
                        instances: vec![],
                    });
                slot.instances.push(instance.clone());
            }
        }
        let mut slots: Vec<Slot> = by_deployment.into_values().rev().collect();
        for slot in &mut slots {
            slot.instances.sort_by_key(|i| i.replica);
        }
        slots
    }
}

/// Whether `held` is still the lock the caller judged stale. As in SQLite, `deployment` is
/// left out: `begin` fills it in after the lock is taken.
fn same_holder(stale: &Lock, held: &Lock) -> bool {
    Lock {
        deployment: held.deployment,
        ..stale.clone()
    } == *held
}

impl Store for MemStore {
    fn put_control(
        &self,
        id: DeploymentId,
        control: Control,
        _at_ms: i64,
    ) -> Result<(), StoreError> {
        self.shared.write_allowed()?;
        // SQLite's foreign key: a request only for a deployment that was begun.
        self.index(id)?;
        self.state.borrow_mut().controls.insert(id, control);
        Ok(())
    }

    fn take_control(&self, id: DeploymentId) -> Result<Option<Control>, StoreError> {
        self.shared.write_allowed()?;
        Ok(self.state.borrow_mut().controls.remove(&id))
    }

    fn try_lock(
        &self,
        lock: &Lock,
        replace: Option<&Lock>,
    ) -> Result<Result<(), Lock>, StoreError> {
        self.shared.write_allowed()?;
        let mut st = self.state.borrow_mut();
        match st.locks.get(&lock.service) {
            Some(held) if !replace.is_some_and(|stale| same_holder(stale, held)) => {
                Ok(Err(held.clone()))
            }
            _ => {
                st.locks.insert(lock.service.clone(), lock.clone());
                Ok(Ok(()))
            }
        }
    }

    fn heartbeat(&self, service: &Name, pid: u32, now_ms: i64) -> Result<(), StoreError> {
        self.shared.write_allowed()?;
        if let Some(l) = self
            .state
            .borrow_mut()
            .locks
            .get_mut(service)
            .filter(|l| l.pid == pid)
        {
            l.heartbeat_ms = now_ms;
        }
        Ok(())
    }

    fn unlock(&self, service: &Name, pid: u32) -> Result<(), StoreError> {
        self.shared.write_allowed()?;
        let mut st = self.state.borrow_mut();
        if st.locks.get(service).is_some_and(|l| l.pid == pid) {
            st.locks.remove(service);
        }
        Ok(())
    }

    fn lock(&self, service: &Name) -> Result<Option<Lock>, StoreError> {
        Ok(self.state.borrow().locks.get(service).cloned())
    }

    fn begin(&self, d: &NewDeployment) -> Result<DeploymentId, StoreError> {
        self.shared.write_allowed()?;
        let mut st = self.state.borrow_mut();
        let id = st.deployments.len() as DeploymentId + 1;
        st.deployments.push((
            DeploymentRecord {
                id,
                service: d.service.clone(),
                kind: d.kind,
                strategy: d.strategy.clone(),
                from_version: d.from_version.clone(),
                to_version: d.to_version.clone(),
                color: d.color,
                who: d.who.clone(),
                started_ms: d.started_ms,
                finished_ms: None,
                outcome: Outcome::Running,
                message: String::new(),
            },
            vec![],
        ));
        if let Some(l) = st.locks.get_mut(&d.service) {
            l.deployment = Some(id);
        }
        Ok(id)
    }

    fn journal(&self, id: DeploymentId, at_ms: i64, step: &Step) -> Result<(), StoreError> {
        let index = self.index(id)?;
        let persist = self.shared.journal_write()?;
        self.shared.record(format!("journal {}", step.name()));
        if persist {
            let mut st = self.state.borrow_mut();
            let entries = &mut st.deployments[index].1;
            let seq = entries.len() as i64 + 1;
            entries.push(JournalEntry {
                seq,
                at_ms,
                step: step.clone(),
            });
        }
        Ok(())
    }

    fn finish(
        &self,
        id: DeploymentId,
        at_ms: i64,
        outcome: Outcome,
        message: &str,
    ) -> Result<(), StoreError> {
        self.shared.write_allowed()?;
        let index = self.index(id)?;
        let mut st = self.state.borrow_mut();
        let d = &mut st.deployments[index].0;
        d.finished_ms = Some(at_ms);
        d.outcome = outcome;
        d.message = message.to_owned();
        Ok(())
    }

    fn unfinished(
        &self,
        service: &Name,
    ) -> Result<Option<(DeploymentRecord, Vec<JournalEntry>)>, StoreError> {
        let st = self.state.borrow();
        Ok(st
            .deployments
            .iter()
            .rev()
            .find(|(d, _)| &d.service == service && d.outcome == Outcome::Running)
            .cloned())
    }

    fn deployment(
        &self,
        id: DeploymentId,
    ) -> Result<Option<(DeploymentRecord, Vec<JournalEntry>)>, StoreError> {
        let Ok(index) = self.index(id) else {
            return Ok(None);
        };
        Ok(Some(self.state.borrow().deployments[index].clone()))
    }

    fn history(
        &self,
        service: Option<&Name>,
        limit: usize,
    ) -> Result<Vec<DeploymentRecord>, StoreError> {
        let st = self.state.borrow();
        let all = st.deployments.iter().rev().map(|(d, _)| d);
        Ok(all
            .filter(|d| service.is_none_or(|s| &d.service == s))
            .take(limit)
            .cloned()
            .collect())
    }

    fn put_instance(&self, instance: &Instance, state: InstanceState) -> Result<(), StoreError> {
        self.shared.write_allowed()?;
        self.state
            .borrow_mut()
            .instances
            .insert(instance.id.clone(), (instance.clone(), state));
        Ok(())
    }

    fn set_instance_state(&self, id: &str, state: InstanceState) -> Result<(), StoreError> {
        self.shared.write_allowed()?;
        match self.state.borrow_mut().instances.get_mut(id) {
            Some(entry) => entry.1 = state,
            None => return Err(StoreError(format!("no such instance {id}"))),
        }
        Ok(())
    }

    fn service(&self, service: &Name) -> Result<ServiceRecord, StoreError> {
        Ok(ServiceRecord {
            active: self
                .slots(service, InstanceState::Active)
                .into_iter()
                .next(),
            retained: self.slots(service, InstanceState::Retained),
        })
    }

    fn activate(&self, service: &Name, id: DeploymentId) -> Result<(), StoreError> {
        self.shared.write_allowed()?;
        self.shared.record(format!("store.activate #{id}"));
        // SQLite's foreign key: only a deployment that was begun can be the active one.
        self.index(id)?;
        let mut st = self.state.borrow_mut();
        // Its active instances count: they are retained, then activated again.
        let promotes = |(i, s): &(Instance, InstanceState)| {
            &i.service == service && i.deployment == id && *s != InstanceState::Removed
        };
        if !st.instances.values().any(promotes) {
            // As SQLite, which rolls back rather than leave the service with no active slot.
            return Err(StoreError(format!(
                "activating deployment {id} of {service}: it has no starting or retained instances"
            )));
        }
        for (instance, state) in st.instances.values_mut() {
            if &instance.service != service {
                continue;
            }
            if *state == InstanceState::Active {
                *state = InstanceState::Retained;
            }
            if instance.deployment == id
                && matches!(*state, InstanceState::Starting | InstanceState::Retained)
            {
                *state = InstanceState::Active;
            }
        }
        Ok(())
    }
}
