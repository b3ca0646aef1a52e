//! The real seams, built from a validated config: [`Live`], [`AnyRuntime`] (Docker or
//! processes, chosen by config; Docker through [`LazyDocker`]), [`SystemHost`] and
//! [`HttpProber`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchyard_docker::pull::PullSettings;
use switchyard_docker::DockerRuntime;
use switchyard_engine::config::{ProxyMode, RuntimeChoice, StrategyKind};
use switchyard_engine::deploy::{Deployer, Unwatched};
use switchyard_engine::*;
use switchyard_nginx::{Layout, ManagedNginx, NginxRouter, Templates};
use switchyard_process::ProcessRuntime;
use switchyard_store::SqliteStore;

use crate::traffic::{EmbeddedMetrics, TrafficWatch};
use crate::AppError;
use switchyard_engine::judge::{Measurement, TrackWindow};
use switchyard_prometheus::{PromClient, PromSource, QueryTemplates};

/// The runtime the config chose.
pub enum AnyRuntime {
    Docker(LazyDocker),
    Process(ProcessRuntime),
}

/// A Docker client that connects on first use, so the commands that never touch a
/// container (`plan`, `history`, `serve`) work while Docker is down. Only a connection is
/// kept: while the daemon is down every use tries again, so a long-running `serve` sees it
/// come back.
pub struct LazyDocker {
    scope: String,
    /// How the client pulls images: `[registry]`, Docker's config.json, progress.
    pull: Arc<PullSettings>,
    client: tokio::sync::OnceCell<DockerRuntime>,
}

impl LazyDocker {
    pub fn new(scope: &str, pull: PullSettings) -> LazyDocker {
        LazyDocker {
            scope: scope.to_owned(),
            pull: Arc::new(pull),
            client: tokio::sync::OnceCell::new(),
        }
    }

    /// The connected client, connecting now if this is the first use.
    pub async fn get(&self) -> Result<&DockerRuntime, RuntimeError> {
        self.client
            .get_or_try_init(|| async {
                let docker = DockerRuntime::connect(&self.scope).await?;
                Ok(docker.with_pull(self.pull.clone()))
            })
            .await
    }

    pub fn scope(&self) -> &str {
        &self.scope
    }
}

impl AnyRuntime {
    /// Whether the runtime answers: connects to Docker if nothing has yet.
    pub async fn reachable(&self) -> Result<(), RuntimeError> {
        match self {
            AnyRuntime::Docker(d) => d.get().await.map(|_| ()),
            AnyRuntime::Process(_) => Ok(()),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $r:ident => $call:expr) => {
        match $self {
            AnyRuntime::Docker(d) => {
                let $r = d.get().await?;
                $call
            }
            AnyRuntime::Process($r) => $call,
        }
    };
}

impl Runtime for AnyRuntime {
    async fn prepare(&self, spec: &InstanceSpec) -> Result<(), RuntimeError> {
        delegate!(self, r => r.prepare(spec).await)
    }
    async fn start(&self, spec: &InstanceSpec) -> Result<Instance, RuntimeError> {
        delegate!(self, r => r.start(spec).await)
    }
    async fn restart(&self, instance: &Instance) -> Result<Instance, RuntimeError> {
        delegate!(self, r => r.restart(instance).await)
    }
    async fn status(&self, instance: &Instance) -> Result<InstanceStatus, RuntimeError> {
        delegate!(self, r => r.status(instance).await)
    }
    async fn stop(&self, instance: &Instance, timeout: Duration) -> Result<(), RuntimeError> {
        delegate!(self, r => r.stop(instance, timeout).await)
    }
    async fn remove(&self, instance: &Instance) -> Result<(), RuntimeError> {
        delegate!(self, r => r.remove(instance).await)
    }
    async fn logs(&self, instance: &Instance, lines: usize) -> String {
        match self {
            AnyRuntime::Docker(d) => match d.get().await {
                Ok(r) => r.logs(instance, lines).await,
                Err(e) => format!("no logs: {e}"),
            },
            AnyRuntime::Process(r) => r.logs(instance, lines).await,
        }
    }
    async fn list(&self, service: &Name) -> Result<Vec<Instance>, RuntimeError> {
        delegate!(self, r => r.list(service).await)
    }
}

/// The clock and process table of this machine.
pub struct SystemHost;

impl Host for SystemHost {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }
    fn pid(&self) -> u32 {
        std::process::id()
    }
    fn hostname(&self) -> String {
        nix::unistd::gethostname()
            .map_or_else(|_| "localhost".into(), |h| h.to_string_lossy().into_owned())
    }
    fn user(&self) -> String {
        std::env::var("USER").unwrap_or_else(|_| nix::unistd::getuid().to_string())
    }
    fn process_alive(&self, pid: u32) -> bool {
        let Ok(pid) = i32::try_from(pid) else {
            return false;
        };
        // EPERM means it exists but belongs to someone else.
        !matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        )
    }
}

/// Health probes over HTTP, each on a fresh connection (a pooled one could outlive the app).
pub struct HttpProber {
    client: reqwest::Client,
}

