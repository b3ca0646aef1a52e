//! `switchyard serve`: the long-running daemon. [`start`] binds an HTTP server, HTTPS when
//! `[serve] cert` and `key` are set (`serve/tls.rs`; off loopback only then:
//! [`check_listen`]), and returns a [`Server`] handle with the bound address and a graceful
//! [`Server::shutdown`]; the binary and the tests run the same code in-process. Everything
//! below is served on that one listener.
//!
//! - `GET /metrics`: the Prometheus text exposition.
//!   - From nginx's own access log (`serve/proxy.rs`):
//!     `switchyard_proxy_requests_total{service,track,version,code}` per upstream attempt,
//!     `code` the status class (`2xx`…`5xx`), and the latency histogram
//!     `switchyard_proxy_request_duration_seconds{service,track,version}`. `version` is
//!     the version the track served when the lines were read (`serve/tracks.rs`): stable
//!     the active slot's (the new one from `routed` on), canary the running canary's, or
//!     the last canary's once it ended, `none` before any.
//!   - From the store, at scrape time (`serve/history.rs`): `switchyard_deployments_total`,
//!     `switchyard_deployment_duration_seconds`, `switchyard_rollbacks_total{reason}`,
//!     `switchyard_reload_duration_seconds`, and `switchyard_traffic_weight` per track (per
//!     version on the stable track mid-rollout, `serve/tracks.rs`).
//!   - From serve's own probes of the active instances (`serve/health.rs`):
//!     `switchyard_health_check_duration_seconds` and `switchyard_instance_healthy`.
//!   - `switchyard_proxy_up`: whether the nginx master runs (`serve/supervise.rs`).
//! - `GET /api/status`: JSON, see `serve/status.rs`.
//! - `GET /healthz`: 200 `ok`.
//! - `/api/v1/…`: the authenticated API (`serve/api.rs`): status, history, deployments and
//!   their event streams, detached deploys and rollbacks, promote and abort. `/metrics`,
//!   `/healthz` and (for now) `/api/status` need no token.
//!
//! Every series exists at 0 before it counts anything, and counters never go down. The
//! store is SQLite, read synchronously: handlers and the background loops read it on
//! tokio's blocking pool. Background loops: the access log read (and rotated at
//! `[proxy] access_log_max`, `serve/accesslog.rs`), the attribution every
//! [`ATTRIBUTE_EVERY`], a health probe round every [`ServeOptions::health_every`], and the
//! supervision of nginx every [`ServeOptions::proxy_every`] (`serve/supervise.rs`: a managed
//! nginx that is down is started again).

mod accesslog;
mod api;
mod dashboard;
mod exposition;
mod health;
mod history;
mod listen;
mod nginx;
mod proxy;
mod status;
mod supervise;
#[cfg(test)]
mod tests;
pub mod tls;
mod tracks;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::proto::MetricFamily;
use switchyard_engine::{Config, Instance, Store, StoreError};
use switchyard_nginx::NginxRouter;
use switchyard_store::SqliteStore;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::live::{HttpProber, Live};
use crate::AppError;

pub use health::LastProbe;
pub use history::{rollback_reason, ROLLBACK_REASONS};
pub use listen::{probe_listen, ListenCheck};
pub use nginx::{start_nginx, stop_nginx, worker_shutdown_timeout, ProxyState};
pub use status::{ListenReport, StatusReport};
pub use switchyard_nginx::managed::Restarted;
pub use tracks::{TrackState, NONE};

/// How often what the tailer counted is attributed to the versions the tracks serve.
pub const ATTRIBUTE_EVERY: Duration = Duration::from_millis(250);
/// How often the active instances are probed by default.
pub const HEALTH_EVERY: Duration = Duration::from_secs(2);
/// How often serve looks at the nginx master by default.
pub const PROXY_EVERY: Duration = Duration::from_millis(250);
/// How long [`Server::shutdown`] lets requests in flight finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long [`Server::shutdown`] lets an nginx start in progress finish (its own bound is 20 s).
const SUPERVISOR_GRACE: Duration = Duration::from_secs(25);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// How often the active instances' health paths are probed.
    pub health_every: Duration,
    /// Whether serve starts a managed nginx that is down (at start and when it dies).
    pub supervise: bool,
    /// How often the nginx master is looked at.
    pub proxy_every: Duration,
}

impl ServeOptions {
    pub fn new(listen: SocketAddr) -> ServeOptions {
        ServeOptions {
            listen,
            health_every: HEALTH_EVERY,
            supervise: true,
            proxy_every: PROXY_EVERY,
        }
    }
}

