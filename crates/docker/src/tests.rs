//! Tests of [`DockerRuntime`] against a real engine, with the demo-app in a scratch image.
//!
//! They need a reachable Docker engine and the static demo-app (`scripts/build-demo-app`):
//! where `CI` is set a missing one fails the test, elsewhere the test says loudly that it
//! skipped. A [`Fixture`] has a scope of its own and removes every container in it when
//! dropped, even when the test fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use switchyard_engine::{
    Color, Instance, InstanceSpec, Name, Runtime, RuntimeError, Source, Version,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::image::{build_scratch_image, ScratchImage};
use crate::DockerRuntime;

const IMAGE: &str = "switchyard-docker-tests:demo";

/// Fails under CI, skips loudly elsewhere. Returns whether the test may go on.
fn require(available: bool, what: &str) -> bool {
    if available {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{what} is required when CI is set, and it is missing");
    }
    eprintln!("SKIPPED: {what} is missing (set CI=1 to make this a failure)");
    false
}

/// The static demo-app, where `switchyard_app::sandbox::demo_app_binary` looks for it.
fn demo_app_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SWITCHYARD_DEMO_APP") {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("x86_64-unknown-linux-gnu/release/demo-app")
}

/// A runtime in a scope of its own that removes the scope's containers when dropped.
struct Fixture {
    runtime: DockerRuntime,
}

impl Fixture {
    /// None (after a loud skip) without a Docker engine or the demo-app; else a fixture with
    /// the demo image built.
    async fn new() -> Option<Fixture> {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let scope = format!(
            "sydt{}x{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        let connected = DockerRuntime::connect(&scope).await;
        if let Err(e) = &connected {
            eprintln!("docker: {e}");
        }
        if !require(connected.is_ok(), "a reachable Docker engine") {
            return None;
        }
        let binary = demo_app_binary();
        if !require(
            binary.exists(),
            &format!(
                "the static demo-app at {} (scripts/build-demo-app)",
                binary.display()
            ),
        ) {
            return None;
        }
        let fixture = Fixture {
            runtime: connected.unwrap(),
        };
        let image = ScratchImage {
            tag: IMAGE,
            binary: &binary,
            env: &[],
            healthcheck: None,
        };
        build_scratch_image(&fixture.runtime, &image)
            .await
            .expect("building the demo image");
        Some(fixture)
    }

    async fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .runtime
            .list(&Name::parse("web").unwrap())
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        names.sort();
        names
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // On a runtime of our own: the test's may be gone, or be the one that panicked.
        let scope = self.runtime.scope.clone();
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a cleanup runtime");
            runtime.block_on(async {
                let docker = DockerRuntime::connect(&scope).await?;
                let filters = std::collections::HashMap::from([(
                    "label",
                    vec![format!("{}={scope}", crate::SCOPE_LABEL)],
                )]);
                for container in docker.list_summaries(filters).await? {
                    if let Some(id) = container.id {
                        docker.remove_id(&id).await?;
                    }
                }
                Ok::<(), RuntimeError>(())
            })
        });
        match cleanup.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("removing the test's containers: {e}"),
            Err(_) => eprintln!("removing the test's containers panicked"),
        }
    }
}

fn spec(version: &str, deployment: i64, host_port: Option<u16>) -> InstanceSpec {
    InstanceSpec {
        service: Name::parse("web").unwrap(),
        version: Version::parse(version).unwrap(),
        color: Color::Blue,
        deployment,
        replica: 0,
        source: Source::Image(IMAGE.into()),
        port: 8080,
        env: BTreeMap::new(),
        host_port,
        container: Default::default(),
        secrets: Default::default(),
    }
}

/// The body of `GET /version` on 127.0.0.1:`port`, if something answers it.
async fn version_on(port: u16) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(b"GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// Polls until `version` answers on `instance`'s host port, for up to 10 s.
async fn answers(instance: &Instance, version: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = version_on(instance.host_port).await;
        if got.as_deref() == Some(version) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never answered {version} on 127.0.0.1:{} (last: {got:?})",
            instance.name,
            instance.host_port
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// In-place: the replacement is published on the port its stopped predecessor freed.
#[tokio::test]
async fn start_reuses_the_host_port_a_stopped_container_freed() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let old = fx.runtime.start(&spec("v1", 1, None)).await.unwrap();
    answers(&old, "v1").await;
    fx.runtime
        .stop(&old, Duration::from_secs(10))
        .await
        .unwrap();

    let new = fx
        .runtime
        .start(&spec("v2", 2, Some(old.host_port)))
        .await
        .unwrap();
    assert_eq!(new.host_port, old.host_port, "the freed port is reused");
    answers(&new, "v2").await;
    let listed = fx.runtime.list(&new.service).await.unwrap();
    let labelled = listed.iter().find(|i| i.id == new.id).expect("listed");
    assert_eq!(labelled.host_port, old.host_port, "the label has the port");
}

/// The port is released while `start` retries, as Docker's proxy may release it a moment
/// after the stop; the failed attempts leave no container behind.
#[tokio::test]
async fn start_retries_a_requested_host_port_until_it_frees() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let old = fx.runtime.start(&spec("v1", 1, None)).await.unwrap();
    answers(&old, "v1").await;

    let replacement = spec("v2", 2, Some(old.host_port));
    let began = Instant::now();
    let (new, ()) = tokio::join!(fx.runtime.start(&replacement), async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        fx.runtime
            .stop(&old, Duration::from_secs(10))
            .await
            .unwrap();
    });
    let new = new.unwrap();
    assert!(
        began.elapsed() >= Duration::from_millis(700),
        "started while the old container still held the port"
    );
    assert_eq!(new.host_port, old.host_port);
    answers(&new, "v2").await;
    assert_eq!(
        fx.names().await,
        [old.name, new.name],
        "no leftover attempts"
    );
}