impl Default for HttpProber {
    fn default() -> Self {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("a plain HTTP client builds");
        HttpProber { client }
    }
}

impl Prober for HttpProber {
    async fn probe(&self, addr: SocketAddr, path: &str, timeout: Duration) -> Probe {
        let started = std::time::Instant::now();
        let response = self
            .client
            .get(format!("http://{addr}{path}"))
            .timeout(timeout)
            .send()
            .await;
        let (ok, summary) = match response {
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                let body: String = body.trim().chars().take(200).collect();
                (status.is_success(), format!("{} {body}", status.as_u16()))
            }
            Err(e) if e.is_timeout() => (false, format!("no answer within {timeout:?}")),
            Err(e) => (false, root_cause(&e)),
        };
        Probe {
            ok,
            summary,
            latency: started.elapsed(),
        }
    }
}

/// The innermost error: "Connection refused (os error 111)" rather than reqwest's layers.
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// The judge's metric source the config chose: Prometheus, or nginx's access log; none for
/// a deploy nothing judges.
pub enum AnyMetrics {
    Prometheus(PromSource),
    Embedded(EmbeddedMetrics),
    Unwatched(Unwatched),
}

impl MetricSource for AnyMetrics {
    async fn measure(&self, query: &TrackWindow) -> Result<Measurement, MetricError> {
        match self {
            AnyMetrics::Prometheus(p) => p.measure(query).await,
            AnyMetrics::Embedded(e) => e.measure(query).await,
            AnyMetrics::Unwatched(u) => u.measure(query).await,
        }
    }
}

/// A config with its live clients.
pub struct Live {
    pub config: Config,
    pub runtime: AnyRuntime,
    pub router: NginxRouter,
    pub store: SqliteStore,
    pub host: SystemHost,
    pub prober: HttpProber,
    /// Runs the services' `[service.hooks]`.
    pub hooks: crate::hooks::HookRunner,
}

impl Live {
    /// Live clients for a command that runs the service (`deploy`, `rollback`): reads each
    /// service's `env_file` and `secrets`, and fails with exit 3 now, before anything is
    /// journaled, when the runtime does not answer.
    pub async fn open(mut config: Config) -> Result<Live, AppError> {
        // What a deploy hands its replicas: read now, at deploy time, never stored.
        crate::secrets::read(&mut config)?;
        let live = Live::open_lazy(config)?;
        live.runtime.reachable().await.map_err(|e| {
            AppError::environment(format!(
                "{e}\nhint: on a host without Docker, set [runtime] kind = \"process\""
            ))
        })?;
        Ok(live)
    }

    /// Live clients without asking the runtime: Docker is connected on first use, so `plan`,
    /// `history`, `serve` and `status` work while it is down.
    pub fn open_lazy(config: Config) -> Result<Live, AppError> {
        let state_dir = config
            .state_path
            .parent()
            .unwrap_or(Path::new("."))
            .to_owned();
        std::fs::create_dir_all(&state_dir)
            .map_err(|e| AppError::environment(format!("creating {}: {e}", state_dir.display())))?;
        let store = SqliteStore::open(&config.state_path)
            .map_err(|e| AppError::environment(e.to_string()))?;
        let runtime = match config.runtime {
            RuntimeChoice::Docker => {
                let pull = PullSettings {
                    // A pull's progress line is for a person watching a terminal.
                    progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
                    ..PullSettings::new(config.registry.clone())
                };
                AnyRuntime::Docker(LazyDocker::new(&scope(&config.state_path), pull))
            }
            RuntimeChoice::Process => {
                move_nested_process_dir(&state_dir)?;
                AnyRuntime::Process(
                    ProcessRuntime::new(state_dir.clone())
                        .map_err(|e| AppError::environment(e.to_string()))?,
                )
            }
        };
        let router = router(&config)?;
        let hooks = crate::hooks::HookRunner::redacting(&config);
        Ok(Live {
            config,
            runtime,
            router,
            store,
            host: SystemHost,
            prober: HttpProber::default(),
            hooks,
        })
    }

    /// Where canary measurements come from: `[metrics] prometheus`, or else a tailer of the
    /// access log started now (so it sees only this deploy's traffic).
    pub fn metrics(&self, service: &str) -> Result<AnyMetrics, AppError> {
        match &self.config.metrics.prometheus {
            Some(url) => Ok(AnyMetrics::Prometheus(PromSource {
                client: PromClient::new(url, Duration::from_secs(5)),
                templates: QueryTemplates::default(),
            })),
            None => {
                let log = &self.router.layout.access_log;
                let watch = TrafficWatch::start(log, &[service]).map_err(|e| {
                    AppError::environment(format!("tailing {}: {e}", log.display()))
                })?;
                Ok(AnyMetrics::Embedded(EmbeddedMetrics { watch }))
            }
        }
    }

    /// What judges a deploy of `spec` by `kind`: the config's metric source when a canary
    /// or the post-cutover watch (`watch`) needs one; nothing otherwise, so a plain deploy
    /// tails no log.
    pub fn deploy_metrics(
        &self,
        spec: &ServiceSpec,
        kind: StrategyKind,
    ) -> Result<AnyMetrics, AppError> {
        match kind == StrategyKind::Canary || !spec.watch.is_zero() {
            true => self.metrics(spec.name.as_str()),
            false => Ok(AnyMetrics::Unwatched(Unwatched)),
        }
    }