/// Refuses a listen address off the loopback interface unless serve speaks TLS there: the
/// API's bearer token must not cross the network in clear. (The config refuses such a
/// `[serve] listen` too; this catches `--listen`.)
pub fn check_listen(listen: SocketAddr, tls: bool) -> Result<(), AppError> {
    if tls || listen.ip().is_loopback() {
        return Ok(());
    }
    Err(AppError::input(format!(
        "refusing to listen on {listen}: it is not a loopback address, and a remote listen \
         needs TLS (the API's bearer token would cross the network in clear): set [serve] \
         cert and key, or keep serve on 127.0.0.1 behind a TLS-terminating proxy"
    )))
}

/// The rustls config of `[serve] cert` and `key`, if set; a file that cannot serve is bad
/// input, named with its field.
fn tls_config(config: &Config) -> Result<Option<Arc<tls::ServerConfig>>, AppError> {
    let Some(files) = &config.serve.tls else {
        return Ok(None);
    };
    tls::server_config(files)
        .map(Some)
        .map_err(|e| AppError::input(format!("{}: {e}", e.field)))
}

/// Serves `live` on `listen` (`127.0.0.1:0` picks a free port) with default options.
pub async fn start(live: Live, listen: SocketAddr) -> Result<Server, AppError> {
    start_with(live, ServeOptions::new(listen)).await
}

pub async fn start_with(live: Live, options: ServeOptions) -> Result<Server, AppError> {
    // Every TLS file is read before anything listens.
    let tls = tls_config(&live.config)?;
    check_listen(options.listen, tls.is_some())?;
    let daemon = Arc::new(Daemon::new(live)?);
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| AppError::environment(format!("binding {}: {e}", options.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| AppError::environment(format!("binding {}: {e}", options.listen)))?;
    let app = axum::Router::new()
        .route("/", get(dashboard::page))
        .route("/metrics", get(metrics))
        .route("/api/status", get(api_status))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(Arc::clone(&daemon))
        .merge(api::routes(Arc::clone(&daemon)));
    let (stop, stopped) = oneshot::channel::<()>();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let http = tokio::spawn(async move {
        let stopped = async {
            let _ = stopped.await;
        };
        match tls {
            None => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await
            }
            Some(config) => {
                axum::serve(tls::TlsListener::new(listener, config)?, app)
                    .with_graceful_shutdown(stopped)
                    .await
            }
        }
    });
    let background = vec![
        tokio::spawn(attribute_loop(Arc::clone(&daemon))),
        tokio::spawn(health_loop(Arc::clone(&daemon), options.health_every)),
    ];
    let (stop_supervisor, stopped) = watch::channel(false);
    let supervised = Arc::clone(&daemon);
    let supervisor = options.supervise.then(|| {
        tokio::spawn(supervise::supervise(
            supervised,
            options.proxy_every,
            stopped,
        ))
    });
    tracing::info!("serving /metrics, /api/status, /api/v1 and /healthz on {scheme}://{addr}");
    if !daemon.api.is_open() {
        tracing::warn!("/api/v1 answers 401 to everything: set [serve] token_file to open it");
    }
    Ok(Server {
        addr,
        scheme,
        stop: Some(stop),
        http: Some(http),
        background,
        stop_supervisor,
        supervisor,
        daemon,
    })
}

/// A running daemon; dropping it stops everything at once, [`Server::shutdown`] lets
/// requests in flight finish first.
pub struct Server {
    addr: SocketAddr,
    /// `https` when serve speaks TLS, else `http`.
    scheme: &'static str,
    stop: Option<oneshot::Sender<()>>,
    http: Option<JoinHandle<std::io::Result<()>>>,
    background: Vec<JoinHandle<()>>,
    stop_supervisor: watch::Sender<bool>,
    /// Stopped between looks, never in the middle of starting nginx.
    supervisor: Option<JoinHandle<()>>,
    /// For the API's detached deploys, interrupted on shutdown.
    daemon: Arc<Daemon>,
}

