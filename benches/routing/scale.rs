//! The scale part: an [`NginxRouter`] driven directly with [`SERVICES`] services of [`PEERS`]
//! peers each on one managed nginx ([`scale`]). It times confirmed dynamic route changes,
//! structural reloads of the whole tree and the steps of one route change alone ([`Parts`]),
//! and prints them ([`print_scale`]). What it measured is a [`Scale`].

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use switchyard_engine::config::RoutingChoice;
use switchyard_engine::{Name, Router, UpstreamSet};
use switchyard_nginx::router::STATE_FILE;
use switchyard_nginx::routing::{self, StateFile};
use switchyard_nginx::templates::Upstream;
use switchyard_nginx::{procs, stage, Layout, ManagedNginx, NginxRouter, Templates};

use crate::common::{ms, print_metrics};

const SERVICES: usize = 100;
const PEERS: usize = 10;
const ROUTE_CHANGES: usize = 100;
const STRUCTURAL_RELOADS: usize = 7;
const SCALE_DRAIN: Duration = Duration::from_secs(10);
const PART_RUNS: usize = 30;

#[derive(Debug, Serialize)]
pub struct Scale {
    services: usize,
    peers: usize,
    /// The first apply of each service: a structural reload with one more service file.
    setup_ms: Vec<f64>,
    /// Confirmed dynamic route changes of one service.
    pub route_change_ms: Vec<f64>,
    /// nginx's config generation and workers before and after the route changes.
    generation_before: u64,
    generation_after: u64,
    workers_before: Vec<u32>,
    workers_after: Vec<u32>,
    /// One staged `nginx -t` of the whole tree, alone.
    nginx_t_ms: Vec<f64>,
    /// A listen change of one service: structural, so validated, reloaded and confirmed.
    pub structural_ms: Vec<f64>,
    /// After each: until the old workers had exited.
    structural_drain_ms: Vec<f64>,
    /// The parts of one route change, each timed alone afterwards.
    parts: Parts,
}

/// What a dynamic route change does, step by step, each timed alone [`PART_RUNS`] times on
/// the same tree (the lock and the bookkeeping between the steps are left out).
#[derive(Debug, Default, Serialize)]
struct Parts {
    /// Rendering the service's server block and the control file, to compare with disk.
    render_ms: Vec<f64>,
    /// Reading the routing state file of every service and writing it back (fsync, rename).
    state_file_ms: Vec<f64>,
    /// `GET /routes?service=` on a fresh connection: the live generation.
    routes_get_ms: Vec<f64>,
    /// `POST /routes` with one document, then reading the generation back: the change itself.
    post_confirm_ms: Vec<f64>,
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_addr() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}

fn nginx_binary() -> anyhow::Result<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("nginx not found in /usr/sbin or /usr/bin: run scripts/install-deps")
}

pub async fn scale() -> anyhow::Result<Scale> {
    let nginx = nginx_binary()?;
    let prefix = tempfile::Builder::new()
        .prefix("switchyard-bench-scale-")
        .tempdir()?;
    let router = NginxRouter::new(
        Layout::managed(&nginx, prefix.path()),
        free_addr()?,
        Templates::builtin(),
    )
    .with_routing(RoutingChoice::Dynamic);
    let managed = ManagedNginx::start(&router, SCALE_DRAIN)
        .await
        .map_err(|e| anyhow::anyhow!("starting nginx under {}: {e}", prefix.path().display()))?;
    let master = managed.master;
    let result = scale_on(&router, master).await;
    managed.stop().await;
    result
}

/// Service `i`'s peers in set `k % 2`: loopback ports nothing listens on.
fn peers(i: usize, k: usize) -> Vec<SocketAddr> {
    let base = if k.is_multiple_of(2) { 20_000 } else { 40_000 };
    (0..PEERS)
        .map(|j| SocketAddr::from(([127, 0, 0, 1], (base + i * PEERS + j) as u16)))
        .collect()
}

async fn scale_on(router: &NginxRouter, master: u32) -> anyhow::Result<Scale> {
    let mut sets = Vec::new();
    for i in 0..SERVICES {
        sets.push(UpstreamSet {
            service: Name::parse(&format!("svc-{i}")).map_err(anyhow::Error::msg)?,
            listen: free_addr()?,
            backends: peers(i, 0),
            canary: None,
        });
    }
    eprintln!("scale: applying {SERVICES} services of {PEERS} peers (one reload each)");
    let mut setup_ms = Vec::new();
    for set in &sets {
        let (took, _) = apply_drained(router, set).await?;
        setup_ms.push(took);
    }
    let generation_before = router.live_generation().await.map_err(anyhow::Error::msg)?;
    let workers_before = procs::workers(master);
    let mut route_change_ms = Vec::new();
    for k in 1..=ROUTE_CHANGES {
        let i = (k * 37) % SERVICES;
        let set = UpstreamSet {
            backends: peers(i, k),
            ..sets[i].clone()
        };
        let since = Instant::now();
        router.apply(&set).await?;
        route_change_ms.push(ms(since.elapsed()));
        sets[i] = set;
    }
    let generation_after = router.live_generation().await.map_err(anyhow::Error::msg)?;
    let workers_after = procs::workers(master);
    let mut nginx_t_ms = Vec::new();
    for _ in 0..STRUCTURAL_RELOADS {
        let since = Instant::now();
        stage::validate(&router.layout, &[], "the whole tree").await?;
        nginx_t_ms.push(ms(since.elapsed()));
    }
    let (structural_ms, structural_drain_ms) = structural(router, &sets[0]).await?;
    // Last: its posts move live generations past the state file's.
    let parts = parts(router, &sets[1]).await?;
    Ok(Scale {
        services: SERVICES,
        peers: PEERS,
        setup_ms,
        route_change_ms,
        generation_before,
        generation_after,
        workers_before,
        workers_after,
        nginx_t_ms,
        structural_ms,
        structural_drain_ms,
        parts,
    })
}

