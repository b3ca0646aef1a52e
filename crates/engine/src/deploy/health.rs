//! Waiting until new replicas are healthy ([`wait_healthy`]), and whether replicas are
//! healthy now ([`instance_healthy`], [`healthy_only`]).
//!
//! Each replica must pass the HTTP health path `healthy_after` times in a row, polled every
//! `interval`, before `deadline`; where the image defines a Docker HEALTHCHECK it must also
//! report healthy. An exited or Docker-unhealthy replica fails at once. The failure message
//! names the replica and shows its last health response.

use tokio::time::Instant;

use super::{DeployError, Deployer};
use crate::config::ServiceSpec;
use crate::model::{Cause, DeploymentId, Failure, Instance, Step};
use crate::seams::*;

/// [`wait_healthy`] between its two journal steps (`wait_healthy`, then `healthy`), saying
/// so when it passes. The inner error is why the instances are not healthy.
pub(super) async fn journaled<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
    d: &Deployer<'_, R, P, N, S, H>,
    spec: &ServiceSpec,
    id: DeploymentId,
    instances: &[Instance],
) -> Result<Result<u64, Failure>, DeployError> {
    d.journal(id, &spec.name, Step::WaitHealthy)?;
    let waited_ms = match wait_healthy(d, spec, instances).await? {
        Ok(ms) => ms,
        Err(message) => return Ok(Err(Failure::new(Cause::Unhealthy, message))),
    };
    d.journal(id, &spec.name, Step::Healthy { waited_ms })?;
    d.observer.event(&Event::Healthy { waited_ms });
    Ok(Ok(waited_ms))
}

/// Returns the milliseconds waited, or why the replicas are not healthy.
pub(super) async fn wait_healthy<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
    d: &Deployer<'_, R, P, N, S, H>,
    spec: &ServiceSpec,
    instances: &[Instance],
) -> Result<Result<u64, String>, DeployError> {
    let h = &spec.health;
    let start = Instant::now();
    let mut next_heartbeat = start + super::HEARTBEAT_EVERY;
    let mut passes = vec![0u32; instances.len()];
    let mut last = vec![String::from("no response yet"); instances.len()];
    loop {
        for (i, instance) in instances.iter().enumerate() {
            if passes[i] >= h.healthy_after {
                continue;
            }
            let (ok, summary) = match check(d, spec, instance, &last[i]).await {
                Ok(checked) => checked,
                Err(message) => return Ok(Err(message)),
            };
            passes[i] = if ok { passes[i] + 1 } else { 0 };
            last[i] = summary;
            d.observer.event(&Event::Waiting {
                instance: instance.name.clone(),
                passes: passes[i],
                needed: h.healthy_after,
                last: last[i].clone(),
            });
        }
        let waiting = passes.iter().position(|&p| p < h.healthy_after);
        let Some(i) = waiting else {
            return Ok(Ok(start.elapsed().as_millis() as u64));
        };
        if start.elapsed() >= h.deadline {
            return Ok(Err(format!(
                "{} did not pass GET {} {} times in a row within {:?}; last health response: {}",
                instances[i].name, h.path, h.healthy_after, h.deadline, last[i]
            )));
        }
        if Instant::now() >= next_heartbeat {
            next_heartbeat += super::HEARTBEAT_EVERY;
            d.store
                .heartbeat(&spec.name, d.host.pid(), d.host.now_ms())?;
        }
        tokio::time::sleep(h.interval).await;
    }
}

/// One check of one replica: whether it passed, and what it answered. The error means it
/// cannot become healthy (it exited, vanished, or Docker calls it unhealthy).
async fn check<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
    d: &Deployer<'_, R, P, N, S, H>,
    spec: &ServiceSpec,
    instance: &Instance,
    last: &str,
) -> Result<(bool, String), String> {
    let health = match d.runtime.status(instance).await {
        Ok(InstanceStatus::Running { health }) => health,
        Ok(InstanceStatus::Exited { code }) => {
            let logs = d.runtime.logs(instance, 20).await;
            let code = code.map_or("unknown".to_owned(), |c| c.to_string());
            return Err(format!(
                "{} exited (code {code}) before it was healthy; last health response: {last}; last output:\n{logs}",
                instance.name
            ));
        }
        Ok(InstanceStatus::Missing) => {
            return Err(format!(
                "{} disappeared before it was healthy",
                instance.name
            ))
        }
        Err(e) => return Err(format!("checking {}: {e}", instance.name)),
    };
    if health == RuntimeHealth::Unhealthy {
        return Err(format!(
            "{} is unhealthy by its Docker HEALTHCHECK; last health response: {last}",
            instance.name
        ));
    }
    let h = &spec.health;
    let probe = d.prober.probe(instance.addr(), &h.path, h.timeout).await;
    let runtime_ok = matches!(health, RuntimeHealth::None | RuntimeHealth::Healthy);
    let summary = if probe.ok && !runtime_ok {
        format!("{} (Docker HEALTHCHECK still starting)", probe.summary)
    } else {
        probe.summary
    };
    Ok((probe.ok && runtime_ok, summary))
}

/// Running (and Docker-healthy, where the image has a check) and passing the health path.
pub(super) async fn instance_healthy<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
    d: &Deployer<'_, R, P, N, S, H>,
    spec: &ServiceSpec,
    instance: &Instance,
) -> bool {
    let running = matches!(
        d.runtime.status(instance).await,
        Ok(InstanceStatus::Running {
            health: RuntimeHealth::None | RuntimeHealth::Healthy
        })
    );
    running
        && d.prober
            .probe(instance.addr(), &spec.health.path, spec.health.timeout)
            .await
            .ok
}

/// The instances of `list` that are healthy now, each probed once.
pub(super) async fn healthy_only<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
    d: &Deployer<'_, R, P, N, S, H>,
    spec: &ServiceSpec,
    list: &[Instance],
) -> Vec<Instance> {
    let mut up = Vec::new();
    for i in list {
        if instance_healthy(d, spec, i).await {
            up.push(i.clone());
        }
    }
    up
}
