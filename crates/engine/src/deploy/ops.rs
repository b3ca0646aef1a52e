//! The operations every move is made of, one copy each, each journaled before it acts:
//! prepare the runtime for the target (once, not journaled), start a replica (or restart a
//! retained one), route (one validated, confirmed change of the serve set), drain, retire
//! what left the set, and discard what never served.

use futures_util::stream::{self, StreamExt};

use super::rollout::{CanaryTrack, Halt, Rollout, PARALLEL};
use super::{DeployError, Deployer};
use crate::config::StrategyKind;
use crate::model::*;
use crate::seams::*;

impl Rollout<'_> {
    /// Starts replica `replica` of the target: a retained instance of it restarted where the
    /// rollout has one, else a fresh one (in place: on the port its predecessor freed).
    pub(super) async fn start_replica<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
        &self,
        d: &Deployer<'_, R, P, N, S, H>,
        replica: u16,
    ) -> Result<Instance, Halt> {
        if let Some(old) = self.reuse.iter().find(|i| i.replica == replica) {
            return self.restart_replica(d, old).await;
        }
        let spec = self.instance_spec(replica);
        let name = spec.instance_name();
        let step = Step::StartInstance {
            replica,
            name: name.clone(),
        };
        d.journal(self.id, &self.spec.name, step)?;
        let instance =
            d.runtime.start(&spec).await.map_err(|e| {
                Halt::Move(Failure::new(Cause::Start, format!("starting {name}: {e}")))
            })?;
        self.note_started(d, &instance, false)?;
        Ok(instance)
    }

    /// What the runtime is given to start replica `replica` of the target fresh.
    fn instance_spec(&self, replica: u16) -> InstanceSpec {
        let host_port = match self.kind {
            StrategyKind::InPlace => self.port_of(replica),
            _ => None,
        };
        InstanceSpec {
            service: self.spec.name.clone(),
            version: self.target.clone(),
            color: self.color,
            deployment: self.id,
            replica,
            source: self.spec.source_for(&self.target),
            port: self.spec.port,
            env: self.spec.env_for(&self.target),
            host_port,
            container: self.spec.container.clone(),
            secrets: self.spec.secrets.clone(),
        }
    }

    /// Readies the runtime for the target (Docker: pulls its image) once per rollout, before
    /// the first fresh replica `replica` of it starts, so a failed pull fails the move with
    /// nothing started and traffic untouched. Not journaled: it changes nothing a resume
    /// would have to undo, and a resume that goes forward prepares again. A restore skips it:
    /// the version it brings back was live a moment ago, and a registry that just failed
    /// the deploy must not keep the old version from coming back.
    pub(super) async fn prepare<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
        &mut self,
        d: &Deployer<'_, R, P, N, S, H>,
        replica: u16,
    ) -> Result<(), Halt> {
        if !self.own || self.prepared.as_ref() == Some(&self.target) {
            return Ok(());
        }
        let spec = self.instance_spec(replica);
        d.runtime
            .prepare(&spec)
            .await
            .map_err(|e| Halt::Move(Failure::new(Cause::Prepare, e.to_string())))?;
        self.prepared = Some(self.target.clone());
        Ok(())
    }

    /// Restarts a stopped instance. In a deploy or rollback it joins this deployment; in a
    /// restore it stays in the slot it came from.
    async fn restart_replica<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
        &self,
        d: &Deployer<'_, R, P, N, S, H>,
        old: &Instance,
    ) -> Result<Instance, Halt> {
        let deployment = if self.own { self.id } else { old.deployment };
        let instance = Instance {
            deployment,
            ..old.clone()
        };
        let step = Step::RestartInstance {
            instance: instance.clone(),
        };
        d.journal(self.id, &self.spec.name, step)?;
        let restarted = d.runtime.restart(&instance).await.map_err(|e| {
            let message = format!("restarting {}: {e}", instance.name);
            Halt::Move(Failure::new(Cause::Start, message))
        })?;
        let restarted = Instance {
            deployment,
            ..restarted
        };
        if self.own {
            self.note_started(d, &restarted, true)?;
        } else {
            d.observer.event(&Event::Started {
                instance: restarted.name.clone(),
                addr: restarted.addr(),
                reused: true,
            });
        }
        Ok(restarted)
    }

    fn note_started<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
        &self,
        d: &Deployer<'_, R, P, N, S, H>,
        instance: &Instance,
        reused: bool,
    ) -> Result<(), DeployError> {
        let step = Step::InstanceStarted {
            instance: instance.clone(),
        };
        d.journal(self.id, &self.spec.name, step)?;
        d.store.put_instance(instance, InstanceState::Starting)?;
        d.observer.event(&Event::Started {
            instance: instance.name.clone(),
            addr: instance.addr(),
            reused,
        });
        Ok(())
    }

    /// One confirmed change of the serve set to `stable` (and `canary`); `Ok(None)` when
    /// there is nothing to route to (an in-place gap). The inner error means nginx refused
    /// or never confirmed it: traffic is unchanged.
    pub(super) async fn route<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
        &mut self,
        d: &Deployer<'_, R, P, N, S, H>,
        batch: u32,
        stable: Vec<Instance>,
        canary: Option<CanaryTrack>,
    ) -> Result<Result<Option<Reload>, Failure>, DeployError> {
        if stable.is_empty() {
            self.serving = stable;
            return Ok(Ok(None));
        }
        let set = self.upstream(&stable, canary.as_ref());
        let step = Step::Serve {
            batch,
            instances: stable.iter().map(|i| i.id.clone()).collect(),
            backends: set.backends.clone(),
            canary: canary.as_ref().map(|c| ServedCanary {
                instances: c.instances.iter().map(|i| i.id.clone()).collect(),
                backends: c.instances.iter().map(Instance::addr).collect(),
                weight_bp: c.weight_bp,
            }),
        };
        d.journal(self.id, &self.spec.name, step)?;
        let reload = match d.router.apply(&set).await {
            Ok(reload) => reload,
            Err(e) => return Ok(Err(Failure::new(Cause::Nginx, e.to_string()))),
        };
        let step = Step::Routed {
            generation: reload.generation,
            drain: reload.drain.clone(),
        };
        d.journal(self.id, &self.spec.name, step)?;
        d.observer.event(&match &canary {
            Some(c) => Event::Shifted {
                weight_bp: c.weight_bp,
                generation: reload.generation,
                confirm_ms: reload.confirm_ms,
            },
            None => Event::Reloaded {
                generation: reload.generation,
                confirm_ms: reload.confirm_ms,
            },
        });
        self.serving = stable;
        self.canary = canary;
        self.report.reloads += 1;
        self.last_reload = Some(reload.clone());
        Ok(Ok(Some(reload)))
    }

    /// What the router is given for a serve set.
    pub(super) fn upstream(
        &self,
        stable: &[Instance],
        canary: Option<&CanaryTrack>,
    ) -> UpstreamSet {
        let c = &self.spec.canary;
        UpstreamSet {
            service: self.spec.name.clone(),
            listen: self.spec.listen,
            backends: stable.iter().map(Instance::addr).collect(),
            canary: canary.map(|track| CanaryRoute {
                backends: track.instances.iter().map(Instance::addr).collect(),
                weight_bp: track.weight_bp,
                sticky: c.sticky.clone(),
                route: c.route.clone(),
            }),
        }
    }

    /// Waits (at most the drain timeout) for the workers of the previous config to exit.
    pub(super) async fn drain<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
        &self,
        d: &Deployer<'_, R, P, N, S, H>,
        reload: &Reload,
    ) -> Result<Drained, DeployError> {
        self.drain_within(d, reload, self.spec.drain_timeout).await
    }

    pub(super) async fn drain_within<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
        &self,
        d: &Deployer<'_, R, P, N, S, H>,
        reload: &Reload,
        timeout: std::time::Duration,
    ) -> Result<Drained, DeployError> {
        d.journal(self.id, &self.spec.name, Step::Drain)?;
        let drained = d
            .router
            .wait_drained(reload, timeout)
            .await
            .map_err(DeployError::Router)?;
        let step = Step::Drained {
            waited_ms: drained.waited_ms,
            left: drained.lingering.clone(),
        };
        d.journal(self.id, &self.spec.name, step)?;
        d.observer.event(&Event::Drained {
            waited_ms: drained.waited_ms,
            lingering: drained.lingering.clone(),
        });
        if let Some(left) = &drained.lingering {
            self.warnings
                .borrow_mut()
                .push(format!("{left} after the drain timeout ({timeout:?})"));
        }
        Ok(drained)
    }

    /// Stops replicas nginx no longer sends traffic to, concurrently. Ones this deployment
    /// created are removed; ones it restarted go back to their slot, stopped; the rest (the
    /// version being replaced) are stopped and kept until `activate` retains them.
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
        self.take_away_all(d, instances).await?;
        d.journal(self.id, &self.spec.name, Step::OldStopped)?;
        Ok(())
    }

    async fn take_away_all<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
        &self,
        d: &Deployer<'_, R, P, N, S, H>,
        instances: &[Instance],
    ) -> Result<(), DeployError> {
        let results: Vec<Result<(), DeployError>> = stream::iter(instances)
            .map(|i| self.take_away(d, i))
            .buffered(PARALLEL)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Removes an instance this deployment created; stops any other, and one it restarted
    /// goes back to its own slot as retained.
    async fn take_away<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
        &self,
        d: &Deployer<'_, R, P, N, S, H>,
        instance: &Instance,
    ) -> Result<(), DeployError> {
        if instance.origin == self.id {
            d.runtime.remove(instance).await?;
            d.store.put_instance(instance, InstanceState::Removed)?;
            d.observer.event(&Event::Removed {
                instance: instance.name.clone(),
            });
            return Ok(());
        }
        let stopped = d.runtime.stop(instance, self.spec.stop_timeout).await;
        if instance.deployment == self.id {
            let home = Instance {
                deployment: instance.origin,
                ..instance.clone()
            };
            d.store.put_instance(&home, InstanceState::Retained)?;
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

    /// Takes away replicas of a failed move, which never got traffic, and any instance of
    /// this deployment the runtime has that nginx does not serve (killed before journaled).
    pub(super) async fn discard<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
        &self,
        d: &Deployer<'_, R, P, N, S, H>,
        added: &[Instance],
    ) -> Result<(), DeployError> {
        let mut gone: Vec<Instance> = added.to_vec();
        let routed = |id: &str| {
            let canary = self.canary.iter().flat_map(|c| &c.instances);
            self.serving.iter().chain(canary).any(|s| s.id == id)
        };
        for orphan in d.runtime.list(&self.spec.name).await? {
            let known = gone.iter().any(|g| g.id == orphan.id);
            if orphan.origin == self.id && !routed(&orphan.id) && !known {
                gone.push(orphan);
            }
        }
        if gone.is_empty() {
            return Ok(());
        }
        let step = Step::RemoveNew {
            reason: "not in the upstream".into(),
        };
        d.journal(self.id, &self.spec.name, step)?;
        // Without `retire`'s journal pair: these never served.
        self.take_away_all(d, &gone).await
    }
}
