//! End to end for a service's container options under Docker: real nginx, real containers
//! of the static demo-app and the load generator running through every deploy (0 failed,
//! 0 re-sent). What Docker was asked for is read back with `docker inspect` (bollard):
//! limits, user, command, log driver, labels, extra hosts, stop signal, restart policy. Data
//! on a bind and a named volume outlives a version, blue-green and in place; a network
//! alias answers another container on the network while ports stay on 127.0.0.1; config
//! and settings errors (a relative or missing bind path, a missing network) are clear and
//! change nothing.
//!
//! What a test creates beside switchyard (networks, named volumes, probe containers) is
//! labelled `switchyard.test` and removed by [`Created`] when it drops, failed test or not.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use bollard::models::{
    ContainerCreateBody, HostConfig, NetworkCreateRequest, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use switchyard_app::live::{AnyRuntime, Live};
use switchyard_app::progress::Progress;
use switchyard_app::sandbox::{Sandbox, IMAGE, SERVICE};
use switchyard_app::{settings, AppError};
use switchyard_engine::config::{RuntimeChoice, StrategyKind};
use switchyard_engine::{Name, Runtime, ServiceRecord, Store, Version};

use crate::e2e::sandbox;
use crate::support::{assert_no_failures, get, responses_from};

/// The label on everything a test creates beside switchyard.
const TEST_LABEL: &str = "switchyard.test";

fn service() -> Name {
    Name::parse(SERVICE).unwrap()
}

/// A name no other test (or run) uses.
fn unique(what: &str) -> String {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    format!("sytest-{}-{n}-{what}", std::process::id())
}

async fn docker() -> Docker {
    Docker::connect_with_local_defaults()
        .unwrap()
        .negotiate_version()
        .await
        .unwrap()
}

/// The Docker scope of `sandbox`'s containers.
fn scope(sandbox: &Sandbox) -> String {
    match &sandbox.live().runtime {
        AnyRuntime::Docker(docker) => docker.scope().to_owned(),
        AnyRuntime::Process(_) => unreachable!("these tests run under Docker"),
    }
}

/// What a test created beside switchyard: removed on drop, with every container of the
/// sandbox's scope first (they hold the networks and volumes), on a runtime of its own.
#[derive(Default)]
struct Created {
    scope: Option<String>,
    containers: Vec<String>,
    networks: Vec<String>,
    volumes: Vec<String>,
}

impl Created {
    async fn network(&mut self, docker: &Docker, name: &str) {
        self.networks.push(name.to_owned());
        docker
            .create_network(NetworkCreateRequest {
                name: name.to_owned(),
                labels: Some(HashMap::from([(
                    TEST_LABEL.to_owned(),
                    "network".to_owned(),
                )])),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("creating network {name}: {e}"));
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        let scope = self.scope.take();
        let containers = std::mem::take(&mut self.containers);
        let networks = std::mem::take(&mut self.networks);
        let volumes = std::mem::take(&mut self.volumes);
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a cleanup runtime");
            runtime.block_on(async {
                let docker = docker().await;
                let mut ids = containers;
                if let Some(scope) = scope {
                    let filters = HashMap::from([(
                        "label",
                        vec![format!("{}={scope}", switchyard_docker::SCOPE_LABEL)],
                    )]);
                    let options = bollard::query_parameters::ListContainersOptionsBuilder::new()
                        .all(true)
                        .filters(&filters)
                        .build();
                    let listed = docker
                        .list_containers(Some(options))
                        .await
                        .unwrap_or_default();
                    ids.extend(listed.into_iter().filter_map(|c| c.id));
                }
                let force = RemoveContainerOptionsBuilder::new().force(true).build();
                for id in ids {
                    let _ = docker.remove_container(&id, Some(force.clone())).await;
                }
                for network in networks {
                    if let Err(e) = docker.remove_network(&network).await {
                        eprintln!("removing network {network}: {e}");
                    }
                }
                for volume in volumes {
                    // 404: the test failed before anything created it.
                    let _ = docker
                        .remove_volume(
                            &volume,
                            None::<bollard::query_parameters::RemoveVolumeOptions>,
                        )
                        .await;
                }
            });
        });
        if cleanup.join().is_err() {
            eprintln!("removing what the test created panicked");
        }
    }
}

/// Deploys v1, then v2 by `kind` under load: no request failed or was sent twice.
async fn v1_then_v2(sandbox: &Sandbox, kind: StrategyKind) {
    let quiet = Progress::new(false);
    sandbox
        .deploy_with("v1", kind, &quiet)
        .await
        .expect("v1 deploys");
    let load = crate::support::load(sandbox.url(), 16);
    responses_from(&load, "v1", 200).await;
    sandbox
        .deploy_with("v2", kind, &quiet)
        .await
        .expect("v2 deploys");
    responses_from(&load, "v2", 200).await;
    assert_no_failures(&load.stop().await);
}

