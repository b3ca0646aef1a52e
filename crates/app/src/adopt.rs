//! `switchyard adopt SERVICE --container NAME`: [`adopt`] finds a running container that
//! switchyard did not start (the classic `docker run -d -p 8080:8080 --name app app:1`),
//! checks it can serve as the service ([`adoptee`]: running, the service's `port`
//! published where 127.0.0.1 reaches it, a version from `--version` or its image's tag),
//! and hands it to the engine's [`Deployer::adopt`](switchyard_engine::deploy::Deployer),
//! which records it as the live version and routes nginx to it. Every refusal is exit 2 and
//! changes nothing; nginx is only started once the container passed those checks.

use serde::Serialize;
use switchyard_docker::inspect::Inspected;
use switchyard_engine::deploy::adopt::{AdoptReport, Adoptee};
use switchyard_engine::{Observer, ServiceSpec, Source, Version};

use crate::live::{AnyRuntime, Live};
use crate::AppError;

/// What `adopt` did, and what the user should know about the container it took over.
#[derive(Debug, Clone, Serialize)]
pub struct Adopted {
    #[serde(flatten)]
    pub report: AdoptReport,
    pub image: String,
    /// Things that will not stop the adoption but may surprise later.
    pub warnings: Vec<String>,
}

/// Adopts `container` as the live version of `service` (`version`, or its image's tag).
pub async fn adopt(
    live: &Live,
    service: &str,
    container: &str,
    version: Option<&str>,
    observer: &dyn Observer,
) -> Result<Adopted, AppError> {
    let spec = live.spec(service)?;
    let version = version
        .map(|v| Version::parse(v).map_err(|e| AppError::input(format!("--version: {e}"))))
        .transpose()?;
    let AnyRuntime::Docker(docker) = &live.runtime else {
        return Err(AppError::input(format!(
            "adopt takes over a Docker container, and the config runs {service} as a process ([runtime] kind = \"process\"); nothing was adopted"
        )));
    };
    let docker = docker
        .get()
        .await
        .map_err(|e| AppError::environment(e.to_string()))?;
    let found = docker
        .inspect(container)
        .await
        .map_err(|e| AppError::environment(e.to_string()))?
        .ok_or_else(|| {
            AppError::input(format!(
                "no container named {container:?} (`docker ps` lists the running ones); nothing was adopted"
            ))
        })?;
    let adoptee = adoptee(spec, &found, version)?;
    let warnings = warnings(spec, &found, &adoptee);
    live.ensure_nginx().await?;
    let report = live.deployer(observer).adopt(spec, &adoptee).await?;
    Ok(Adopted {
        report,
        image: found.image,
        warnings,
    })
}

/// The container as the engine adopts it, or why it cannot serve as `spec`'s live version.
pub fn adoptee(
    spec: &ServiceSpec,
    found: &Inspected,
    version: Option<Version>,
) -> Result<Adoptee, AppError> {
    let name = &found.name;
    let refuse = |why: String| AppError::input(format!("{why}; nothing was adopted"));
    if let Some(scope) = &found.scope {
        return Err(refuse(format!(
            "container {name} was started by switchyard (scope {scope}): it is a replica already, not a container to adopt"
        )));
    }
    if !found.running {
        return Err(refuse(format!(
            "container {name} is {}, not running: start it (`docker start {name}`), then adopt it",
            found.state
        )));
    }
    let host_port = host_port(spec, found).map_err(refuse)?;
    let version = match version {
        Some(v) => v,
        None => version_of(&found.image).map_err(refuse)?,
    };
    Ok(Adoptee {
        id: found.id.clone(),
        name: name.clone(),
        version,
        host_port,
    })
}

/// The host port 127.0.0.1 reaches the service's `port` on: one published on loopback, or
/// on every address (`0.0.0.0`, `::`, or Docker's empty host IP).
fn host_port(spec: &ServiceSpec, found: &Inspected) -> Result<u16, String> {
    let bindings: Vec<_> = found
        .ports
        .iter()
        .filter(|p| p.container_port == spec.port && p.protocol == "tcp")
        .collect();
    let reachable = |ip: &str| matches!(ip, "" | "0.0.0.0" | "127.0.0.1" | "::");
    // Loopback first: it is what the container was meant to be reached on.
    let pick = bindings
        .iter()
        .find(|p| p.host_ip == "127.0.0.1")
        .or_else(|| bindings.iter().find(|p| reachable(&p.host_ip)));
    if let Some(p) = pick {
        return Ok(p.host_port);
    }
    let published: Vec<String> = found
        .ports
        .iter()
        .map(|p| {
            let ip = if p.host_ip.is_empty() {
                "*"
            } else {
                &p.host_ip
            };
            format!(
                "{}/{} on {ip}:{}",
                p.container_port, p.protocol, p.host_port
            )
        })
        .collect();
    let published = match published.is_empty() {
        true => "nothing".to_owned(),
        false => published.join(", "),
    };
    Err(format!(
        "container {} does not publish port {}/tcp (the service's `port`) where 127.0.0.1 reaches it (it publishes {published}): run it with `-p 127.0.0.1:<host port>:{}`",
        found.name, spec.port, spec.port
    ))
}

/// The tag of `image` (`app:1.4` → `1.4`), as a version.
fn version_of(image: &str) -> Result<Version, String> {
    let last = image.rsplit('/').next().unwrap_or(image);
    let tag = match (image.contains('@'), last.split_once(':')) {
        (false, Some((_, tag))) => tag,
        _ => {
            return Err(format!(
                "image {image:?} has no tag to take the version from: give --version"
            ))
        }
    };
    Version::parse(tag).map_err(|e| format!("the tag of image {image:?}: {e}; give --version"))
}

