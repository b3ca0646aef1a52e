//! A service's container options on Docker's create call: [`create_body`] turns an
//! [`InstanceSpec`] (its `ContainerSpec`: command, entrypoint, user, workdir, stop signal,
//! labels, memory and CPU limits, log driver, extra hosts, restart policy, volumes and
//! networks) into bollard's `ContainerCreateBody`; [`DockerRuntime::prepare`] checks and
//! creates what the container needs before it exists (its networks, its named volumes) and
//! [`DockerRuntime::join_networks`] connects it to the networks after the first.
//!
//! Published ports stay on 127.0.0.1 whichever networks a replica joins, and a service's
//! labels never replace switchyard's own.

use std::collections::HashMap;

use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, HostConfigLogConfig, Mount, MountType,
    NetworkConnectRequest, NetworkingConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
    VolumeCreateRequest,
};
use switchyard_engine::config::container::{ContainerSpec, Network, Restart, VolumeSource};
use switchyard_engine::{InstanceSpec, RuntimeError};

use crate::{failed, labels, DockerRuntime};

/// The create call for `spec` from `image`, published on 127.0.0.1:`host_port`.
pub(crate) fn create_body(
    spec: &InstanceSpec,
    image: &str,
    scope: &str,
    host_port: u16,
) -> ContainerCreateBody {
    let c = &spec.container;
    let container_port = format!("{}/tcp", spec.port);
    let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.extend(spec.secrets.iter().map(|(k, v)| format!("{k}={v}")));
    env.push(format!("APP_VERSION={}", spec.version));
    env.push(format!("PORT={}", spec.port));
    let first = c.networks.first();
    ContainerCreateBody {
        image: Some(image.to_owned()),
        env: Some(env),
        cmd: c.command.clone(),
        entrypoint: c.entrypoint.clone(),
        user: c.user.clone(),
        working_dir: c.workdir.clone(),
        stop_signal: c.stop_signal.clone(),
        labels: Some(merged_labels(spec, scope, host_port)),
        exposed_ports: Some(vec![container_port.clone()]),
        host_config: Some(HostConfig {
            port_bindings: Some(HashMap::from([(
                container_port,
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(host_port.to_string()),
                }]),
            )])),
            restart_policy: Some(restart_policy(c.restart)),
            memory: c.memory,
            nano_cpus: c.cpus.map(|cpus| (cpus * 1e9).round() as i64),
            log_config: c.log.as_ref().map(|log| HostConfigLogConfig {
                typ: Some(log.driver.clone()),
                config: Some(log.options.clone().into_iter().collect()),
            }),
            extra_hosts: (!c.extra_hosts.is_empty()).then(|| c.extra_hosts.clone()),
            mounts: (!c.volumes.is_empty()).then(|| mounts(c)),
            // The first network at create (Docker before API 1.44 takes one endpoint here),
            // the rest connected before the start.
            network_mode: first.map(|n| n.name.clone()),
            ..Default::default()
        }),
        networking_config: first.map(|n| NetworkingConfig {
            endpoints_config: Some(HashMap::from([(n.name.clone(), endpoint(n))])),
        }),
        ..Default::default()
    }
}

/// The service's labels under switchyard's own: a key in both keeps switchyard's value.
fn merged_labels(spec: &InstanceSpec, scope: &str, host_port: u16) -> HashMap<String, String> {
    let mut merged: HashMap<String, String> = spec.container.labels.clone().into_iter().collect();
    merged.extend(labels::for_instance(spec, scope, host_port));
    merged
}

/// The service's restart policy; by default `unless-stopped`: back after a dockerd restart
/// or a reboot, while `docker stop` (ours, retiring a replica) is respected.
fn restart_policy(restart: Option<Restart>) -> RestartPolicy {
    let (name, max) = match restart {
        None | Some(Restart::UnlessStopped) => (RestartPolicyNameEnum::UNLESS_STOPPED, None),
        Some(Restart::No) => (RestartPolicyNameEnum::NO, None),
        Some(Restart::Always) => (RestartPolicyNameEnum::ALWAYS, None),
        Some(Restart::OnFailure { max }) => (RestartPolicyNameEnum::ON_FAILURE, Some(max.into())),
    };
    RestartPolicy {
        name: Some(name),
        maximum_retry_count: max,
    }
}

