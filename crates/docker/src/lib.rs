//! switchyard's Docker runtime: [`DockerRuntime`], the engine's `Runtime` over bollard.
//! This is the only crate that names bollard types.
//!
//! Every container is labelled with its service, version, colour, deployment, replica, host
//! port and a *scope* (one per state database), so two switchyard installations, or two
//! tests, on one engine never see each other's containers. Ports are published on
//! 127.0.0.1 only: on the host port the spec names (freed by the replica it replaces, for an
//! in-place deploy), else on one switchyard allocates. [`pull`] brings a service's image onto
//! the host before its replicas start (`Runtime::prepare`), logged in to its registry. A
//! service's container options (command, user, limits, log driver, restart policy, volumes,
//! networks, …) are applied at create by `options`. [`image`] builds `FROM scratch` images
//! from a static binary, for the demo and the tests (no registry can be reached).
//! [`inspect`] reads a container switchyard did not start, for `switchyard adopt`; [`exit`]
//! how a replica ended (exit code, OOM kill), for a failed deployment's evidence.

pub mod exit;
pub mod image;
pub mod inspect;
mod labels;
mod logs;
mod options;
pub mod prune;
pub mod pull;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::{ContainerStateStatusEnum, ContainerSummary, HealthStatusEnum};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use switchyard_engine::{
    Instance, InstanceSpec, InstanceStatus, Name, Runtime, RuntimeError, RuntimeHealth, Source,
};

pub use labels::SCOPE_LABEL;

/// How many times a start is retried when the allocated host port was taken meanwhile.
const PORT_ATTEMPTS: usize = 3;

/// How long a start on a requested host port (`InstanceSpec::host_port`) is retried while
/// that port is taken: the container that held it has just been stopped, and Docker's proxy
/// may release it a moment later.
const PORT_WAIT: Duration = Duration::from_secs(5);

/// How long to wait between those attempts.
const PORT_RETRY: Duration = Duration::from_millis(100);

pub struct DockerRuntime {
    docker: Docker,
    scope: String,
    /// [`PORT_WAIT`], shorter in tests.
    port_wait: Duration,
    /// Credentials and progress for pulls.
    pull: Arc<pull::PullSettings>,
}

impl DockerRuntime {
    /// Connects to the local engine (DOCKER_HOST or the default socket) and negotiates the
    /// API version. `scope` separates this installation's containers from any other's.
    pub async fn connect(scope: &str) -> Result<DockerRuntime, RuntimeError> {
        let unavailable = |e: BollardError| {
            RuntimeError::Unavailable(format!(
                "docker engine unreachable (is the daemon running and DOCKER_HOST right?): {e}"
            ))
        };
        let docker = Docker::connect_with_local_defaults().map_err(unavailable)?;
        let docker = docker.negotiate_version().await.map_err(unavailable)?;
        docker.ping().await.map_err(unavailable)?;
        Ok(DockerRuntime {
            docker,
            scope: scope.to_owned(),
            port_wait: PORT_WAIT,
            pull: Arc::default(),
        })
    }

    /// The same client, pulling with `settings` (`[registry]`, Docker's config, progress).
    pub fn with_pull(self, settings: Arc<pull::PullSettings>) -> DockerRuntime {
        DockerRuntime {
            pull: settings,
            ..self
        }
    }

    pub fn scope(&self) -> &str {
        &self.scope
    }