#[tokio::test]
async fn start_on_a_host_port_still_taken_names_it_after_the_wait() {
    let Some(mut fx) = Fixture::new().await else {
        return;
    };
    fx.runtime.port_wait = Duration::from_millis(500);
    let holder = fx.runtime.start(&spec("v1", 1, None)).await.unwrap();
    let port = holder.host_port;

    let began = Instant::now();
    let err = fx
        .runtime
        .start(&spec("v2", 2, Some(port)))
        .await
        .unwrap_err();
    let took = began.elapsed();
    assert!(
        matches!(&err, RuntimeError::Failed { message, .. } if message.contains(&format!("127.0.0.1:{port}"))),
        "{err}"
    );
    assert!(took >= Duration::from_millis(500), "gave up after {took:?}");
    assert!(took < Duration::from_secs(5), "waited {took:?}");
    assert_eq!(
        fx.names().await,
        [holder.name],
        "the failed attempts were removed"
    );
}

// Regression (issue 8): Docker's stop API takes whole seconds, and a stop_timeout of
// 1500 ms was sent as 1 s (300 ms as 0, an immediate SIGKILL). The app here drains a
// request that takes 30 s, so only the SIGKILL at the timeout ends it.
#[tokio::test]
async fn stop_honours_a_timeout_in_milliseconds() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let mut slow = spec("v1", 1, None);
    slow.env = BTreeMap::from([
        ("LATENCY_MS".to_owned(), "30000".to_owned()),
        ("SHUTDOWN_GRACE_MS".to_owned(), "30000".to_owned()),
    ]);
    let web = fx.runtime.start(&slow).await.unwrap();
    answers(&web, "v1").await;
    let mut in_flight = tokio::net::TcpStream::connect(("127.0.0.1", web.host_port))
        .await
        .unwrap();
    in_flight
        .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    // A round trip after it: the slow request has been read by then.
    answers(&web, "v1").await;

    let began = Instant::now();
    fx.runtime
        .stop(&web, Duration::from_millis(1500))
        .await
        .unwrap();
    let took = began.elapsed();
    assert!(took >= Duration::from_millis(1500), "killed after {took:?}");
    assert!(took < Duration::from_secs(10), "not killed: took {took:?}");
    assert!(
        matches!(
            fx.runtime.status(&web).await.unwrap(),
            switchyard_engine::InstanceStatus::Exited { .. }
        ),
        "still running after the stop"
    );
}

#[tokio::test]
async fn prune_removes_the_tags_of_unwanted_versions_and_keeps_images_in_use() {
    let Some(f) = Fixture::new().await else {
        return;
    };
    let repo = format!("switchyard-prune-test-{}", f.runtime.scope);
    let binary = demo_app_binary();
    for version in ["v1", "v2", "v3", "v4"] {
        let tag = format!("{repo}:{version}");
        let image = ScratchImage {
            tag: &tag,
            binary: &binary,
            env: &[("APP_VERSION", version)],
            healthcheck: None,
        };
        build_scratch_image(&f.runtime, &image).await.unwrap();
    }
    // v2 runs: its image stays although it is not wanted.
    let running = f
        .runtime
        .start(&InstanceSpec {
            source: Source::Image(format!("{repo}:v2")),
            ..spec("v2", 1, None)
        })
        .await
        .unwrap();
    let template = format!("{repo}:{{version}}");
    let pruned = f
        .runtime
        .prune_images(&template, &["v4".to_owned(), "v3".to_owned()])
        .await
        .unwrap();
    assert_eq!(pruned.removed, [format!("{repo}:v1")]);
    assert_eq!(pruned.kept.len(), 1, "{pruned:?}");
    assert!(pruned.kept[0].0.ends_with(":v2"), "{pruned:?}");
    f.runtime.remove(&running).await.unwrap();
    let again = f
        .runtime
        .prune_images(&template, &["v4".to_owned()])
        .await
        .unwrap();
    assert_eq!(again.removed, [format!("{repo}:v2"), format!("{repo}:v3")]);
    f.runtime.prune_images(&template, &[]).await.unwrap();
    assert!(f
        .runtime
        .prune_images("no-version-here:latest", &[])
        .await
        .unwrap_err()
        .to_string()
        .contains("no {version}"));
}
