//! Retiring a service: [`Deployer::remove`] takes it out of nginx, waits out its traffic,
//! then stops and removes every replica the runtime or the store knows of (retained ones
//! too). Its deployments stay in the history.
//!
//! It is not a deployment and journals nothing: each step can simply be done again, so a
//! remove that was killed half way is finished by running it again.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::{DeployError, Deployer};
use crate::model::InstanceState;
use crate::names::Name;
use crate::seams::*;

/// What [`Deployer::remove`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoveReport {
    pub service: String,
    /// The confirmed change that took the service out of nginx.
    pub generation: u64,
    /// What was still draining when the drain timeout ran out.
    pub lingering: Option<String>,
    /// The replicas stopped and removed, by name.
    pub removed: Vec<String>,
}

impl<R: Runtime, P: Prober, N: Router, S: Store, H: Host> Deployer<'_, R, P, N, S, H> {
    /// Removes `service` (whether or not the config still names it), under its lock. Refused
    /// while a deployment of it is unfinished: `deploy` or `rollback` settles that first.
    pub async fn remove(
        &self,
        service: &Name,
        drain_timeout: Duration,
        stop_timeout: Duration,
    ) -> Result<RemoveReport, DeployError> {
        self.acquire(service, "remove")?;
        let result = self
            .remove_locked(service, drain_timeout, stop_timeout)
            .await;
        self.store.unlock(service, self.host.pid())?;
        result
    }

    async fn remove_locked(
        &self,
        service: &Name,
        drain_timeout: Duration,
        stop_timeout: Duration,
    ) -> Result<RemoveReport, DeployError> {
        if let Some((d, _)) = self.store.unfinished(service)? {
            return Err(DeployError::Refused(format!(
                "deployment #{} of {service} is unfinished: run `switchyard deploy` or `switchyard rollback` to settle it, then remove",
                d.id
            )));
        }
        let reload = self.router.remove(service).await?;
        let drained = self.router.wait_drained(&reload, drain_timeout).await?;
        self.observer.event(&Event::Drained {
            waited_ms: drained.waited_ms,
            lingering: drained.lingering.clone(),
        });
        // Everything the store knows of and everything the runtime labelled, once each.
        let record = self.store.service(service)?;
        let mut instances = BTreeMap::new();
        let slots = record.active.iter().chain(&record.retained);
        for instance in slots.flat_map(|s| &s.instances) {
            instances.insert(instance.id.clone(), instance.clone());
        }
        for instance in self.runtime.list(service).await? {
            instances.insert(instance.id.clone(), instance);
        }
        let mut removed = Vec::new();
        for instance in instances.values() {
            self.runtime.stop(instance, stop_timeout).await?;
            self.runtime.remove(instance).await?;
            // An upsert: a stray the store never recorded is recorded as removed.
            self.store.put_instance(instance, InstanceState::Removed)?;
            self.observer.event(&Event::Removed {
                instance: instance.name.clone(),
            });
            removed.push(instance.name.clone());
        }
        Ok(RemoveReport {
            service: service.to_string(),
            generation: reload.generation,
            lingering: drained.lingering,
            removed,
        })
    }
}
