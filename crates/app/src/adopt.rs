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
    use super::*;

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
