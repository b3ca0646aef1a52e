//! The labels switchyard puts on its containers, and reading an [`Instance`] back from them.

use std::collections::HashMap;

use bollard::models::ContainerSummary;
use switchyard_engine::{Color, Instance, InstanceSpec, Name, Version};

pub const SCOPE_LABEL: &str = "switchyard.scope";
pub const SERVICE: &str = "switchyard.service";
const VERSION: &str = "switchyard.version";
const COLOR: &str = "switchyard.color";
const DEPLOYMENT: &str = "switchyard.deployment";
const REPLICA: &str = "switchyard.replica";
const HOST_PORT: &str = "switchyard.host_port";

pub fn for_instance(spec: &InstanceSpec, scope: &str, host_port: u16) -> HashMap<String, String> {
    HashMap::from([
        (SCOPE_LABEL.to_owned(), scope.to_owned()),
        (SERVICE.to_owned(), spec.service.to_string()),
        (VERSION.to_owned(), spec.version.to_string()),
        (COLOR.to_owned(), spec.color.as_str().to_owned()),
        (DEPLOYMENT.to_owned(), spec.deployment.to_string()),
        (REPLICA.to_owned(), spec.replica.to_string()),
        (HOST_PORT.to_owned(), host_port.to_string()),
    ])
}

/// The instance a labelled container is, or None for a container with missing labels.
pub fn instance_from(c: ContainerSummary) -> Option<Instance> {
    let labels = c.labels?;
    let get = |k: &str| labels.get(k).map(String::as_str);
    Some(Instance {
        id: c.id?,
        name: c.names?.first()?.trim_start_matches('/').to_owned(),
        service: Name::parse(get(SERVICE)?).ok()?,
        version: Version::parse(get(VERSION)?).ok()?,
        color: Color::parse(get(COLOR)?)?,
        // Labels are written once, at creation: the deployment that created the container.
        deployment: get(DEPLOYMENT)?.parse().ok()?,
        origin: get(DEPLOYMENT)?.parse().ok()?,
        replica: get(REPLICA)?.parse().ok()?,
        host_port: get(HOST_PORT)?.parse().ok()?,
    })
}