fn record(sandbox: &Sandbox) -> ServiceRecord {
    sandbox.live().store.service(&service()).unwrap()
}

const OPTIONS: &str = r#"command = ["serve"]
entrypoint = ["/app"]
user = "1000:1000"
workdir = "/"
memory = "64m"
cpus = 0.5
labels = { team = "shop", "com.example.tier" = "web" }
log = { driver = "json-file", options = { max-size = "1m", max-file = "2" } }
extra_hosts = ["db.internal:10.1.2.3"]
stop_signal = "SIGINT"
restart = "on-failure:3""#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_inspect_shows_every_container_option() {
    let Some(sandbox) = sandbox(RuntimeChoice::Docker, |o| o.container(OPTIONS)).await else {
        return;
    };
    v1_then_v2(&sandbox, StrategyKind::BlueGreen).await;
    let record = record(&sandbox);
    let docker = docker().await;
    let replica = &record.active.as_ref().expect("v2 is live").instances[0];
    let inspected = docker.inspect_container(&replica.id, None).await.unwrap();
    let config = inspected.config.unwrap();
    assert_eq!(config.cmd, Some(vec!["serve".to_owned()]));
    assert_eq!(config.entrypoint, Some(vec!["/app".to_owned()]));
    assert_eq!(config.user.as_deref(), Some("1000:1000"));
    assert_eq!(config.working_dir.as_deref(), Some("/"));
    assert_eq!(config.stop_signal.as_deref(), Some("SIGINT"));
    let labels = config.labels.unwrap();
    assert_eq!(labels["team"], "shop");
    assert_eq!(labels["com.example.tier"], "web");
    assert_eq!(labels["switchyard.service"], "web");
    assert_eq!(labels["switchyard.version"], "v2");
    let host = inspected.host_config.unwrap();
    assert_eq!(host.memory, Some(64 << 20));
    assert_eq!(host.nano_cpus, Some(500_000_000));
    let log = host.log_config.unwrap();
    assert_eq!(log.typ.as_deref(), Some("json-file"));
    let log_options = log.config.unwrap();
    assert_eq!(
        (
            log_options["max-size"].as_str(),
            log_options["max-file"].as_str()
        ),
        ("1m", "2")
    );
    assert_eq!(
        host.extra_hosts,
        Some(vec!["db.internal:10.1.2.3".to_owned()])
    );
    let restart = host.restart_policy.unwrap();
    assert_eq!(restart.name, Some(RestartPolicyNameEnum::ON_FAILURE));
    assert_eq!(restart.maximum_retry_count, Some(3));
    // Docker's stop sent the stop signal to v1's replicas, which drained and exited.
    let retired = &record.retained[0].instances[0];
    let logs = sandbox.live().runtime.logs(retired, 20).await;
    assert!(logs.contains("stopped on SIGINT"), "{logs}");
    sandbox.shutdown().await.unwrap();
}

