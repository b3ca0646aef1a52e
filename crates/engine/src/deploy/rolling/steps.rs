//! The operations a batch is made of, each journaled: start a replica (or restart a retained
//! one), route (one validated, confirmed reload), drain, and take replicas away.

use super::{Halt, Rollout};
use crate::config::StrategyKind;
use crate::deploy::{created_by, created_in, upstream_set, DeployError, Deployer};
use crate::model::*;
use crate::seams::*;

impl Rollout<'_> {
    pub(super) async fn start_replica<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
        &self,
        d: &Deployer<'_, R, P, N, S, H>,
        replica: u16,
    ) -> Result<Instance, Halt> {
        let (id, service) = (self.id, &self.spec.name);
        if let Some(old) = self.reuse.iter().find(|i| i.replica == replica) {
            let instance = if self.own {
                Instance {
                    deployment: id,
                    ..old.clone()
                }
            } else {
                old.clone()
            };
            d.journal(
                id,
                service,
                Step::RestartInstance {
                    instance: instance.clone(),
                },
            )?;
            let restarted = d
                .runtime
                .restart(&instance)
                .await
                .map_err(|e| Halt::Batch(format!("restarting {}: {e}", instance.name)))?;
            let restarted = Instance {
                deployment: instance.deployment,
                ..restarted
            };
            if self.own {
                d.note_started(self.spec, id, &restarted, true)?;
            } else {
                d.observer.event(&Event::Started {
                    instance: restarted.name.clone(),
                    addr: restarted.addr(),
                    reused: true,
                });
            }
            return Ok(restarted);
        }
        let host_port = match self.kind {
            StrategyKind::InPlace => self
                .ports
                .iter()
                .find(|(r, _)| *r == replica)
                .map(|(_, p)| *p),
            _ => None,
        };
        let spec = InstanceSpec {
            service: service.clone(),
            version: self.target.clone(),
            color: self.color,
            deployment: id,
            replica,
            source: self.spec.source_for(&self.target),
            port: self.spec.port,
            env: self.spec.env.clone(),
            host_port,
        };
        let name = spec.instance_name();
        d.journal(
            id,
            service,
            Step::StartInstance {
                replica,
                name: name.clone(),
            },
        )?;
        let instance = d
            .runtime
            .start(&spec)
            .await
            .map_err(|e| Halt::Batch(format!("starting {name}: {e}")))?;
        d.note_started(self.spec, id, &instance, false)?;
        Ok(instance)
    }

    /// One confirmed reload to `next`; `Ok(None)` when `next` is empty (in-place gap).
    /// The inner error means nginx refused or never confirmed it: traffic is unchanged.
    pub(super) async fn route<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
        &mut self,
        d: &Deployer<'_, R, P, N, S, H>,
        batch: u32,
        next: &[Instance],
    ) -> Result<Result<Option<Reload>, String>, DeployError> {
        if next.is_empty() {
            return Ok(Ok(None));
        }
        let set = upstream_set(self.spec, next);
        d.journal(
            self.id,
            &self.spec.name,
            Step::Serve {
                batch,
                instances: next.iter().map(|i| i.id.clone()).collect(),
                backends: set.backends.clone(),
            },
        )?;
        let reload = match d.router.apply(&set).await {
            Ok(reload) => reload,
            Err(e) => return Ok(Err(e.to_string())),
        };
        d.journal(
            self.id,
            &self.spec.name,
            Step::Routed {
                generation: reload.generation,
                old_workers: reload.old_workers.clone(),
            },
        )?;
        d.observer.event(&Event::Reloaded {
            generation: reload.generation,
            confirm_ms: reload.confirm_ms,
        });
        self.report.reloads += 1;
        Ok(Ok(Some(reload)))
    }

    /// Waits for the workers of the previous config to exit.
    pub(super) async fn drain<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
        &self,
        d: &Deployer<'_, R, P, N, S, H>,
        reload: &Reload,
    ) -> Result<u64, DeployError> {
        d.journal(self.id, &self.spec.name, Step::Drain)?;
        let drained = d
            .router
            .wait_drained(reload, self.spec.drain_timeout)
            .await
            .map_err(|e| DeployError::Environment(e.to_string()))?;
        d.journal(
            self.id,
            &self.spec.name,
            Step::Drained {
                waited_ms: drained.waited_ms,
                lingering: drained.lingering.clone(),
            },
        )?;
        d.observer.event(&Event::Drained {
            waited_ms: drained.waited_ms,
            lingering: drained.lingering.len(),
        });
        Ok(drained.waited_ms)
    }

    /// Stops replicas nginx no longer sends traffic to. Ones this deployment created are
    /// removed; ones it restarted go back to their slot, stopped; the rest (the version
    /// being replaced) are stopped and kept until `activate` retains them.
    pub(super) async fn retire<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
        &self,
        d: &Deployer<'_, R, P, N, S, H>,
        instances: &[Instance],
    ) -> Result<(), DeployError> {
        if instances.is_empty() {
            return Ok(());
        }
        let ids = instances.iter().map(|i| i.id.clone()).collect();
        d.journal(self.id, &self.spec.name, Step::StopOld { instances: ids })?;
        for instance in instances {
            self.take_away(d, instance).await?;
        }
        d.journal(self.id, &self.spec.name, Step::OldStopped)?;
        Ok(())
    }

    /// Removes an instance this deployment created; stops any other, and one it restarted
    /// goes back to its own slot as retained.
    async fn take_away<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
        &self,
        d: &Deployer<'_, R, P, N, S, H>,
        instance: &Instance,
    ) -> Result<(), DeployError> {
        if created_by(instance, self.id) {
            d.runtime.remove(instance).await?;
            d.store.put_instance(instance, InstanceState::Removed)?;
            d.observer.event(&Event::Removed {
                instance: instance.name.clone(),
            });
            return Ok(());
        }
        let stopped = d.runtime.stop(instance, self.spec.stop_timeout).await;
        if instance.deployment == self.id {
            let origin = Instance {
                deployment: created_in(instance).unwrap_or(instance.deployment),
                ..instance.clone()
            };
            d.store.put_instance(&origin, InstanceState::Retained)?;
        }
        match stopped {
            Ok(()) => d.observer.event(&Event::Stopped {
                instance: instance.name.clone(),
            }),
            // Out of the upstream and drained already: a replica that will not stop is a
            // warning, not a reason to leave the deployment unfinished.
            Err(e) => self
                .warnings
                .borrow_mut()
                .push(format!("stopping {}: {e}", instance.name)),
        }
        Ok(())
    }

    /// Takes away replicas of a failed batch, which never got traffic, and any instance of
    /// this deployment the runtime has that nginx does not serve (killed before journaled).
    pub(super) async fn discard<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
        &self,
        d: &Deployer<'_, R, P, N, S, H>,
        added: &[Instance],
    ) -> Result<(), DeployError> {
        let mut gone: Vec<Instance> = added.to_vec();
        for orphan in d.runtime.list(&self.spec.name).await? {
            let serving = self.serving.iter().any(|s| s.id == orphan.id);
            if created_by(&orphan, self.id) && !serving && !gone.iter().any(|g| g.id == orphan.id) {
                gone.push(orphan);
            }
        }
        if gone.is_empty() {
            return Ok(());
        }
        d.journal(
            self.id,
            &self.spec.name,
            Step::RemoveNew {
                reason: "not in the upstream".into(),
            },
        )?;
        // Without `retire`'s journal pair: these never served.
        for instance in &gone {
            self.take_away(d, instance).await?;
        }
        Ok(())
    }
}
