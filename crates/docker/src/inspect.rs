//! Reading a container switchyard did not start, by name or id: [`DockerRuntime::inspect`]
//! and what it returns, [`Inspected`] with its [`PublishedPort`]s. `switchyard adopt` reads
//! a plain `docker run -d -p 8080:8080 --name app app:1` container this way.

use bollard::errors::Error as BollardError;
use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum};
use switchyard_engine::RuntimeError;

use crate::{labels, DockerRuntime};

/// What Docker says about one container, in plain types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    pub id: String,
    /// Without Docker's leading `/`.
    pub name: String,
    /// The image reference it was created from (`app:1`, `registry:5000/app:1.4`).
    pub image: String,
    pub running: bool,
    /// Docker's word for its state: `running`, `exited`, `paused`, ...
    pub state: String,
    /// Its published ports, as Docker reports them while it runs.
    pub ports: Vec<PublishedPort>,
    /// The switchyard scope label, if some installation of switchyard started it.
    pub scope: Option<String>,
    /// Its restart policy (`no`, `always`, `unless-stopped`, `on-failure`).
    pub restart: String,
}

/// One host binding of a container port: `127.0.0.1:49153 -> 8080/tcp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedPort {
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// `0.0.0.0`, `127.0.0.1`, `::`, or empty (all addresses).
    pub host_ip: String,
    pub host_port: u16,
}

impl DockerRuntime {
    /// The container named (or with the id) `container`; `None` when Docker has none.
    pub async fn inspect(&self, container: &str) -> Result<Option<Inspected>, RuntimeError> {
        match self.docker.inspect_container(container, None).await {
            Ok(c) => Ok(Some(inspected(c))),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(crate::failed(
                &format!("inspecting container {container}"),
                e,
            )),
        }
    }
}

fn inspected(c: ContainerInspectResponse) -> Inspected {
    let state = c.state.unwrap_or_default();
    let config = c.config.unwrap_or_default();
    let restart = c
        .host_config
        .and_then(|h| h.restart_policy)
        .and_then(|p| p.name)
        .map_or("no".to_owned(), |n| n.to_string());
    let ports = c
        .network_settings
        .and_then(|n| n.ports)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|(key, bindings)| {
            let (port, protocol) = key.split_once('/').unwrap_or((key.as_str(), "tcp"));
            let container_port = port.parse().ok();
            let protocol = protocol.to_owned();
            bindings
                .unwrap_or_default()
                .into_iter()
                .filter_map(move |b| {
                    Some(PublishedPort {
                        container_port: container_port?,
                        protocol: protocol.clone(),
                        host_ip: b.host_ip.unwrap_or_default(),
                        host_port: b.host_port?.parse().ok()?,
                    })
                })
        })
        .collect();
    Inspected {
        id: c.id.unwrap_or_default(),
        name: c
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned(),
        image: config.image.unwrap_or_default(),
        running: state.status == Some(ContainerStateStatusEnum::RUNNING),
        state: state.status.map_or("unknown".to_owned(), |s| s.to_string()),
        ports,
        scope: config
            .labels
            .and_then(|mut l| l.remove(labels::SCOPE_LABEL)),
        restart,
    }
}
