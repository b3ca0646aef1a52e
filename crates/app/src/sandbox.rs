//! A throwaway switchyard installation: [`Sandbox`].
//!
//! A temp directory with a generated `switchyard.toml`, a managed nginx on free loopback
//! ports, and one service `web` running the static demo-app, either as Docker containers
//! (scratch images built on demand, or the test's own: `SandboxOptions::image`) or as local
//! processes. The demo, the end-to-end tests and the benchmarks all use it.
//! [`Sandbox::shutdown`] removes every instance and stops nginx; dropping a sandbox that was
//! not shut down does the same, so a failing test leaves nothing behind.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use switchyard_docker::image::{build_scratch_image, ScratchImage};
use switchyard_engine::config::{RuntimeChoice, StrategyKind};
use switchyard_engine::deploy::DeployReport;
use switchyard_engine::{Observer, ServiceSpec, Version};
use switchyard_nginx::ManagedNginx;

use crate::live::{AnyRuntime, Live};
use crate::{settings, AppError};

pub const SERVICE: &str = "web";
pub const IMAGE: &str = "switchyard-demo";

#[derive(Debug, Clone)]
pub struct SandboxOptions {
    pub runtime: RuntimeChoice,
    pub replicas: u16,
    /// The static demo-app binary.
    pub app_binary: PathBuf,
    /// The service's environment (demo-app knobs such as `LATENCY_MS`, `UNHEALTHY_VERSIONS`).
    pub env: Vec<(String, String)>,
    /// `health = { ... }` inline table contents.
    pub health: String,
    pub drain_timeout: String,
    /// Docker images get a HEALTHCHECK (`/app healthcheck`, every second).
    pub docker_healthcheck: bool,
    /// Lines of the `[service.canary]` table (steps, hold, thresholds).
    pub canary: String,
    /// `strategy = ...` of the service: "blue-green", "canary", "rolling" or "in-place".
    pub strategy: String,
    /// Lines of the `[service.rolling]` table (max_surge, max_unavailable, on_failure).
    pub rolling: String,
    /// `[proxy] routing`: "auto" (the default), "dynamic" or "reload".
    pub routing: String,
    /// Lines added to the `[[service]]` table: container options such as `volumes`,
    /// `networks`, `user` or `memory`.
    pub container: String,
    /// The service's `image` (with `{version}`) when the test supplies its images (pushed
    /// to a registry, say); the sandbox then builds none. Docker only.
    pub image: Option<String>,
    /// More keys of the `[[service]]` table (`pull = "always"`).
    pub service_keys: String,
    /// More top-level tables (`[registry]`, more `[[service]]`s).
    pub tables: String,
    /// The service's `listen` (else a free loopback port), for tests that put several
    /// services on one listen.
    pub listen: Option<SocketAddr>,
    /// More keys of the `[proxy]` table (`templates = "dir"`).
    pub proxy_keys: String,
}

impl SandboxOptions {
    pub fn new(runtime: RuntimeChoice, app_binary: PathBuf) -> SandboxOptions {
        SandboxOptions {
            runtime,
            replicas: 1,
            app_binary,
            env: Vec::new(),
            health: r#"path = "/health", interval = "100ms", healthy_after = 2, deadline = "20s""#
                .into(),
            drain_timeout: "10s".into(),
            docker_healthcheck: false,
            canary: String::new(),
            strategy: "blue-green".into(),
            rolling: String::new(),
            routing: "auto".into(),
            container: String::new(),
            image: None,
            service_keys: String::new(),
            tables: String::new(),
            listen: None,
            proxy_keys: String::new(),
        }
    }

    /// Lines added to the service's `[[service]]` table (container options).
    pub fn container(mut self, lines: &str) -> SandboxOptions {
        self.container = lines.to_owned();
        self
    }

    /// How nginx moves traffic: "auto", "dynamic" or "reload".
    pub fn routing(mut self, routing: &str) -> SandboxOptions {
        self.routing = routing.to_owned();
        self
    }

    /// The service's strategy and the lines of its `[service.rolling]` table.
    pub fn strategy(mut self, strategy: &str, rolling: &str) -> SandboxOptions {
        self.strategy = strategy.to_owned();
        self.rolling = rolling.to_owned();
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> SandboxOptions {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// More keys of the `[[service]]` table, one per line (`buffering = false`).
    pub fn service_keys(mut self, lines: &str) -> SandboxOptions {
        self.service_keys = lines.to_owned();
        self
    }

    /// `drain = { timeout = ... }` of the service.
    pub fn drain_timeout(mut self, timeout: &str) -> SandboxOptions {
        self.drain_timeout = timeout.to_owned();
        self
    }

    pub fn replicas(mut self, replicas: u16) -> SandboxOptions {
        self.replicas = replicas;
        self
    }
}

/// Where `scripts/build-demo-app` puts the static demo-app (under `$CARGO_TARGET_DIR` when
/// set), or `$SWITCHYARD_DEMO_APP`.
pub fn demo_app_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SWITCHYARD_DEMO_APP") {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("x86_64-unknown-linux-gnu/release/demo-app")
}

pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub listen: SocketAddr,
    live: Option<Live>,
    nginx: Option<ManagedNginx>,
    app_binary: PathBuf,
    docker_healthcheck: bool,
    /// The test supplies the images ([`SandboxOptions::image`]): none is built here.
    own_images: bool,
}

