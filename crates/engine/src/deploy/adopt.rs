//! Taking over a running instance switchyard did not start (a plain `docker run -d -p
//! 8080:8080 --name app app:1`): [`Deployer::adopt`] records an [`Adoptee`] as the live
//! version of a service, exactly as a finished deploy records its replicas, and routes nginx
//! to it, so the next `deploy` replaces it like any other version. [`AdoptReport`] says what
//! it did.
//!
//! It is a deployment of its own (strategy `adopt`, in the history) journaled like one
//! (`instance_started`, `serve`, `routed`), so `resume`, `status` and the fold read it
//! unchanged. The adopted instance's `origin` is 0: no deployment created it, so it is
//! stopped and retained where a replica a deployment started would be removed. Everything that can refuse (the lock, a service switchyard already runs, an
//! instance that does not answer its health path) is checked before anything is recorded.

use std::net::SocketAddr;

use serde::Serialize;

use super::{upstream_set, DeployError, Deployer};
use crate::config::ServiceSpec;
use crate::model::*;
use crate::names::Version;
use crate::seams::*;

/// The strategy word an adoption is recorded under.
pub const ADOPT: &str = "adopt";

/// A running instance to adopt, as the runtime found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adoptee {
    /// Container id.
    pub id: String,
    pub name: String,
    pub version: Version,
    /// Where it answers on 127.0.0.1.
    pub host_port: u16,
}

/// What [`Deployer::adopt`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdoptReport {
    pub deployment: DeploymentId,
    pub service: String,
    pub version: String,
    pub instance: String,
    pub addr: SocketAddr,
    /// The confirmed route change that sent the service's traffic to it.
    pub generation: u64,
    pub confirm_ms: u64,
}