/// A bind (a host directory) and a named volume, both written by every version at start
/// (`DATA_DIRS`): after v2 is live, v2 lists what v1 wrote.
async fn data_outlives_the_version(kind: StrategyKind, rolling: &str) {
    let mut created = Created::default();
    let bind = tempfile::tempdir().unwrap();
    let volume = unique("data");
    created.volumes.push(volume.clone());
    let lines = format!(
        r#"volumes = ["{}:/data", "{volume}:/cache"]"#,
        bind.path().display()
    );
    let Some(sandbox) = sandbox(RuntimeChoice::Docker, |o| {
        o.container(&lines)
            .env("DATA_DIRS", "/data,/cache")
            .strategy(kind.as_str(), rolling)
    })
    .await
    else {
        return;
    };
    created.scope = Some(scope(&sandbox));
    v1_then_v2(&sandbox, kind).await;
    let record = record(&sandbox);
    for replica in &record.active.as_ref().expect("v2 is live").instances {
        assert_eq!(replica.version.as_str(), "v2");
        let (status, body) = get(replica.addr(), "/data").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, "/data: v1 v2\n/cache: v1 v2\n", "{}", replica.name);
    }
    for version in ["v1", "v2"] {
        let file = bind.path().join(version);
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            format!("{version}\n")
        );
    }
    // Created when missing, labelled with the installation's scope and the service.
    let labels = docker().await.inspect_volume(&volume).await.unwrap().labels;
    assert_eq!(labels.get("switchyard.scope"), Some(&scope(&sandbox)));
    assert_eq!(
        labels.get("switchyard.service").map(String::as_str),
        Some("web")
    );
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_on_bind_and_named_volumes_outlives_a_blue_green_deploy() {
    data_outlives_the_version(StrategyKind::BlueGreen, "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_on_bind_and_named_volumes_outlives_an_in_place_deploy() {
    data_outlives_the_version(StrategyKind::InPlace, "max_unavailable = 1").await;
}

/// `switchyard plan` of a blue-green deploy warns of each writable volume v1 and v2 share,
/// and not of a read-only one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_warns_of_a_writable_volume_two_versions_share() {
    let mut created = Created::default();
    let (data, conf) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let volume = unique("cache");
    created.volumes.push(volume.clone());
    let lines = format!(
        r#"volumes = ["{}:/data", "{volume}:/cache", "{}:/conf:ro"]"#,
        data.path().display(),
        conf.path().display()
    );
    let Some(sandbox) = sandbox(RuntimeChoice::Docker, |o| o.container(&lines)).await else {
        return;
    };
    created.scope = Some(scope(&sandbox));
    let quiet = Progress::new(false);
    sandbox.deploy("v1", &quiet).await.expect("v1 deploys");
    let plan = |strategy: &str| {
        Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("--config")
            .arg(&sandbox.config_path)
            .args(["plan", SERVICE, "--version", "v2", "--strategy", strategy])
            .output()
            .unwrap()
    };
    let out = plan("blue-green");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let warnings: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert_eq!(warnings.len(), 2, "{stdout}");
    assert!(
        warnings[0].starts_with(&format!(
            "warning: bind {} (at /data) is writable and shared: v1 and v2 both run during this blue-green deploy",
            data.path().display()
        )),
        "{stdout}"
    );
    assert!(
        warnings[1].starts_with(&format!("warning: volume {volume} (at /cache)")),
        "{stdout}"
    );
    let canary = plan("canary");
    assert_eq!(
        String::from_utf8_lossy(&canary.stdout)
            .matches("warning: ")
            .count(),
        2
    );
    sandbox.shutdown().await.unwrap();
}

/// Runs `demo-app get URL` in a container of its own on `network`; its output, or a panic
/// with its logs when it failed.
async fn probe(docker: &Docker, created: &mut Created, network: &str, url: &str) -> String {
    let name = unique("probe");
    created.containers.push(name.clone());
    let body = ContainerCreateBody {
        image: Some(format!("{IMAGE}:v1")),
        cmd: Some(vec!["get".to_owned(), url.to_owned()]),
        labels: Some(HashMap::from([(TEST_LABEL.to_owned(), "probe".to_owned())])),
        host_config: Some(HostConfig {
            network_mode: Some(network.to_owned()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::new().name(&name).build();
    docker.create_container(Some(options), body).await.unwrap();
    docker.start_container(&name, None).await.unwrap();
    // A non-zero exit is an error item here; the logs say why.
    let exited = docker.wait_container(&name, None).next().await;
    let options = LogsOptionsBuilder::new().stdout(true).stderr(true).build();
    let mut logs = docker.logs(&name, Some(options));
    let mut text = String::new();
    while let Some(Ok(chunk)) = logs.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
    }
    match exited {
        Some(Ok(done)) if done.status_code == 0 => text,
        other => panic!("`demo-app get {url}` on {network} failed ({other:?}): {text}"),
    }
}

/// The first network at create, the second connected after: each alias answers a
/// container on its network, by name, and the answer comes from v2 once it is live (v1's
/// replicas are stopped). Every published port is on 127.0.0.1, asked for and bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_alias_answers_another_container_and_ports_stay_on_loopback() {
    let mut created = Created::default();
    let (front, back) = (unique("front"), unique("back"));
    let lines = format!(
        r#"networks = [{{ name = "{front}", aliases = ["shop"] }}, {{ name = "{back}", aliases = ["shop-internal", "api"] }}]"#
    );
    let Some(sandbox) = sandbox(RuntimeChoice::Docker, |o| o.container(&lines)).await else {
        return;
    };
    created.scope = Some(scope(&sandbox));
    let docker = docker().await;
    created.network(&docker, &front).await;
    created.network(&docker, &back).await;
    v1_then_v2(&sandbox, StrategyKind::BlueGreen).await;
    for replica in &record(&sandbox).active.expect("v2 is live").instances {
        let inspected = docker.inspect_container(&replica.id, None).await.unwrap();
        let asked = inspected.host_config.unwrap().port_bindings.unwrap();
        let settings = inspected.network_settings.unwrap();
        let bound = settings.ports.unwrap();
        for bindings in [asked, bound] {
            let all: Vec<_> = bindings.values().flatten().flatten().collect();
            assert!(!all.is_empty(), "{} publishes its port", replica.name);
            for binding in all {
                assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"), "{binding:?}");
            }
        }
        let networks = settings.networks.unwrap();
        let aliases = |network: &str| networks[network].aliases.clone().unwrap_or_default();
        assert!(aliases(&front).contains(&"shop".to_owned()), "{networks:?}");
        assert!(aliases(&back).contains(&"api".to_owned()), "{networks:?}");
        assert!(!networks.contains_key("bridge"), "{networks:?}");
    }
    for (network, url) in [
        (&front, "http://shop:8080/version"),
        (&back, "http://api:8080/version"),
        (&back, "http://shop-internal:8080/version"),
    ] {
        assert_eq!(
            probe(&docker, &mut created, network, url).await,
            "v2",
            "{url}"
        );
    }
    sandbox.shutdown().await.unwrap();
}

/// A config with `volumes` (one entry) for service `web` in a temp dir; the file's path.
fn config_with_volume(dir: &std::path::Path, volume: &str) -> std::path::PathBuf {
    let path = dir.join("switchyard.toml");
    let text = format!(
        "[proxy]\nprefix = \"nginx\"\n\n[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:8000\"\nimage = \"demo:{{version}}\"\nvolumes = [\"{volume}\"]\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn validate(config: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--config")
        .arg(config)
        .arg("validate")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A relative bind path is a config error (file:line:column:field); a bind source that does
/// not exist is refused when the config is loaded, naming it. Both exit 2.
#[test]
fn a_relative_or_missing_bind_path_is_refused_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let relative = config_with_volume(dir.path(), "./data:/data");
    let (code, stderr) = validate(&relative);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:8:12: service.volumes: bind path \"./data\" is relative",
            relative.display()
        )),
        "{stderr}"
    );
    let gone = dir.path().join("gone");
    let missing = config_with_volume(dir.path(), &format!("{}:/data", gone.display()));
    let (code, stderr) = validate(&missing);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}: service web: service.volumes: bind source {} (for /data): No such file or directory",
            missing.display(),
            gone.display()
        )),
        "{stderr}"
    );
}