/// Mounts rather than binds: a bind whose source is missing fails the create instead of
/// Docker creating an empty directory there.
fn mounts(c: &ContainerSpec) -> Vec<Mount> {
    c.volumes
        .iter()
        .map(|v| {
            let (typ, source) = match &v.source {
                VolumeSource::Bind(path) => (MountType::BIND, path.display().to_string()),
                VolumeSource::Named(name) => (MountType::VOLUME, name.clone()),
            };
            Mount {
                target: Some(v.target.clone()),
                source: Some(source),
                typ: Some(typ),
                read_only: Some(v.read_only),
                ..Default::default()
            }
        })
        .collect()
}

fn endpoint(network: &Network) -> EndpointSettings {
    EndpointSettings {
        aliases: (!network.aliases.is_empty()).then(|| network.aliases.clone()),
        ..Default::default()
    }
}

impl DockerRuntime {
    /// What `spec`'s container needs before it is created: every network it joins
    /// must exist (a missing one fails the start, named), and its named volumes are created,
    /// labelled with the scope and service, where missing.
    pub(crate) async fn prepare(&self, spec: &InstanceSpec) -> Result<(), RuntimeError> {
        for network in &spec.container.networks {
            match self.docker.inspect_network(&network.name, None).await {
                Ok(_) => {}
                Err(BollardError::DockerResponseServerError {
                    status_code: 404, ..
                }) => {
                    return Err(RuntimeError::Failed {
                        what: format!("network {:?} (service.networks)", network.name),
                        message: format!(
                            "does not exist; create it with `docker network create {}`",
                            network.name
                        ),
                    })
                }
                Err(e) => return Err(failed(&format!("inspecting network {}", network.name), e)),
            }
        }
        for volume in &spec.container.volumes {
            if let VolumeSource::Named(volume) = &volume.source {
                self.ensure_volume(spec, volume).await?;
            }
        }
        Ok(())
    }

    /// Creates the named volume `volume` unless it exists. Creating is idempotent in Docker,
    /// so two replicas starting at once both succeed.
    async fn ensure_volume(&self, spec: &InstanceSpec, volume: &str) -> Result<(), RuntimeError> {
        match self.docker.inspect_volume(volume).await {
            Ok(_) => return Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(failed(&format!("inspecting volume {volume}"), e)),
        }
        let request = VolumeCreateRequest {
            name: Some(volume.to_owned()),
            labels: Some(HashMap::from([
                (labels::SCOPE_LABEL.to_owned(), self.scope.clone()),
                (labels::SERVICE.to_owned(), spec.service.to_string()),
            ])),
            ..Default::default()
        };
        self.docker
            .create_volume(request)
            .await
            .map(drop)
            .map_err(|e| failed(&format!("creating volume {volume}"), e))
    }

