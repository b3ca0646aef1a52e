//! serve's watch over nginx: [`supervise`] polls the master every
//! [`super::ServeOptions::proxy_every`]. A managed nginx (`[proxy] prefix`) that is down is
//! started, at serve's start and whenever its master dies, from the files on disk (the last
//! confirmed config; with dynamic routing `init_by_lua` restores the routing from the state
//! file), after the orphaned workers of a killed master are stopped, under the router's apply
//! lock so a restart never races a deploy ([`ManagedNginx::restart`]). A system nginx belongs
//! to systemd: serve only says when it goes down and comes back. [`proxy_up`] is the
//! `switchyard_proxy_up` gauge.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::proto::MetricFamily;
use switchyard_engine::config::ProxyMode;
use switchyard_engine::RouterError;
use switchyard_nginx::managed::StartBy;
use switchyard_nginx::{ManagedNginx, NginxRouter, Routing};
use tokio::sync::watch;

use super::exposition::Family;
use super::Daemon;

/// The longest wait between attempts to start an nginx that keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What the loop last saw.
#[derive(Default)]
struct Seen {
    up: Option<bool>,
    master: Option<u32>,
    failures: u32,
    /// Stopped with `switchyard proxy stop`: left down, said once.
    held_down: bool,
}

pub(super) async fn supervise(
    daemon: Arc<Daemon>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let managed = matches!(daemon.config.proxy.mode, ProxyMode::Managed { .. });
    let mut seen = Seen::default();
    loop {
        match daemon.router.master() {
            Ok(master) => seen.running(master),
            Err(e) if !managed => {
                let e = why(&e);
                if seen.up != Some(false) {
                    tracing::warn!(
                        "the system nginx is down ({e}); systemd owns it, so serve does not \
                         start it"
                    );
                }
                seen.up = Some(false);
            }
            Err(_) if ManagedNginx::held_down(&daemon.router.layout) => {
                seen.up = Some(false);
                seen.stopped_on_purpose();
            }
            Err(e) => {
                let e = why(&e);
                match (seen.up, seen.master) {
                    (Some(true), Some(old)) => {
                        tracing::warn!("nginx master {old} is gone; restarting nginx")
                    }
                    (None, _) => tracing::info!("{e}; starting it"),
                    _ => {}
                }
                seen.up = Some(false);
                restart(&daemon, &mut seen).await;
            }
        }
        let pause = if seen.failures == 0 {
            every
        } else {
            (every * 2u32.saturating_pow(seen.failures.min(8))).min(MAX_BACKOFF)
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => return,
        }
    }
}

impl Seen {
    fn stopped_on_purpose(&mut self) {
        if !self.held_down {
            tracing::info!(
                "nginx was stopped with `switchyard proxy stop`; leaving it down until \
                 `switchyard proxy start`"
            );
            self.held_down = true;
        }
    }

    fn running(&mut self, master: u32) {
        match (self.up, self.master) {
            (Some(true), Some(old)) if old != master => {
                tracing::info!("nginx master is now {master} (was {old})")
            }
            (Some(true), _) => {}
            (Some(false), _) => tracing::info!("nginx is up again (master {master})"),
            (None, _) => tracing::info!("nginx is up (master {master}); watching it"),
        }
        self.up = Some(true);
        self.master = Some(master);
        self.failures = 0;
        self.held_down = false;
    }
}

async fn restart(daemon: &Daemon, seen: &mut Seen) {
    let since = Instant::now();
    let wst = daemon.worker_shutdown_timeout;
    let restarted = ManagedNginx::restart(&daemon.router, wst, StartBy::Supervisor).await;
    if !matches!(restarted, Ok(None)) {
        seen.held_down = false;
    }
    match restarted {
        // Stopped on purpose while this restart waited for the lock.
        Ok(None) => seen.stopped_on_purpose(),
        Ok(Some(r)) if r.adopted => {
            tracing::info!(
                "nginx was started meanwhile by someone else (master {})",
                r.master
            );
            seen.running(r.master);
        }
        Ok(Some(r)) => {
            let orphans = if r.orphans.is_empty() {
                String::new()
            } else {
                format!(
                    "; stopped the old master's orphaned workers {:?} first",
                    r.orphans
                )
            };
            tracing::info!(
                "nginx started in {} ms (master {}) on the last confirmed config{}{orphans}",
                since.elapsed().as_millis(),
                r.master,
                restored(&daemon.router),
            );
            seen.up = Some(true);
            seen.master = Some(r.master);
            seen.failures = 0;
        }
        Err(e) => {
            seen.failures += 1;
            // The first failure and then ever more rarely: the backoff caps at 5 s.
            if seen.failures.is_power_of_two() {
                tracing::error!("starting nginx failed (attempt {}): {e}", seen.failures);
            }
        }
    }
}

/// A router error without its `nginx: ` prefix (the sentences here name nginx already).
fn why(e: &RouterError) -> String {
    match e {
        RouterError::Unavailable(why) => why.clone(),
        other => other.to_string(),
    }
}

fn restored(router: &NginxRouter) -> &'static str {
    match router.routing() {
        Routing::Dynamic => ", routing restored from the state file",
        Routing::Reload => "",
    }
}

/// `switchyard_proxy_up`: 1 while the nginx master in the pid file runs, else 0.
pub(super) fn proxy_up(router: &NginxRouter) -> MetricFamily {
    let mut family = Family::gauge(
        "switchyard_proxy_up",
        "Whether the nginx master switchyard routes through is running (1) or not (0).",
    );
    family.value(&[], if router.master().is_ok() { 1.0 } else { 0.0 });
    family.into_inner()
}
