//! Test fixtures: a [`Lock`], a [`NewDeployment`], an [`Instance`] and a journal of
//! [`Step`]s covering every kind of payload (none, numbers, strings, instances, addresses).

use switchyard_engine::{
    Color, DeployKind, DrainHandle, Instance, Lock, Name, NewDeployment, Step, Version,
};

pub(crate) fn name(s: &str) -> Name {
    Name::parse(s).unwrap()
}

pub(crate) fn version(s: &str) -> Version {
    Version::parse(s).unwrap()
}

pub(crate) fn lock(service: &str, pid: u32, at_ms: i64) -> Lock {
    Lock {
        service: name(service),
        pid,
        host: "build-1".to_owned(),
        deployment: None,
        acquired_ms: at_ms,
        heartbeat_ms: at_ms,
    }
}

pub(crate) fn deployment(service: &str, to: &str) -> NewDeployment {
    NewDeployment {
        service: name(service),
        kind: DeployKind::Deploy,
        strategy: "blue-green".to_owned(),
        from_version: Some(version("v0")),
        to_version: version(to),
        color: Color::Green,
        who: "ana@build-1 (pid 100)".to_owned(),
        started_ms: 1_700_000_000_000,
    }
}

pub(crate) fn instance(
    id: &str,
    service: &str,
    version_: &str,
    deployment: i64,
    replica: u16,
    host_port: u16,
) -> Instance {
    Instance {
        id: id.to_owned(),
        name: format!("sy-{service}-d{deployment}-r{replica}"),
        service: name(service),
        version: version(version_),
        color: if deployment % 2 == 0 {
            Color::Green
        } else {
            Color::Blue
        },
        deployment,
        origin: deployment,
        replica,
        host_port,
    }
}

pub(crate) fn steps(started: &Instance) -> Vec<Step> {
    vec![
        Step::StartInstance {
            replica: 0,
            name: started.name.clone(),
        },
        Step::InstanceStarted {
            instance: started.clone(),
        },
        Step::WaitHealthy,
        Step::Healthy { waited_ms: 1_250 },
        Step::Route {
            backends: vec![started.addr(), "[::1]:8080".parse().unwrap()],
        },
        Step::Routed {
            generation: 7,
            drain: DrainHandle::new([41, 42]),
        },
        Step::Drained {
            waited_ms: 30,
            left: Some("old nginx workers [42] still running".to_owned()),
        },
        Step::StopOld {
            instances: vec!["sy-web-d1-r0".to_owned()],
        },
        Step::Resume {
            reason: "previous deploy (pid 9) died: \"quoted\"\nnewline".to_owned(),
        },
    ]
}