/// v1 runs on no network; the config then names a network that does not exist. The deploy
/// of v2 fails at the start, naming the network (exit 1), and traffic stays on v1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_network_fails_the_deploy_and_traffic_stays() {
    let Some(sandbox) = sandbox(RuntimeChoice::Docker, |o| o).await else {
        return;
    };
    let quiet = Progress::new(false);
    sandbox.deploy("v1", &quiet).await.expect("v1 deploys");
    let load = crate::support::load(sandbox.url(), 16);
    responses_from(&load, "v1", 200).await;

    let network = unique("nowhere");
    let text = std::fs::read_to_string(&sandbox.config_path).unwrap();
    let anchor = "stop_timeout = \"5s\"\n";
    assert!(text.contains(anchor), "{text}");
    let with_network = text.replace(
        anchor,
        &format!("{anchor}networks = [{{ name = \"{network}\", aliases = [\"shop\"] }}]\n"),
    );
    std::fs::write(&sandbox.config_path, with_network).unwrap();
    sandbox.ensure_image("v2").await.unwrap();
    let other = Live::open(settings::load(&sandbox.config_path).unwrap())
        .await
        .unwrap();
    let err: AppError = other
        .deployer(&quiet)
        .deploy(other.spec(SERVICE).unwrap(), &Version::parse("v2").unwrap())
        .await
        .expect_err("no network, no start")
        .into();
    assert_eq!(err.code, 1, "{}", err.message);
    assert!(
        err.message.contains(&format!(
            "network \"{network}\" (service.networks): does not exist; create it with `docker network create {network}`"
        )),
        "{}",
        err.message
    );
    assert!(
        err.message.contains("traffic stays on v1"),
        "{}",
        err.message
    );

    responses_from(&load, "v1", 400).await;
    let report = load.stop().await;
    assert_no_failures(&report);
    assert!(!report.by_version.contains_key("v2"), "{report}");
    let active = record(&sandbox).active.expect("v1 is live");
    assert_eq!(active.version.as_str(), "v1");
    let listed = sandbox.live().runtime.list(&service()).await.unwrap();
    assert!(
        listed.iter().all(|i| i.version.as_str() == "v1"),
        "no v2 container is left: {listed:?}"
    );
    sandbox.shutdown().await.unwrap();
}