fn warnings(spec: &ServiceSpec, found: &Inspected, adoptee: &Adoptee) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Source::Image(template) = spec.source_for(&adoptee.version) {
        if template != found.image {
            warnings.push(format!(
                "{} runs {}, and the service's image for {} is {template}: the next deploy starts the service's image",
                found.name, found.image, adoptee.version
            ));
        }
    }
    let exposed: Vec<String> = found
        .ports
        .iter()
        .filter(|p| p.host_port == adoptee.host_port && p.host_ip != "127.0.0.1")
        .map(|p| match p.host_ip.as_str() {
            "" => format!("*:{}", p.host_port),
            ip => format!("{ip}:{}", p.host_port),
        })
        .collect();
    if !exposed.is_empty() {
        warnings.push(format!(
            "{} publishes {} beyond loopback, where clients can reach it past nginx; the replicas switchyard starts publish on 127.0.0.1 only",
            found.name,
            exposed.join(", ")
        ));
    }
    if spec.replicas > 1 {
        warnings.push(format!(
            "{} has replicas = {}, and {} is one: the next deploy starts {} replicas of the new version",
            spec.name, spec.replicas, found.name, spec.replicas
        ));
    }
    if found.restart == "always" {
        warnings.push(format!(
            "{} has restart policy \"always\": once a deploy has stopped it, a restart of the Docker daemon starts it again (`docker update --restart unless-stopped {}` avoids that)",
            found.name, found.name
        ));
    }
    warnings
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use switchyard_docker::inspect::PublishedPort;
    use switchyard_engine::Config;

    use super::*;

    fn spec() -> ServiceSpec {
        let text = "[proxy]\nprefix = \"nginx\"\n[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:8000\"\nimage = \"app:{version}\"\nport = 8080\n";
        Config::parse(text, Path::new("t.toml")).unwrap().services[0].clone()
    }

    fn container(ports: &[(&str, u16, u16)]) -> Inspected {
        Inspected {
            id: "c0ffee".into(),
            name: "springboot1".into(),
            image: "app:1".into(),
            running: true,
            state: "running".into(),
            ports: ports
                .iter()
                .map(|&(ip, host_port, container_port)| PublishedPort {
                    container_port,
                    protocol: "tcp".into(),
                    host_ip: ip.into(),
                    host_port,
                })
                .collect(),
            scope: None,
            restart: "no".into(),
        }
    }

    #[test]
    fn the_port_127_0_0_1_reaches_is_found_loopback_first() {
        let spec = spec();
        let both = container(&[("0.0.0.0", 9000, 8080), ("127.0.0.1", 9001, 8080)]);
        assert_eq!(adoptee(&spec, &both, None).unwrap().host_port, 9001);
        for ip in ["0.0.0.0", "::", ""] {
            let all = container(&[("10.0.0.5", 9000, 8080), (ip, 9002, 8080)]);
            assert_eq!(
                adoptee(&spec, &all, None).unwrap().host_port,
                9002,
                "{ip:?}"
            );
        }
        let w = warnings(&spec, &both, &adoptee(&spec, &both, None).unwrap());
        assert!(w.is_empty(), "{w:?}");
        let wide = container(&[("0.0.0.0", 9000, 8080)]);
        let w = warnings(&spec, &wide, &adoptee(&spec, &wide, None).unwrap());
        assert!(w[0].contains("0.0.0.0:9000 beyond loopback"), "{w:?}");
    }

    #[test]
    fn a_port_127_0_0_1_cannot_reach_is_refused_naming_what_is_published() {
        let spec = spec();
        for (ports, says) in [
            (
                vec![("10.0.0.5", 9000, 8080)],
                "it publishes 8080/tcp on 10.0.0.5:9000",
            ),
            (
                vec![("127.0.0.1", 9000, 9090)],
                "it publishes 9090/tcp on 127.0.0.1:9000",
            ),
            (vec![], "it publishes nothing"),
        ] {
            let e = adoptee(&spec, &container(&ports), None).unwrap_err();
            assert_eq!(e.code, 2);
            assert!(e.message.contains(says), "{}", e.message);
            assert!(
                e.message.contains("does not publish port 8080/tcp"),
                "{}",
                e.message
            );
        }
    }

    #[test]
    fn version_is_the_flag_else_the_tag_and_switchyards_own_containers_are_refused() {
        let spec = spec();
        let c = container(&[("127.0.0.1", 9000, 8080)]);
        assert_eq!(adoptee(&spec, &c, None).unwrap().version.as_str(), "1");
        let given = Version::parse("1.0.3").unwrap();
        assert_eq!(
            adoptee(&spec, &c, Some(given)).unwrap().version.as_str(),
            "1.0.3"
        );
        let ours = Inspected {
            scope: Some("sy1234".into()),
            ..c.clone()
        };
        let e = adoptee(&spec, &ours, None).unwrap_err();
        assert!(e.message.contains("started by switchyard"), "{}", e.message);
        let stopped = Inspected {
            running: false,
            state: "exited".into(),
            ..c
        };
        let e = adoptee(&spec, &stopped, None).unwrap_err();
        assert!(
            e.message.contains("is exited, not running"),
            "{}",
            e.message
        );
    }

    #[test]
    fn versions_come_from_the_image_tag() {
        assert_eq!(version_of("app:1").unwrap().as_str(), "1");
        assert_eq!(
            version_of("registry.example.com:5000/shop:1.4.0")
                .unwrap()
                .as_str(),
            "1.4.0"
        );
        for untagged in ["app", "registry.example.com:5000/shop", "app@sha256:abc"] {
            let e = version_of(untagged).unwrap_err();
            assert!(e.contains("--version"), "{untagged}: {e}");
        }
    }
}