/// Times each step of a route change of `set`'s service alone; see [`Parts`].
async fn parts(router: &NginxRouter, set: &UpstreamSet) -> anyhow::Result<Parts> {
    let msg = anyhow::Error::msg;
    let state = StateFile {
        path: router.layout.conf_dir.join(STATE_FILE),
    };
    let (control, service) = (router.control, set.service.as_str());
    let mut parts = Parts::default();
    for _ in 0..PART_RUNS {
        let since = Instant::now();
        let layout = &router.layout;
        router
            .templates
            .dynamic_service(&set.service, &Default::default())
            .map_err(msg)?;
        router
            .templates
            .locations(
                &set.service,
                set.listen,
                &Default::default(),
                Upstream::Dynamic,
                &layout.access_log,
            )
            .map_err(msg)?;
        router.control_file(router.disk_generation()).map_err(msg)?;
        parts.render_ms.push(ms(since.elapsed()));
        let since = Instant::now();
        let docs = state.read().map_err(msg)?;
        state.write(&docs).map_err(msg)?;
        parts.state_file_ms.push(ms(since.elapsed()));
        let since = Instant::now();
        let live = routing::live_generation(control, service)
            .await
            .map_err(msg)?;
        parts.routes_get_ms.push(ms(since.elapsed()));
        let doc = docs
            .get(service)
            .context("no routing document")?
            .at(live + 1);
        let since = Instant::now();
        routing::post(control, &doc).await.map_err(msg)?;
        let now = routing::live_generation(control, service)
            .await
            .map_err(msg)?;
        parts.post_confirm_ms.push(ms(since.elapsed()));
        if now != live + 1 {
            bail!("posted generation {} of {service}, live is {now}", live + 1);
        }
    }
    Ok(parts)
}

/// Applies `set` and waits until it is drained: the apply's time and the drain's.
async fn apply_drained(router: &NginxRouter, set: &UpstreamSet) -> anyhow::Result<(f64, f64)> {
    let since = Instant::now();
    let reload = router.apply(set).await?;
    let took = ms(since.elapsed());
    let since = Instant::now();
    let drained = router.wait_drained(&reload, SCALE_DRAIN).await?;
    if let Some(left) = drained.lingering {
        bail!("{}: {left} after {SCALE_DRAIN:?}", set.service);
    }
    Ok((took, ms(since.elapsed())))
}

/// Moves the first service between two listen addresses: each move changes its server
/// block, so the router validates the tree of every service file, reloads and confirms.
async fn structural(
    router: &NginxRouter,
    first: &UpstreamSet,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let listens = [free_addr()?, first.listen];
    let (mut took, mut drained) = (Vec::new(), Vec::new());
    for k in 0..STRUCTURAL_RELOADS {
        let set = UpstreamSet {
            listen: listens[k % 2],
            ..first.clone()
        };
        let before = router.live_generation().await.map_err(anyhow::Error::msg)?;
        let (t, d) = apply_drained(router, &set).await?;
        let after = router.live_generation().await.map_err(anyhow::Error::msg)?;
        if after != before + 1 {
            bail!("a listen change of {} moved nginx from generation {before} to {after}, not one reload", set.service);
        }
        took.push(t);
        drained.push(d);
    }
    Ok((took, drained))
}

pub fn print_scale(s: &Scale) {
    println!(
        "{} services × {} peers on one managed nginx (dynamic router); nginx generation {} → {} \
         and workers {:?} → {:?} across the route changes\n",
        s.services,
        s.peers,
        s.generation_before,
        s.generation_after,
        s.workers_before,
        s.workers_after
    );
    print_metrics(
        62,
        &[
            (
                "one dynamic route change (apply, confirmed), ms",
                s.route_change_ms.clone(),
            ),
            (
                "structural reload, 100 service files (apply: nginx -t, reload, confirm), ms",
                s.structural_ms.clone(),
            ),
            (
                "· then old workers exited, ms",
                s.structural_drain_ms.clone(),
            ),
            (
                "one staged nginx -t of the tree alone, ms",
                s.nginx_t_ms.clone(),
            ),
            (
                "setup: first apply of service k (structural), ms",
                s.setup_ms.clone(),
            ),
        ],
    );
    println!(
        "({} route changes, {} structural reloads, {} setup applies)\n",
        s.route_change_ms.len(),
        s.structural_ms.len(),
        s.setup_ms.len()
    );
    println!("The steps of one route change, each timed alone {PART_RUNS} times:\n");
    let p = &s.parts;
    print_metrics(
        62,
        &[
            (
                "render the server block and the control file, ms",
                p.render_ms.clone(),
            ),
            (
                "read + write the state file (100 documents), ms",
                p.state_file_ms.clone(),
            ),
            (
                "GET /routes (live generation, fresh connection), ms",
                p.routes_get_ms.clone(),
            ),
            ("POST /routes + read back, ms", p.post_confirm_ms.clone()),
        ],
    );
}
