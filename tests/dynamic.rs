//! The dynamic router end to end (real nginx with its Lua module, the demo-app as local
//! processes): nginx killed and started again comes back on the last confirmed routing; a
//! control endpoint that refuses or does not answer fails the deploy before traffic moves;
//! a request in flight on an old replica finishes before that replica is stopped.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switchyard_app::live::Live;
use switchyard_app::load::{Load, LoadConfig};
use switchyard_app::progress::Progress;
use switchyard_app::sandbox::{Sandbox, SERVICE};
use switchyard_app::settings;
use switchyard_engine::config::RuntimeChoice;
use switchyard_engine::deploy::DeployError;
use switchyard_engine::{InstanceStatus, Name, Runtime, Store, Version};
use switchyard_nginx::router::CONTROL_FILE;
use switchyard_nginx::stage::install;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::e2e::sandbox;
use crate::support::{assert_no_failures, free_port, responses_from};

fn quiet() -> Progress {
    Progress::new(false)
}

fn load(sandbox: &Sandbox) -> Load {
    crate::support::load(sandbox.url(), 16)
}

/// The version of one GET of `url` (`http://127.0.0.1:port/path`) on a fresh connection,
/// read from the demo-app's body (`{"version":"v2"}`).
async fn version_of_one_request(url: &str) -> Result<String, String> {
    let rest = url.strip_prefix("http://").unwrap();
    let (addr, path) = rest.split_at(rest.find('/').unwrap());
    let addr: SocketAddr = addr.parse().unwrap();
    let (status, body) =
        switchyard_nginx::control::request(addr, "GET", path, None, Duration::from_secs(10))
            .await?;
    let version = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["version"].as_str().map(str::to_owned));
    match (status, version) {
        (200, Some(version)) => Ok(version),
        (status, _) => Err(format!("HTTP {status}: {body}")),
    }
}

fn active_version(live: &Live) -> Option<String> {
    live.store
        .service(&Name::parse(SERVICE).unwrap())
        .unwrap()
        .active
        .map(|s| s.version.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_killed_and_started_again_serves_the_last_confirmed_routing() {
    let Some(mut sandbox) = sandbox(RuntimeChoice::Process, |o| o).await else {
        return;
    };
    sandbox.deploy("v1", &quiet()).await.expect("v1 deploys");
    sandbox.deploy("v2", &quiet()).await.expect("v2 deploys");
    sandbox.kill_nginx();
    assert!(
        version_of_one_request(&sandbox.url()).await.is_err(),
        "nothing answers while nginx is down"
    );
    sandbox.start_nginx().await.expect("nginx starts again");
    // No deploy in between: the routing came back from the state file.
    for _ in 0..20 {
        assert_eq!(
            version_of_one_request(&sandbox.url()).await.as_deref(),
            Ok("v2")
        );
    }
    let load = load(&sandbox);
    responses_from(&load, "v2", 200).await;
    sandbox
        .deploy("v3", &quiet())
        .await
        .expect("v3 deploys after the restart");
    responses_from(&load, "v3", 200).await;
    assert_no_failures(&load.stop().await);
    sandbox.shutdown().await.unwrap();
}

/// A control server that answers every GET /routes with generation 0 and `post_status`
/// to every POST (None: it does not exist, nothing listens on its port).
async fn fake_control(
    post_status: Option<u16>,
) -> (SocketAddr, Option<tokio::task::JoinHandle<()>>) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let Some(status) = post_status else {
        return (addr, None);
    };
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 65536];
            let n = stream.read(&mut buf).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let (code, body) = if request.starts_with("POST") {
                (status, r#"{"error":"refused by the test"}"#.to_owned())
            } else {
                (200, r#"{"service":"web","generation":0}"#.to_owned())
            };
            let reply = format!(
                "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes()).await;
        }
    });
    (addr, Some(task))
}