    /// How the router moves traffic, in the plan's terms.
    pub fn route_by(&self) -> switchyard_engine::plan::RouteBy {
        match self.router.routing() {
            switchyard_nginx::Routing::Dynamic => switchyard_engine::plan::RouteBy::Dynamic,
            switchyard_nginx::Routing::Reload => switchyard_engine::plan::RouteBy::Reload,
        }
    }

    pub fn spec(&self, service: &str) -> Result<&ServiceSpec, AppError> {
        self.config.service(service).ok_or_else(|| {
            let known: Vec<&str> = self
                .config
                .services
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            AppError::input(format!(
                "no service {service:?} in the config (services: {})",
                known.join(", ")
            ))
        })
    }

    /// Starts the managed nginx if it is not running (and leaves it running), or checks that
    /// the system nginx runs.
    pub async fn ensure_nginx(&self) -> Result<(), AppError> {
        match &self.config.proxy.mode {
            ProxyMode::Managed { .. } => {
                let drain = self
                    .config
                    .services
                    .iter()
                    .map(|s| s.drain_timeout)
                    .max()
                    .unwrap_or(Duration::from_secs(30));
                let nginx = ManagedNginx::start(&self.router, drain)
                    .await
                    .map_err(|e| AppError::environment(e.to_string()))?;
                nginx.detach();
                Ok(())
            }
            ProxyMode::System { .. } => self
                .router
                .master()
                .map(|_| ())
                .map_err(|e| AppError::environment(e.to_string())),
        }
    }

    pub fn deployer<'a>(
        &'a self,
        observer: &'a dyn Observer,
    ) -> Deployer<'a, AnyRuntime, HttpProber, NginxRouter, SqliteStore, SystemHost> {
        Deployer {
            runtime: &self.runtime,
            prober: &self.prober,
            router: &self.router,
            store: &self.store,
            host: &self.host,
            hooks: &self.hooks,
            observer,
        }
    }

    /// Removes every instance of every configured service (tests, the demo).
    pub async fn remove_all(&self) -> Result<(), AppError> {
        for spec in &self.config.services {
            let instances = self
                .runtime
                .list(&spec.name)
                .await
                .map_err(|e| AppError::environment(e.to_string()))?;
            for instance in instances {
                self.runtime
                    .remove(&instance)
                    .await
                    .map_err(|e| AppError::environment(e.to_string()))?;
            }
        }
        Ok(())
    }
}

/// The router the config describes (its routing is resolved on first use), with the
/// services' front doors and the template overrides of `proxy.templates`.
pub fn router(config: &Config) -> Result<NginxRouter, AppError> {
    let layout = match &config.proxy.mode {
        ProxyMode::Managed { prefix } => Layout::managed(&config.proxy.nginx, prefix),
        ProxyMode::System {
            main_conf,
            conf_dir,
            pid_file,
            access_log,
        } => Layout::system(
            &config.proxy.nginx,
            main_conf,
            conf_dir,
            pid_file,
            access_log,
        ),
    };
    let templates = match &config.proxy.templates {
        None => Templates::builtin(),
        Some(dir) => Templates::with_overrides(dir)
            .map_err(|e| AppError::input(format!("proxy.templates: {e}")))?,
    };
    let fronts = config
        .services
        .iter()
        .map(|s| (s.name.to_string(), s.front.clone()))
        .collect();
    Ok(NginxRouter::new(layout, config.proxy.control, templates)
        .with_routing(config.proxy.routing)
        .with_fronts(fronts))
}

/// The Docker label that keeps this installation's containers apart: a hash of the state
/// database's absolute path.
pub fn scope(state_path: &Path) -> String {
    let absolute: PathBuf =
        std::path::absolute(state_path).unwrap_or_else(|_| state_path.to_owned());
    // FNV-1a: stable across Rust versions, unlike std's hasher.
    let hash = absolute
        .to_string_lossy()
        .bytes()
        .fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
    format!("sy{hash:08x}")
}

/// Moves the files an older switchyard wrote to `<state>/processes/processes/` (the folder
/// was joined twice) up into `<state>/processes/`, so the instances they record stay known.
fn move_nested_process_dir(state_dir: &Path) -> Result<(), AppError> {
    let nested = state_dir.join("processes/processes");
    let Ok(entries) = std::fs::read_dir(&nested) else {
        return Ok(());
    };
    let io = |what: &Path, e: std::io::Error| {
        AppError::environment(format!("moving {} up a folder: {e}", what.display()))
    };
    for entry in entries {
        let from = entry.map_err(|e| io(&nested, e))?.path();
        let to = state_dir
            .join("processes")
            .join(from.file_name().unwrap_or_default());
        if !to.exists() {
            std::fs::rename(&from, &to).map_err(|e| io(&from, e))?;
        }
    }
    // Left in place if a file could not move (its name was taken).
    let _ = std::fs::remove_dir(&nested);
    Ok(())
}

#[cfg(test)]
mod tests;
