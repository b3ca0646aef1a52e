//! `switchyard proxy start|stop|status`: the managed nginx without `serve`. `start` starts it
//! if it is down (detached: it outlives the command), from the files on disk, which are the
//! last confirmed config; `stop` stops it gracefully (SIGQUIT, then SIGTERM) and waits for it
//! to exit; `status` says whether it runs (exit 3 when it does not), the routing in use, and
//! whether each deployed service's listen answers. A system nginx belongs to systemd: `start`
//! and `stop` refuse (exit 2), `status` works.

use serde::Serialize;
use switchyard_app::live::Live;
use switchyard_app::serve::{self, probe_listen, ListenReport, ProxyState};
use switchyard_app::AppError;
use switchyard_engine::{ServiceSpec, Store};

use super::{json, open_lazy};
use crate::Cli;

#[derive(clap::Subcommand)]
pub enum ProxyCommand {
    /// Start the managed nginx if it is not running (it keeps running after the command).
    Start,
    /// Stop the managed nginx gracefully and wait for it to exit.
    Stop,
    /// Whether nginx runs, the routing in use, and whether each service's listen answers.
    Status,
}

#[derive(Serialize)]
struct ProxyStatus {
    proxy: ProxyState,
    routing_note: String,
    services: Vec<ServiceListen>,
}

#[derive(Serialize)]
struct ServiceListen {
    service: String,
    listen: String,
    /// None while nothing is deployed (nginx has no server for it yet).
    listen_check: Option<ListenReport>,
}

pub async fn run(cli: &Cli, command: &ProxyCommand) -> Result<(), AppError> {
    let live = open_lazy(cli)?;
    match command {
        ProxyCommand::Start => start(cli, &live).await,
        ProxyCommand::Stop => stop(cli, &live).await,
        ProxyCommand::Status => status(cli, &live).await,
    }
}

/// What `proxy start` and `proxy stop` did, for `--output json`.
#[derive(Serialize)]
struct Action {
    /// `started`, `already running`, `stopped` or `not running`.
    nginx: &'static str,
    master: Option<u32>,
    /// The orphaned workers of a killed master, stopped before the start.
    orphans: Vec<u32>,
}

async fn start(cli: &Cli, live: &Live) -> Result<(), AppError> {
    let r = serve::start_nginx(live).await?;
    let action = Action {
        nginx: if r.adopted {
            "already running"
        } else {
            "started"
        },
        master: Some(r.master),
        orphans: r.orphans.clone(),
    };
    if json(cli, &action) {
        return Ok(());
    }
    if r.adopted {
        println!("nginx is already running (master {})", r.master);
        return Ok(());
    }
    if !r.orphans.is_empty() {
        println!(
            "stopped the orphaned workers {:?} of a killed master",
            r.orphans
        );
    }
    println!(
        "nginx started (master {}) on the last confirmed config, {} routing",
        r.master,
        live.router.routing().as_str()
    );
    Ok(())
}

async fn stop(cli: &Cli, live: &Live) -> Result<(), AppError> {
    let master = serve::stop_nginx(live).await?;
    let action = Action {
        nginx: if master.is_some() {
            "stopped"
        } else {
            "not running"
        },
        master,
        orphans: Vec::new(),
    };
    if json(cli, &action) {
        return Ok(());
    }
    match master {
        Some(master) => println!("nginx stopped (master {master})"),
        None => println!("nginx was not running"),
    }
    Ok(())
}

async fn status(cli: &Cli, live: &Live) -> Result<(), AppError> {
    let proxy = ProxyState::read(&live.router, &live.config.proxy.mode);
    let mut services = Vec::new();
    for spec in &live.config.services {
        services.push(ServiceListen {
            service: spec.name.to_string(),
            listen: spec.listen.to_string(),
            listen_check: listen_report(live, spec, &proxy).await?,
        });
    }
    let report = ProxyStatus {
        routing_note: live.router.routing_note(),
        proxy,
        services,
    };
    if !json(cli, &report) {
        println!("{}", report.proxy.line());
        println!("routing: {}", report.routing_note);
        for s in &report.services {
            match &s.listen_check {
                Some(check) => println!("{}  {}", s.service, check.sentence),
                None => println!("{}  listen {}: nothing deployed yet", s.service, s.listen),
            }
        }
    }
    if report.proxy.up {
        Ok(())
    } else {
        Err(AppError::environment(format!(
            "nginx is down: {}",
            report.proxy.detail
        )))
    }
}

/// Whether `spec`'s listen answers, once something is deployed.
pub(super) async fn listen_report(
    live: &Live,
    spec: &ServiceSpec,
    proxy: &ProxyState,
) -> Result<Option<ListenReport>, AppError> {
    let record = live
        .store
        .service(&spec.name)
        .map_err(|e| AppError::environment(e.to_string()))?;
    if record.active.is_none() {
        return Ok(None);
    }
    let check = probe_listen(spec.listen, &spec.health.path).await;
    Ok(Some(ListenReport {
        sentence: check.sentence(proxy),
        check,
    }))
}
