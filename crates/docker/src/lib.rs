//! switchyard's Docker runtime: [`DockerRuntime`], the engine's `Runtime` over bollard.
//! This is the only crate that names bollard types.
//!
//! Every container is labelled with its service, version, colour, deployment, replica, host
//! port and a *scope* (one per state database), so two switchyard installations, or two
//! tests, on one engine never see each other's containers. Ports are published on
//! 127.0.0.1 only, on host ports switchyard allocates. [`image`] builds `FROM scratch`
//! images from a static binary, for the demo and the tests (no registry can be reached).

pub mod image;
mod labels;

use std::collections::HashMap;
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, ContainerSummary, HealthStatusEnum, HostConfig,
    PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use switchyard_engine::{
    Instance, InstanceSpec, InstanceStatus, Name, Runtime, RuntimeError, RuntimeHealth, Source,
};

pub use labels::SCOPE_LABEL;

/// How many times a start is retried when the allocated host port was taken meanwhile.
const PORT_ATTEMPTS: usize = 3;

pub struct DockerRuntime {
    docker: Docker,
    scope: String,
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
        })
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

    async fn create_and_start(
        &self,
        spec: &InstanceSpec,
        image: &str,
        name: &str,
    ) -> Result<Instance, RuntimeError> {
        let host_port = free_loopback_port().map_err(|e| RuntimeError::Failed {
            what: name.to_owned(),
            message: format!("allocating a host port: {e}"),
        })?;
        let container_port = format!("{}/tcp", spec.port);
        let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.push(format!("APP_VERSION={}", spec.version));
        env.push(format!("PORT={}", spec.port));
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            env: Some(env),
            labels: Some(labels::for_instance(spec, &self.scope, host_port)),
            exposed_ports: Some(vec![container_port.clone()]),
            host_config: Some(HostConfig {
                port_bindings: Some(HashMap::from([(
                    container_port,
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".into()),
                        host_port: Some(host_port.to_string()),
                    }]),
                )])),
                // Back after a dockerd restart or a reboot; `docker stop` (ours) is respected.
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(name).build();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| failed(&format!("creating container {name} from {image}"), e))?;
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            self.remove_id(&created.id).await?;
            return Err(failed(
                &format!("starting container {name} on 127.0.0.1:{host_port}"),
                e,
            ));
        }
        Ok(Instance {
            id: created.id,
            name: name.to_owned(),
            service: spec.service.clone(),
            version: spec.version.clone(),
            color: spec.color,
            deployment: spec.deployment,
            replica: spec.replica,
            host_port,
        })
    }
}

impl Runtime for DockerRuntime {
    fn kind(&self) -> &'static str {
        "docker"
    }

    async fn start(&self, spec: &InstanceSpec) -> Result<Instance, RuntimeError> {
        let Source::Image(image) = &spec.source else {
            return Err(RuntimeError::Failed {
                what: spec.instance_name(),
                message: "the docker runtime needs `image`, not `command`".into(),
            });
        };
        let name = format!("{}-{}", self.scope, spec.instance_name());
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            match self.create_and_start(spec, image, &name).await {
                Ok(instance) => return Ok(instance),
                Err(e) if is_port_conflict(&e) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one attempt"))
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

    async fn stop(&self, instance: &Instance, timeout: Duration) -> Result<(), RuntimeError> {
        let seconds = i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::new().t(seconds).build();
        match self
            .docker
            .stop_container(&instance.id, Some(options))
            .await
        {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 304 | 404,
                ..
            }) => Ok(()),
            Err(e) => Err(failed(&format!("stopping container {}", instance.name), e)),
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
    matches!(e, RuntimeError::Failed { message, .. } if message.contains("port is already allocated") || message.contains("address already in use"))
}

/// A port on 127.0.0.1 that was free a moment ago; a race is retried by the caller.
fn free_loopback_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