    async fn list_summaries(
        &self,
        filters: HashMap<&str, Vec<String>>,
    ) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        self.docker
            .list_containers(Some(options))
            .await
            .map_err(|e| failed("listing containers", e))
    }

    async fn remove_id(&self, id: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(failed(&format!("removing container {id}"), e)),
        }
    }

    /// Creates the container publishing on 127.0.0.1:`host_port` with the service's
    /// container options, joins its other networks and starts it; if any of that fails, the
    /// container is removed again.
    async fn create_and_start(
        &self,
        spec: &InstanceSpec,
        image: &str,
        name: &str,
        host_port: u16,
    ) -> Result<Instance, RuntimeError> {
        let body = options::create_body(spec, image, &self.scope, host_port);
        let options = CreateContainerOptionsBuilder::new().name(name).build();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| failed(&format!("creating container {name} from {image}"), e))?;
        if let Err(e) = self.join_networks(spec, &created.id, name).await {
            self.remove_id(&created.id).await?;
            return Err(e);
        }
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            self.remove_id(&created.id).await?;
            return Err(failed(
                &format!("starting container {name} on 127.0.0.1:{host_port}"),
                e,
            ));
        }
        Ok(spec.instance(created.id, name.to_owned(), host_port))
    }

    /// Starts on a port allocated here, on another one if it was taken meanwhile.
    async fn start_allocating(
        &self,
        spec: &InstanceSpec,
        image: &str,
        name: &str,
    ) -> Result<Instance, RuntimeError> {
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            let host_port = free_loopback_port().map_err(|e| RuntimeError::Failed {
                what: name.to_owned(),
                message: format!("allocating a host port: {e}"),
            })?;
            match self.create_and_start(spec, image, name, host_port).await {
                Ok(instance) => return Ok(instance),
                Err(e) if is_port_conflict(&e) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// Starts on the requested `port`, retrying every [`PORT_RETRY`] for up to `port_wait`
    /// while it is still taken.
    async fn start_on(
        &self,
        spec: &InstanceSpec,
        image: &str,
        name: &str,
        port: u16,
    ) -> Result<Instance, RuntimeError> {
        let deadline = tokio::time::Instant::now() + self.port_wait;
        loop {
            match self.create_and_start(spec, image, name, port).await {
                Err(RuntimeError::Failed { message, .. })
                    if is_port_conflict_message(&message)
                        && tokio::time::Instant::now() >= deadline =>
                {
                    return Err(RuntimeError::Failed {
                        what: name.to_owned(),
                        message: format!(
                            "host port 127.0.0.1:{port} is still taken after {:?}: {message}",
                            self.port_wait
                        ),
                    });
                }
                Err(e) if is_port_conflict(&e) => tokio::time::sleep(PORT_RETRY).await,
                result => return result,
            }
        }
    }
}

impl Runtime for DockerRuntime {
    async fn prepare(&self, spec: &InstanceSpec) -> Result<(), RuntimeError> {
        pull::prepare(self, spec).await
    }

    async fn start(&self, spec: &InstanceSpec) -> Result<Instance, RuntimeError> {
        let Source::Image(image) = &spec.source else {
            return Err(RuntimeError::Failed {
                what: spec.instance_name(),
                message: "the docker runtime needs `image`, not `command`".into(),
            });
        };
        let name = format!("{}-{}", self.scope, spec.instance_name());
        self.prepare(spec).await?;
        match spec.host_port {
            Some(port) => self.start_on(spec, image, &name, port).await,
            None => self.start_allocating(spec, image, &name).await,
        }
    }

    async fn restart(&self, instance: &Instance) -> Result<Instance, RuntimeError> {
        match self.docker.start_container(&instance.id, None).await {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(instance.clone()),
            Err(e) => Err(failed(
                &format!(
                    "starting container {} again on 127.0.0.1:{}",
                    instance.name, instance.host_port
                ),
                e,
            )),
        }
    }

    async fn status(&self, instance: &Instance) -> Result<InstanceStatus, RuntimeError> {
        let inspected = match self.docker.inspect_container(&instance.id, None).await {
            Ok(c) => c,
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(InstanceStatus::Missing),
            Err(e) => {
                return Err(failed(
                    &format!("inspecting container {}", instance.name),
                    e,
                ))
            }
        };
        let state = inspected.state.unwrap_or_default();
        if state.status != Some(ContainerStateStatusEnum::RUNNING) {
            return Ok(InstanceStatus::Exited {
                code: state.exit_code,
            });
        }
        let health = match state.health.and_then(|h| h.status) {
            Some(HealthStatusEnum::STARTING) => RuntimeHealth::Starting,
            Some(HealthStatusEnum::HEALTHY) => RuntimeHealth::Healthy,
            Some(HealthStatusEnum::UNHEALTHY) => RuntimeHealth::Unhealthy,
            _ => RuntimeHealth::None,
        };
        Ok(InstanceStatus::Running { health })
    }

    /// Docker's stop API counts whole seconds, so it is asked for the timeout rounded up
    /// (it keeps its own semantics: the container's stop signal, the service's
    /// `stop_signal` or else the image's, and a restart policy that does not bring the
    /// container back) and a SIGKILL from here ends it at the exact timeout.
    async fn stop(&self, instance: &Instance, timeout: Duration) -> Result<(), RuntimeError> {
        let what = format!("stopping container {}", instance.name);
        let seconds = i32::try_from(timeout.as_secs_f64().ceil() as u64).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::new().t(seconds).build();
        let stop = self.docker.stop_container(&instance.id, Some(options));
        tokio::pin!(stop);
        let stopped = tokio::select! {
            stopped = &mut stop => stopped,
            () = tokio::time::sleep(timeout) => {
                let kill = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
                match self.docker.kill_container(&instance.id, Some(kill)).await {
                    // 409: it exited meanwhile.
                    Ok(()) | Err(BollardError::DockerResponseServerError {
                        status_code: 404 | 409,
                        ..
                    }) => {}
                    Err(e) => return Err(failed(&what, e)),
                }
                stop.await
            }
        };
        match stopped {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 304 | 404,
                ..
            }) => Ok(()),
            Err(e) => Err(failed(&what, e)),
        }
    }

    async fn remove(&self, instance: &Instance) -> Result<(), RuntimeError> {
        self.remove_id(&instance.id).await
    }

    async fn logs(&self, instance: &Instance, lines: usize) -> String {
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail(&lines.to_string())
            .build();
        let mut stream = self.docker.logs(&instance.id, Some(options));
        let mut text = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        text
    }

    async fn list(&self, service: &Name) -> Result<Vec<Instance>, RuntimeError> {
        let filters = HashMap::from([(
            "label",
            vec![
                format!("{SCOPE_LABEL}={}", self.scope),
                format!("{}={service}", labels::SERVICE),
            ],
        )]);
        let found = self.list_summaries(filters).await?;
        Ok(found
            .into_iter()
            .filter_map(labels::instance_from)
            .collect())
    }
}

fn failed(what: &str, e: BollardError) -> RuntimeError {
    match e {
        BollardError::DockerResponseServerError { message, .. } => RuntimeError::Failed {
            what: what.to_owned(),
            message,
        },
        BollardError::HyperResponseError { .. } | BollardError::IOError { .. } => {
            RuntimeError::Unavailable(format!("{what}: docker engine unreachable: {e}"))
        }
        other => RuntimeError::Failed {
            what: what.to_owned(),
            message: other.to_string(),
        },
    }
}

fn is_port_conflict(e: &RuntimeError) -> bool {
    matches!(e, RuntimeError::Failed { message, .. } if is_port_conflict_message(message))
}

/// Docker's words for a host port that is taken: by another container, or by anything else.
fn is_port_conflict_message(message: &str) -> bool {
    message.contains("port is already allocated") || message.contains("address already in use")
}

/// A port on 127.0.0.1 that was free a moment ago; a race is retried by the caller.
fn free_loopback_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