impl Server {
    /// The bound address (the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://addr` or `http://addr`.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Interrupts the API's deploys in flight (left to the next deploy or rollback, as a
    /// killed CLI's are), stops accepting, lets requests in flight finish (at most 5 s),
    /// stops the loops (an nginx start in progress is let finish: nginx outlives serve).
    pub async fn shutdown(mut self) -> Result<(), AppError> {
        self.daemon.api.stop(SHUTDOWN_GRACE).await;
        self.background.iter().for_each(JoinHandle::abort);
        let _ = self.stop_supervisor.send(true);
        if let Some(mut supervisor) = self.supervisor.take() {
            if tokio::time::timeout(SUPERVISOR_GRACE, &mut supervisor)
                .await
                .is_err()
            {
                supervisor.abort();
            }
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(mut http) = self.http.take() else {
            return Ok(());
        };
        let served = match tokio::time::timeout(SHUTDOWN_GRACE, &mut http).await {
            Ok(Ok(served)) => served,
            Ok(Err(e)) => return Err(AppError::environment(format!("serve task: {e}"))),
            Err(_) => {
                http.abort();
                tracing::warn!("requests still in flight after {SHUTDOWN_GRACE:?}; dropped");
                Ok(())
            }
        };
        served.map_err(|e| AppError::environment(format!("serving on {}: {e}", self.addr)))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.daemon.api.interrupt();
        self.background.iter().for_each(JoinHandle::abort);
        if let Some(supervisor) = &self.supervisor {
            supervisor.abort();
        }
        if let Some(http) = &self.http {
            http.abort();
        }
    }
}

/// What the handlers and loops share.
struct Daemon {
    config: Config,
    services: Vec<String>,
    store: Mutex<SqliteStore>,
    prober: HttpProber,
    router: NginxRouter,
    /// The `worker_shutdown_timeout` a restarted nginx gets: the longest drain timeout.
    worker_shutdown_timeout: Duration,
    access_log: accesslog::AccessLog,
    /// Per service, the canary version its canary track last had.
    last_canary: Mutex<BTreeMap<String, Option<String>>>,
    proxy: Mutex<proxy::ProxySeries>,
    history: Mutex<history::HistoryMetrics>,
    health: health::HealthBoard,
    /// The API's token and the logs of the deployments it ran.
    api: api::Api,
}

impl Daemon {
    fn new(live: Live) -> Result<Daemon, AppError> {
        let Live {
            config,
            router,
            store,
            prober,
            ..
        } = live;
        let api = api::Api::new(&config)?;
        let services: Vec<String> = config.services.iter().map(|s| s.name.to_string()).collect();
        let names: Vec<&str> = services.iter().map(String::as_str).collect();
        let log = &router.layout.access_log;
        let access_log =
            accesslog::AccessLog::start(&router.layout, &names, config.proxy.access_log_max)
                .map_err(|e| AppError::environment(format!("tailing {}: {e}", log.display())))?;
        let worker_shutdown_timeout = worker_shutdown_timeout(&config);
        let history = store
            .history(None, usize::MAX)
            .map_err(|e| AppError::environment(e.to_string()))?;
        let mut last_canary: BTreeMap<String, Option<String>> =
            services.iter().map(|s| (s.clone(), None)).collect();
        for (service, version) in tracks::last_canaries(&history) {
            last_canary.insert(service, Some(version));
        }
        Ok(Daemon {
            health: health::HealthBoard::new(&services),
            config,
            services,
            store: Mutex::new(store),
            prober,
            router,
            worker_shutdown_timeout,
            access_log,
            last_canary: Mutex::new(last_canary),
            proxy: Mutex::new(proxy::ProxySeries::default()),
            history: Mutex::new(history::HistoryMetrics::default()),
            api,
        })
    }

    /// Every configured service's tracks, from the store.
    fn tracks(&self) -> Result<BTreeMap<String, TrackState>, StoreError> {
        let store = self.store.lock().expect("store lock");
        let mut last = self.last_canary.lock().expect("canary lock");
        let mut out = BTreeMap::new();
        for spec in &self.config.services {
            let name = spec.name.to_string();
            let state =
                TrackState::read(&store, &spec.name, last.entry(name.clone()).or_default())?;
            out.insert(name, state);
        }
        Ok(out)
    }

    fn attribute(&self, tracks: &BTreeMap<String, TrackState>) {
        let counters = self.access_log.counters();
        let counters = counters.lock().expect("traffic counters lock");
        self.proxy
            .lock()
            .expect("proxy series lock")
            .attribute(&counters, tracks);
    }