/// The sandbox's config with the control endpoint at `control`, and a control file for
/// it on disk: the router talks to `control`, while nginx still serves the old routing.
async fn live_with_control(sandbox: &Sandbox, control: SocketAddr) -> Live {
    let text = std::fs::read_to_string(&sandbox.config_path).unwrap();
    let old = sandbox.live().config.proxy.control;
    let text = text.replace(&old.to_string(), &control.to_string());
    let path = sandbox.dir.path().join("other-control.toml");
    std::fs::write(&path, text).unwrap();
    let live = Live::open(settings::load(&path).unwrap()).await.unwrap();
    let generation = live.router.disk_generation();
    let file = live.router.control_file(generation).unwrap();
    install(
        &live.router.layout.conf_dir,
        &[(CONTROL_FILE.to_owned(), Some(file))],
    )
    .unwrap();
    live
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_endpoint_that_refuses_or_is_unreachable_fails_the_deploy_before_traffic_moves() {
    let Some(sandbox) = sandbox(RuntimeChoice::Process, |o| o).await else {
        return;
    };
    sandbox.deploy("v1", &quiet()).await.expect("v1 deploys");
    let load = load(&sandbox);
    responses_from(&load, "v1", 200).await;
    let service = Name::parse(SERVICE).unwrap();
    for (post_status, words) in [(Some(500), "refused"), (None, "does not answer")] {
        let (control, server) = fake_control(post_status).await;
        let live = live_with_control(&sandbox, control).await;
        let spec = live.spec(SERVICE).unwrap();
        let err = live
            .deployer(&quiet())
            .deploy(spec, &Version::parse("v2").unwrap())
            .await
            .expect_err("the deploy fails when the control endpoint does not take the routing");
        let message = err.to_string();
        assert!(message.contains("control endpoint"), "{message}");
        assert!(message.contains(words), "{message}");
        assert!(
            matches!(err, DeployError::Failed { .. } | DeployError::Router(_)),
            "{err:?}"
        );
        assert_ne!(err.exit_code(), 0);
        assert_eq!(active_version(&live).as_deref(), Some("v1"));
        // No v2 replica is left running.
        for instance in live.runtime.list(&service).await.unwrap() {
            if instance.version.as_str() == "v2" {
                let status = live.runtime.status(&instance).await.unwrap();
                assert!(
                    !matches!(status, InstanceStatus::Running { .. }),
                    "{} still runs: {status:?}",
                    instance.name
                );
            }
        }
        if let Some(server) = server {
            server.abort();
        }
    }
    let report = load.stop().await;
    assert_no_failures(&report);
    assert!(
        !report.by_version.contains_key("v2"),
        "v2 never got traffic: {report}"
    );
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_on_the_old_replica_finishes_before_it_is_stopped() {
    // The app exits at once on SIGTERM, dropping whatever it was answering: only the drain
    // can save the slow request.
    let Some(sandbox) = sandbox(RuntimeChoice::Process, |o| {
        o.env("SHUTDOWN_GRACE_MS", "0").replicas(1)
    })
    .await
    else {
        return;
    };
    sandbox.deploy("v1", &quiet()).await.expect("v1 deploys");
    let slow_url = format!("{}slow?ms=2500", sandbox.url());
    let started = Instant::now();
    let slow = tokio::spawn(async move { version_of_one_request(&slow_url).await });
    // In flight when the deploy begins.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let load = load(&sandbox);
    let report = sandbox.deploy("v2", &quiet()).await.expect("v2 deploys");
    let slow = slow.await.unwrap();
    assert_eq!(
        slow.as_deref(),
        Ok("v1"),
        "the request in flight on v1 when traffic moved was answered by v1"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(2500),
        "the deploy returned after the slow request finished"
    );
    responses_from(&load, "v2", 100).await;
    assert_no_failures(&load.stop().await);
    assert_eq!(report.to.as_str(), "v2");
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_with_a_body_fail_none_through_a_blue_green_deploy() {
    let Some(sandbox) = sandbox(RuntimeChoice::Process, |o| o).await else {
        return;
    };
    sandbox.deploy("v1", &quiet()).await.expect("v1 deploys");
    let mut config = LoadConfig::new(sandbox.url());
    config.connections = 16;
    config.max_duration = Duration::from_secs(60);
    config.method = switchyard_app::load::Method::Post {
        body: vec![b'x'; 4096],
    };
    let load = Load::start(config);
    responses_from(&load, "v1", 200).await;
    for version in ["v2", "v3", "v4"] {
        sandbox.deploy(version, &quiet()).await.expect("deploys");
        responses_from(&load, version, 100).await;
    }
    assert_no_failures(&load.stop().await);
    sandbox.shutdown().await.unwrap();
}