/// Image tags this process has built, so each is built once.
static BUILT: Mutex<Option<HashSet<String>>> = Mutex::new(None);

impl Sandbox {
    pub async fn start(options: &SandboxOptions) -> Result<Sandbox, AppError> {
        if !options.app_binary.exists() {
            return Err(AppError::environment(format!(
                "demo-app binary not found at {} (build it with scripts/build-demo-app)",
                options.app_binary.display()
            )));
        }
        let dir = tempfile::Builder::new()
            .prefix("switchyard-sandbox-")
            .tempdir()
            .map_err(|e| AppError::environment(format!("creating a sandbox directory: {e}")))?;
        let listen: SocketAddr = match options.listen {
            Some(listen) => listen,
            None => format!("127.0.0.1:{}", free_port()?)
                .parse()
                .expect("loopback address"),
        };
        let config_path = dir.path().join("switchyard.toml");
        std::fs::write(&config_path, config_text(options, listen, free_port()?)).map_err(|e| {
            AppError::environment(format!("writing {}: {e}", config_path.display()))
        })?;
        let live = Live::open(settings::load(&config_path)?).await?;
        let drain = live.spec(SERVICE)?.drain_timeout;
        let nginx = ManagedNginx::start(&live.router, drain)
            .await
            .map_err(|e| AppError::environment(e.to_string()))?;
        Ok(Sandbox {
            dir,
            config_path,
            listen,
            live: Some(live),
            nginx: Some(nginx),
            app_binary: options.app_binary.clone(),
            docker_healthcheck: options.docker_healthcheck,
            own_images: options.image.is_some(),
        })
    }

    pub fn live(&self) -> &Live {
        self.live
            .as_ref()
            .expect("a sandbox has its live clients until shutdown")
    }

    /// Reads the config again, as the next `switchyard` command would (templates included),
    /// keeping nginx and the instances as they are.
    pub async fn reopen(&mut self) -> Result<(), AppError> {
        self.live = Some(Live::open(settings::load(&self.config_path)?).await?);
        Ok(())
    }