    fn scrape(&self) -> Result<String, StoreError> {
        let tracks = self.tracks()?;
        self.attribute(&tracks);
        let mut families = {
            let store = self.store.lock().expect("store lock");
            let mut history = self.history.lock().expect("history lock");
            history.families(&store, &self.services)?
        };
        // Last, once nothing can fail: exposing marks new proxy series as shown.
        families.extend(self.proxy.lock().expect("proxy series lock").expose());
        families.push(weights(&tracks));
        families.extend(self.health.families());
        families.push(supervise::proxy_up(&self.router));
        Ok(exposition::encode(families))
    }

    fn status(&self) -> Result<StatusReport, StoreError> {
        let tracks = self.tracks()?;
        let store = self.store.lock().expect("store lock");
        let services = self
            .config
            .services
            .iter()
            .map(|spec| {
                let state = &tracks[spec.name.as_str()];
                status::service_status(&store, spec, state, &self.health)
            })
            .collect::<Result<_, _>>()?;
        let proxy = ProxyState::read(&self.router, &self.config.proxy.mode);
        Ok(StatusReport { proxy, services })
    }

    /// The active instances of every configured service.
    fn active_instances(&self) -> Result<Vec<(String, Vec<Instance>)>, StoreError> {
        let store = self.store.lock().expect("store lock");
        self.config
            .services
            .iter()
            .map(|spec| {
                let active = store.service(&spec.name)?.active;
                let instances = active.map(|s| s.instances).unwrap_or_default();
                Ok((spec.name.to_string(), instances))
            })
            .collect()
    }
}

/// `switchyard_traffic_weight{service,track,version}`: each track's share, 0 to 1; mid-rollout
/// the stable track has one series per version it serves.
fn weights(tracks: &BTreeMap<String, TrackState>) -> MetricFamily {
    let mut family = exposition::Family::gauge(
        "switchyard_traffic_weight",
        "Share of a service's traffic that nginx sends to a track (0 to 1), from the store.",
    );
    for (service, state) in tracks {
        for track in proxy::TRACKS {
            let by_version = match track {
                "stable" => state.stable_weights(),
                _ => {
                    let version = state.version(track).expect("a known track");
                    vec![(version, state.weight(track))]
                }
            };
            for (version, weight) in by_version {
                let labels = [
                    ("service", service.as_str()),
                    ("track", track),
                    ("version", version),
                ];
                family.value(&labels, weight);
            }
        }
    }
    family.into_inner()
}

/// Runs `f` on the blocking pool: the store is synchronous SQLite.
async fn blocking<T: Send + 'static>(
    daemon: &Arc<Daemon>,
    f: impl FnOnce(&Daemon) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, String> {
    let daemon = Arc::clone(daemon);
    match tokio::task::spawn_blocking(move || f(&daemon)).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(format!("a serve task failed: {e}")),
    }
}

async fn metrics(State(daemon): State<Arc<Daemon>>) -> Response {
    match blocking(&daemon, Daemon::scrape).await {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(e) => failed("/metrics", e),
    }
}

async fn api_status(State(daemon): State<Arc<Daemon>>) -> Response {
    match blocking(&daemon, Daemon::status).await {
        Ok(mut report) => {
            status::check_listens(&mut report, &daemon.config).await;
            let body = serde_json::to_string_pretty(&report).expect("the report serializes");
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err(e) => failed("/api/status", e),
    }
}

/// A 500 naming what failed. A failed scrape is *no data* for Prometheus, never zeros.
fn failed(path: &str, error: String) -> Response {
    tracing::warn!("{path}: {error}");
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response()
}

async fn attribute_loop(daemon: Arc<Daemon>) {
    let mut failing = false;
    loop {
        tokio::time::sleep(ATTRIBUTE_EVERY).await;
        let result = blocking(&daemon, |d| {
            let tracks = d.tracks()?;
            d.attribute(&tracks);
            Ok(())
        })
        .await;
        // Logged when it starts failing, not every 250 ms.
        match result {
            Err(e) if !failing => {
                tracing::warn!("reading the tracks' versions: {e}");
                failing = true;
            }
            Err(_) => {}
            Ok(()) => failing = false,
        }
    }
}

async fn health_loop(daemon: Arc<Daemon>, every: Duration) {
    let mut failing = false;
    loop {
        match blocking(&daemon, Daemon::active_instances).await {
            Ok(services) => {
                failing = false;
                for (service, instances) in services {
                    let spec = daemon
                        .config
                        .service(&service)
                        .expect("a configured service");
                    daemon.health.probe(&daemon.prober, spec, &instances).await;
                }
            }
            Err(e) if !failing => {
                tracing::warn!("reading the active instances: {e}");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(every).await;
    }
}