    /// Connects the created container `id` to every network after the first, with its
    /// aliases there.
    pub(crate) async fn join_networks(
        &self,
        spec: &InstanceSpec,
        id: &str,
        name: &str,
    ) -> Result<(), RuntimeError> {
        for network in spec.container.networks.iter().skip(1) {
            let request = NetworkConnectRequest {
                container: id.to_owned(),
                endpoint_config: Some(endpoint(network)),
            };
            self.docker
                .connect_network(&network.name, request)
                .await
                .map_err(|e| {
                    failed(
                        &format!("connecting container {name} to network {}", network.name),
                        e,
                    )
                })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use switchyard_engine::config::container::{LogSpec, Volume};
    use switchyard_engine::{Color, Name, Source, Version};

    use super::*;

    fn spec(container: ContainerSpec) -> InstanceSpec {
        InstanceSpec {
            service: Name::parse("web").unwrap(),
            version: Version::parse("v1").unwrap(),
            color: Color::Blue,
            deployment: 3,
            replica: 0,
            source: Source::Image("demo:v1".into()),
            port: 8080,
            env: BTreeMap::new(),
            host_port: None,
            container,
            secrets: Default::default(),
        }
    }

    #[test]
    fn no_options_keep_the_image_defaults_and_restart_unless_stopped() {
        let body = create_body(&spec(ContainerSpec::default()), "demo:v1", "s1", 4000);
        assert_eq!((body.cmd, body.entrypoint, body.user), (None, None, None));
        assert_eq!(body.networking_config, None);
        let host = body.host_config.unwrap();
        assert_eq!(host.network_mode, None);
        assert_eq!(host.mounts, None);
        assert_eq!(
            host.restart_policy.unwrap().name,
            Some(RestartPolicyNameEnum::UNLESS_STOPPED)
        );
        let binding = &host.port_bindings.unwrap()["8080/tcp"].clone().unwrap()[0];
        assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(binding.host_port.as_deref(), Some("4000"));
    }

    #[test]
    fn every_option_reaches_the_create_call() {
        let container = ContainerSpec {
            command: Some(vec!["serve".into()]),
            entrypoint: Some(vec!["/app".into()]),
            user: Some("1000:1000".into()),
            workdir: Some("/srv".into()),
            memory: Some(64 << 20),
            cpus: Some(0.5),
            labels: BTreeMap::from([("team".into(), "shop".into())]),
            log: Some(LogSpec {
                driver: "json-file".into(),
                options: BTreeMap::from([("max-size".into(), "1m".into())]),
            }),
            extra_hosts: vec!["db:10.0.0.5".into()],
            stop_signal: Some("SIGINT".into()),
            restart: Some(Restart::OnFailure { max: 3 }),
            volumes: vec![
                Volume {
                    source: VolumeSource::Bind("/srv/data".into()),
                    target: "/data".into(),
                    read_only: false,
                },
                Volume {
                    source: VolumeSource::Named("cache".into()),
                    target: "/cache".into(),
                    read_only: true,
                },
            ],
            networks: vec![
                Network {
                    name: "shop-net".into(),
                    aliases: vec!["shop".into()],
                },
                Network {
                    name: "other".into(),
                    aliases: vec![],
                },
            ],
            ..Default::default()
        };
        let body = create_body(&spec(container), "demo:v1", "s1", 4000);
        assert_eq!(body.cmd, Some(vec!["serve".to_owned()]));
        assert_eq!(body.entrypoint, Some(vec!["/app".to_owned()]));
        assert_eq!(body.user.as_deref(), Some("1000:1000"));
        assert_eq!(body.working_dir.as_deref(), Some("/srv"));
        assert_eq!(body.stop_signal.as_deref(), Some("SIGINT"));
        assert_eq!(body.labels.as_ref().unwrap()["team"], "shop");
        let host = body.host_config.unwrap();
        assert_eq!(host.memory, Some(64 << 20));
        assert_eq!(host.nano_cpus, Some(500_000_000));
        let log = host.log_config.unwrap();
        assert_eq!(log.typ.as_deref(), Some("json-file"));
        assert_eq!(log.config.unwrap()["max-size"], "1m");
        assert_eq!(host.extra_hosts, Some(vec!["db:10.0.0.5".to_owned()]));
        let restart = host.restart_policy.unwrap();
        assert_eq!(restart.name, Some(RestartPolicyNameEnum::ON_FAILURE));
        assert_eq!(restart.maximum_retry_count, Some(3));
        let mounts = host.mounts.unwrap();
        assert_eq!(mounts[0].typ, Some(MountType::BIND));
        assert_eq!(mounts[0].source.as_deref(), Some("/srv/data"));
        assert_eq!(mounts[0].read_only, Some(false));
        assert_eq!(mounts[1].typ, Some(MountType::VOLUME));
        assert_eq!(mounts[1].source.as_deref(), Some("cache"));
        assert_eq!(mounts[1].read_only, Some(true));
        // One network at create; `join_networks` connects the rest.
        assert_eq!(host.network_mode.as_deref(), Some("shop-net"));
        let endpoints = body.networking_config.unwrap().endpoints_config.unwrap();
        assert_eq!(endpoints.len(), 1);
        assert_eq!(endpoints["shop-net"].aliases, Some(vec!["shop".to_owned()]));
    }

    #[test]
    fn a_service_label_never_replaces_switchyards_own() {
        let container = ContainerSpec {
            labels: BTreeMap::from([
                (labels::SERVICE.to_owned(), "someone-else".to_owned()),
                ("team".to_owned(), "shop".to_owned()),
            ]),
            ..Default::default()
        };
        let body = create_body(&spec(container), "demo:v1", "s1", 4000);
        let labels = body.labels.unwrap();
        assert_eq!(labels[labels::SERVICE], "web");
        assert_eq!(labels[labels::SCOPE_LABEL], "s1");
        assert_eq!(labels["team"], "shop");
    }
}