    pub fn spec(&self) -> &ServiceSpec {
        self.live()
            .spec(SERVICE)
            .expect("the sandbox config has the web service")
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.listen)
    }

    pub fn nginx_master(&self) -> Option<u32> {
        self.nginx.as_ref().map(|n| n.master)
    }

    /// Builds `switchyard-demo:<version>` from the demo-app binary when Docker is the runtime
    /// and the test supplies no images of its own.
    pub async fn ensure_image(&self, version: &str) -> Result<(), AppError> {
        let AnyRuntime::Docker(docker) = &self.live().runtime else {
            return Ok(());
        };
        if self.own_images {
            return Ok(());
        }
        let docker = docker
            .get()
            .await
            .map_err(|e| AppError::environment(e.to_string()))?;
        let tag = format!("{}:{version}", image_name(self.docker_healthcheck));
        if BUILT
            .lock()
            .expect("image cache")
            .get_or_insert_with(HashSet::new)
            .contains(&tag)
        {
            return Ok(());
        }
        let image = ScratchImage {
            tag: &tag,
            binary: &self.app_binary,
            env: &[],
            healthcheck: self.docker_healthcheck.then_some(&["healthcheck"][..]),
        };
        build_scratch_image(docker, &image)
            .await
            .map_err(|e| AppError::environment(e.to_string()))?;
        BUILT
            .lock()
            .expect("image cache")
            .get_or_insert_with(HashSet::new)
            .insert(tag);
        Ok(())
    }

    /// Builds `version`'s image where needed and parses the version.
    async fn image_for(&self, version: &str) -> Result<Version, AppError> {
        self.ensure_image(version).await?;
        Version::parse(version).map_err(AppError::input)
    }

    pub async fn deploy(
        &self,
        version: &str,
        observer: &dyn Observer,
    ) -> Result<DeployReport, AppError> {
        let version = self.image_for(version).await?;
        Ok(self
            .live()
            .deployer(observer)
            .deploy(self.spec(), &version)
            .await?)
    }

    /// Deploys `version` as a canary, judged by the config's metric source.
    pub async fn deploy_canary(
        &self,
        version: &str,
        observer: &dyn Observer,
    ) -> Result<DeployReport, AppError> {
        self.deploy_with(version, StrategyKind::Canary, observer)
            .await
    }

    /// Deploys `version` with the strategy `kind`, watched after its cutover when the spec
    /// says `watch`.
    pub async fn deploy_with(
        &self,
        version: &str,
        kind: StrategyKind,
        observer: &dyn Observer,
    ) -> Result<DeployReport, AppError> {
        self.run(self.spec(), version, kind, observer).await
    }

    /// Deploys `version` blue-green with a post-cutover watch of `watch`, whatever the
    /// config says.
    pub async fn deploy_watched(
        &self,
        version: &str,
        watch: std::time::Duration,
        observer: &dyn Observer,
    ) -> Result<DeployReport, AppError> {
        let spec = ServiceSpec {
            watch,
            ..self.spec().clone()
        };
        self.run(&spec, version, StrategyKind::BlueGreen, observer)
            .await
    }

    /// `version` of `spec` by `kind`, with the metric source it needs.
    async fn run(
        &self,
        spec: &ServiceSpec,
        version: &str,
        kind: StrategyKind,
        observer: &dyn Observer,
    ) -> Result<DeployReport, AppError> {
        let version = self.image_for(version).await?;
        let metrics = self.live().deploy_metrics(spec, kind)?;
        Ok(self
            .live()
            .deployer(observer)
            .run(spec, &version, kind, &metrics)
            .await?)
    }

    pub async fn rollback(&self, observer: &dyn Observer) -> Result<DeployReport, AppError> {
        Ok(self.live().deployer(observer).rollback(self.spec()).await?)
    }

    /// Kills nginx at once, master and workers (SIGKILL: a crash, an OOM kill), as the
    /// sandbox's handle would never do; [`Sandbox::start_nginx`] starts it again.
    pub fn kill_nginx(&mut self) {
        let Some(nginx) = self.nginx.take() else {
            return;
        };
        let workers = switchyard_nginx::procs::workers(nginx.master);
        for pid in std::iter::once(nginx.master).chain(workers) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        nginx.detach();
    }

    /// Starts the sandbox's nginx from the files on disk, as anyone restarting it would.
    pub async fn start_nginx(&mut self) -> Result<(), AppError> {
        let drain = self.spec().drain_timeout;
        let nginx = ManagedNginx::start(&self.live().router, drain)
            .await
            .map_err(|e| AppError::environment(e.to_string()))?;
        if let Some(old) = self.nginx.replace(nginx) {
            old.detach();
        }
        Ok(())
    }

    /// Takes over the nginx running under the sandbox's prefix now (started again by `serve`
    /// or `switchyard proxy start`), so that shutdown and drop stop it.
    pub fn adopt_nginx(&mut self) {
        let current = ManagedNginx::take_over(&self.live().router);
        if let Some(old) = std::mem::replace(&mut self.nginx, current) {
            old.detach();
        }
    }

    /// Removes every instance and stops nginx.
    pub async fn shutdown(mut self) -> Result<(), AppError> {
        let removed = match self.live.take() {
            Some(live) => live.remove_all().await,
            None => Ok(()),
        };
        if let Some(nginx) = self.nginx.take() {
            nginx.stop().await;
        }
        removed
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Not shut down: a test failed or panicked. Clean up on a runtime of our own, since
        // the caller's may be gone.
        if let Some(live) = self.live.take() {
            let cleanup = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(runtime) = runtime {
                    if let Err(e) = runtime.block_on(live.remove_all()) {
                        eprintln!("sandbox cleanup: {e}");
                    }
                }
            });
            let _ = cleanup.join();
        }
        // ManagedNginx stops its master when dropped.
    }
}

/// Images with a HEALTHCHECK get their own name: one tag cannot mean both.
fn image_name(healthcheck: bool) -> String {
    if healthcheck {
        format!("{IMAGE}-hc")
    } else {
        IMAGE.to_owned()
    }
}

fn free_port() -> Result<u16, AppError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| AppError::environment(format!("finding a free port: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| AppError::environment(e.to_string()))
}

fn config_text(o: &SandboxOptions, listen: SocketAddr, control: u16) -> String {
    let (kind, source) = match o.runtime {
        RuntimeChoice::Docker => (
            "docker",
            format!(
                "image = {:?}",
                o.image
                    .clone()
                    .unwrap_or_else(|| format!("{}:{{version}}", image_name(o.docker_healthcheck)))
            ),
        ),
        RuntimeChoice::Process => (
            "process",
            format!("command = [{:?}]", o.app_binary.display().to_string()),
        ),
    };
    let env: String = o
        .env
        .iter()
        .map(|(k, v)| format!("{k} = {v:?}\n"))
        .collect();
    format!(
        r#"# Generated by switchyard's sandbox.
[proxy]
prefix = "nginx"
control = "127.0.0.1:{control}"
routing = "{routing}"
{proxy_keys}

[state]
path = "state/switchyard.db"

[runtime]
kind = "{kind}"

[[service]]
name = "{SERVICE}"
listen = "{listen}"
{source}
port = 8080
replicas = {replicas}
strategy = "{strategy}"
stop_timeout = "5s"
health = {{ {health} }}
drain = {{ timeout = "{drain}" }}
{container}
{service_keys}

[service.canary]
{canary}

[service.rolling]
{rolling}

[service.env]
{env}
{tables}"#,
        container = o.container,
        canary = o.canary,
        rolling = o.rolling,
        routing = o.routing,
        strategy = o.strategy,
        replicas = o.replicas,
        health = o.health,
        drain = o.drain_timeout,
        service_keys = o.service_keys,
        tables = o.tables,
        proxy_keys = o.proxy_keys,
    )
}