impl<R: Runtime, P: Prober, N: Router, S: Store, H: Host> Deployer<'_, R, P, N, S, H> {
    /// Makes `adoptee` the live version of `spec`, under the service's lock. Refused (and
    /// nothing recorded) while switchyard runs the service already or a deployment of it is
    /// unfinished, and when the adoptee does not pass the health path `healthy_after` times.
    pub async fn adopt(
        &self,
        spec: &ServiceSpec,
        adoptee: &Adoptee,
    ) -> Result<AdoptReport, DeployError> {
        self.acquire(&spec.name, "adopt")?;
        let result = self.adopt_locked(spec, adoptee).await;
        self.store.unlock(&spec.name, self.host.pid())?;
        result
    }

    async fn adopt_locked(
        &self,
        spec: &ServiceSpec,
        adoptee: &Adoptee,
    ) -> Result<AdoptReport, DeployError> {
        if let Some((d, _)) = self.store.unfinished(&spec.name)? {
            return Err(DeployError::Refused(format!(
                "deployment #{} of {} is unfinished: run `switchyard deploy` or `switchyard rollback` to settle it; nothing was adopted",
                d.id, spec.name
            )));
        }
        if let Some(active) = self.store.service(&spec.name)?.active {
            return Err(DeployError::Refused(format!(
                "{} already runs {} (deployment #{}): adopt takes over a service switchyard does not run yet, and `switchyard deploy` replaces a live one; nothing was adopted",
                spec.name, active.version, active.deployment
            )));
        }
        let candidate = Instance {
            id: adoptee.id.clone(),
            name: adoptee.name.clone(),
            service: spec.name.clone(),
            version: adoptee.version.clone(),
            color: Color::Blue,
            deployment: 0,
            origin: 0,
            replica: 0,
            host_port: adoptee.host_port,
        };
        self.answers(spec, &candidate).await?;
        let id = self.begin_adoption(spec, &candidate)?;
        // Replica 0 of this deployment, so `activate` makes it the live slot and the next
        // deploy retires it like any replica it replaces; but created by no deployment
        // (`origin` 0), so none removes it as its creator would: a resume of this one, killed
        // before nginx routed to it, stops it and keeps it for rollback. Only pruning beyond
        // `retain` and `switchyard remove` remove it.
        let instance = Instance {
            deployment: id,
            ..candidate
        };
        self.journal(
            id,
            &spec.name,
            Step::InstanceStarted {
                instance: instance.clone(),
            },
        )?;
        self.store
            .put_instance(&instance, InstanceState::Starting)?;
        let reload = self.route_to(spec, id, &instance).await?;
        let message = format!(
            "adopted container {} as {} on {}",
            instance.name,
            instance.version,
            instance.addr()
        );
        self.complete(spec, id, &message).await?;
        Ok(AdoptReport {
            deployment: id,
            service: spec.name.to_string(),
            version: instance.version.to_string(),
            instance: instance.name.clone(),
            addr: instance.addr(),
            generation: reload.generation,
            confirm_ms: reload.confirm_ms,
        })
    }

    /// Whether `candidate` runs and passes the health path `healthy_after` times in a row,
    /// `interval` apart; the error says why not. Nothing is waited for beyond that: an
    /// instance offered for adoption is expected to be up already.
    async fn answers(&self, spec: &ServiceSpec, candidate: &Instance) -> Result<(), DeployError> {
        let h = &spec.health;
        let refuse = |why: String| {
            DeployError::Refused(format!(
                "{} cannot be adopted as {}: {why}; nothing was adopted",
                candidate.name, spec.name
            ))
        };
        for pass in 0..h.healthy_after.max(1) {
            if pass > 0 {
                tokio::time::sleep(h.interval).await;
            }
            match self.runtime.status(candidate).await? {
                InstanceStatus::Running {
                    health: RuntimeHealth::None | RuntimeHealth::Healthy,
                } => {}
                InstanceStatus::Running { health } => {
                    return Err(refuse(format!("its Docker HEALTHCHECK says {health:?}")))
                }
                InstanceStatus::Exited { .. } | InstanceStatus::Missing => {
                    return Err(refuse("it is not running".into()))
                }
            }
            let probe = self
                .prober
                .probe(candidate.addr(), &h.path, h.timeout)
                .await;
            if !probe.ok {
                return Err(refuse(format!(
                    "GET {} on {} answered {}",
                    h.path,
                    candidate.addr(),
                    probe.summary
                )));
            }
        }
        Ok(())
    }

    /// Records the adoption as a deployment (strategy [`ADOPT`]) and says so.
    fn begin_adoption(
        &self,
        spec: &ServiceSpec,
        candidate: &Instance,
    ) -> Result<DeploymentId, DeployError> {
        let host = self.host;
        let id = self.store.begin(&NewDeployment {
            service: spec.name.clone(),
            kind: DeployKind::Deploy,
            strategy: ADOPT.into(),
            from_version: None,
            to_version: candidate.version.clone(),
            color: candidate.color,
            who: format!("{}@{} (pid {})", host.user(), host.hostname(), host.pid()),
            started_ms: host.now_ms(),
        })?;
        self.observer.event(&Event::Begin {
            deployment: id,
            service: spec.name.to_string(),
            from: None,
            to: candidate.version.to_string(),
            color: candidate.color,
        });
        Ok(id)
    }

    /// One journaled, confirmed route change to `instance` alone. If nginx refuses it, the
    /// adoption fails with traffic unchanged and the container is left as it was, running
    /// and no longer recorded.
    async fn route_to(
        &self,
        spec: &ServiceSpec,
        id: DeploymentId,
        instance: &Instance,
    ) -> Result<Reload, DeployError> {
        let set = upstream_set(spec, std::slice::from_ref(instance));
        let step = Step::Serve {
            batch: 1,
            instances: vec![instance.id.clone()],
            backends: set.backends.clone(),
            canary: None,
        };
        self.journal(id, &spec.name, step)?;
        let reload = match self.router.apply(&set).await {
            Ok(reload) => reload,
            Err(e) => {
                let message = format!("routing {} to {}: {e}", spec.name, instance.name);
                let step = Step::Failing {
                    cause: Cause::Nginx,
                    reason: message.clone(),
                };
                self.journal(id, &spec.name, step)?;
                // Not removed from Docker: it is the user's container, and it still serves
                // wherever it served before. Only switchyard's record of it goes.
                self.store
                    .set_instance_state(&instance.id, InstanceState::Removed)?;
                self.finish(id, Outcome::Failed, &message)?;
                return Err(DeployError::Failed {
                    deployment: id,
                    service: spec.name.clone(),
                    stays_on: "nothing".into(),
                    cause: Cause::Nginx,
                    message,
                });
            }
        };
        let step = Step::Routed {
            generation: reload.generation,
            drain: reload.drain.clone(),
        };
        self.journal(id, &spec.name, step)?;
        self.observer.event(&Event::Reloaded {
            generation: reload.generation,
            confirm_ms: reload.confirm_ms,
        });
        Ok(reload)
    }
}
