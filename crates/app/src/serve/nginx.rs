//! The nginx switchyard routes through, for `serve` and `switchyard proxy`: [`ProxyState`]
//! (is its master running, from the pid file), [`start_nginx`] and [`stop_nginx`] for a
//! managed one, and the [`worker_shutdown_timeout`] a started nginx gets.

use std::time::Duration;

use serde::Serialize;
use switchyard_engine::config::ProxyMode;
use switchyard_engine::{Config, RouterError};
use switchyard_nginx::managed::{stop_running, Restarted, StartBy};
use switchyard_nginx::{ManagedNginx, NginxRouter};

use crate::live::Live;
use crate::AppError;

/// The nginx switchyard routes through, from its pid file.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyState {
    pub up: bool,
    pub master: Option<u32>,
    /// `managed` (switchyard runs it) or `system` (systemd owns it).
    pub mode: &'static str,
    /// `dynamic` or `reload`.
    pub routing: &'static str,
    /// `master 1234`, or why it is down.
    pub detail: String,
}

impl ProxyState {
    /// Reads the pid file (and resolves the routing, which may run `nginx -t` once).
    pub fn read(router: &NginxRouter, mode: &ProxyMode) -> ProxyState {
        let (up, master, detail) = match router.master() {
            Ok(pid) => (true, Some(pid), format!("master {pid}")),
            Err(RouterError::Unavailable(why)) => (false, None, why),
            Err(e) => (false, None, e.to_string()),
        };
        ProxyState {
            up,
            master,
            mode: match mode {
                ProxyMode::Managed { .. } => "managed",
                ProxyMode::System { .. } => "system",
            },
            routing: router.routing().as_str(),
            detail,
        }
    }

    /// `nginx: up (master 1234, managed, dynamic routing)` or `nginx: down (…)`.
    pub fn line(&self) -> String {
        let state = if self.up { "up" } else { "down" };
        format!(
            "nginx: {state} ({}; {}, {} routing)",
            self.detail, self.mode, self.routing
        )
    }
}

/// Starts the managed nginx if it is down (under the apply lock, after the orphaned workers
/// of a killed master are stopped) and leaves it running; a running one is adopted. `serve`
/// supervises it again from then on.
pub async fn start_nginx(live: &Live) -> Result<Restarted, AppError> {
    managed_only(&live.config, "start")?;
    let wst = worker_shutdown_timeout(&live.config);
    ManagedNginx::restart(&live.router, wst, StartBy::Operator)
        .await
        .map_err(|e| AppError::environment(e.to_string()))?
        .ok_or_else(|| AppError::environment("nginx was not started"))
}

/// Stops the managed nginx gracefully (requests in flight get the workers' shutdown timeout
/// and 5 s more) and waits for it to exit; the pid it had, or None if it was not running.
/// `serve` leaves it down until [`start_nginx`].
pub async fn stop_nginx(live: &Live) -> Result<Option<u32>, AppError> {
    managed_only(&live.config, "stop")?;
    let grace = worker_shutdown_timeout(&live.config) + Duration::from_secs(5);
    stop_running(&live.router, grace)
        .await
        .map_err(|e| AppError::environment(e.to_string()))
}

/// A system nginx belongs to systemd: switchyard neither starts nor stops it (exit 2).
fn managed_only(config: &Config, verb: &str) -> Result<(), AppError> {
    match config.proxy.mode {
        ProxyMode::Managed { .. } => Ok(()),
        ProxyMode::System { .. } => Err(AppError::input(format!(
            "[proxy] names the system nginx (main_conf), which systemd runs: use \
             `systemctl {verb} nginx`"
        ))),
    }
}

/// What a started nginx gets as `worker_shutdown_timeout`: the longest drain timeout.
pub fn worker_shutdown_timeout(config: &Config) -> Duration {
    config
        .services
        .iter()
        .map(|s| s.drain_timeout)
        .max()
        .unwrap_or(Duration::from_secs(30))
}
