//! [`NginxRouter`]: the engine's `Router` over a real nginx, in one of two [`Routing`]s.
//!
//! Reload routing (`router/reload.rs`) is the cutover protocol's steps 3 and 4: render,
//! validate a staged copy of the whole tree, rename into place, signal the master, and poll
//! the control server on fresh connections until the new generation answers. If the reload
//! is not confirmed the previous files are put back, so the files on disk always describe
//! what nginx serves. Its drain waits for the old workers to exit.
//!
//! Dynamic routing (`router/dynamic.rs`, see [`crate::routing`]) writes the service's routing
//! document to the state file and posts it to the control server, then reads the live
//! generation back on a fresh connection; nginx is reloaded only when a file changes (the
//! first deploy of a service, a changed listen). Its drain waits until no peer outside the
//! new routing has a request in flight.
//!
//! One apply at a time, across processes (an advisory lock on `conf_dir/.switchyard.lock`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use switchyard_engine::config::{FrontSpec, RoutingChoice};
use switchyard_engine::{
    ConfigDiff, DrainHandle, Drained, Name, Reload, Router, RouterError, UpstreamSet,
};

use crate::routing::{self, DrainToken, Routing, StateFile};
use crate::sites::{self, Claim};
use crate::stage::{self, Layout};
use crate::templates::{ControlRouting, Templates, Upstream};
use crate::{control, procs};

pub const CONTROL_FILE: &str = "_control.conf";
/// The routing state file in `conf_dir` (no include pattern matches it).
pub const STATE_FILE: &str = "routing.json";
const LOCK_FILE: &str = ".switchyard.lock";
const POLL: Duration = Duration::from_millis(10);
/// How often a dynamic drain reads the in-flight counts.
const PEER_POLL: Duration = Duration::from_millis(5);
/// How long exiting workers keep an idle keep-alive connection on a reload (nginx ≥ 1.27.4).
const KEEPALIVE_MIN_TIMEOUT: Duration = Duration::from_secs(2);

pub struct NginxRouter {
    pub layout: Layout,
    pub control: SocketAddr,
    pub templates: Templates,
    /// How long a reload may take to become live.
    pub confirm_timeout: Duration,
    /// What `[proxy] routing` asked for; [`NginxRouter::routing`] resolves `auto` once.
    pub choice: RoutingChoice,
    /// Each service's front door (hosts, path, TLS, limits) from the config; a service not
    /// named here answers any host under `/` with the defaults.
    pub fronts: BTreeMap<String, FrontSpec>,
    resolved: OnceLock<(Routing, String)>,
    version: OnceLock<Option<(u32, u32, u32)>>,
    /// Whether an apply has rendered the sites yet (see `front_files`).
    sites_checked: AtomicBool,
}

impl NginxRouter {
    /// A reload router; [`NginxRouter::with_routing`] chooses another.
    pub fn new(layout: Layout, control: SocketAddr, templates: Templates) -> NginxRouter {
        NginxRouter {
            layout,
            control,
            templates,
            confirm_timeout: Duration::from_secs(10),
            choice: RoutingChoice::Reload,
            fronts: BTreeMap::new(),
            resolved: OnceLock::new(),
            version: OnceLock::new(),
            sites_checked: AtomicBool::new(false),
        }
    }

    /// The front door of each service, by name.
    pub fn with_fronts(mut self, fronts: BTreeMap<String, FrontSpec>) -> NginxRouter {
        self.fronts = fronts;
        self
    }

    fn front(&self, service: &Name) -> FrontSpec {
        self.fronts
            .get(service.as_str())
            .cloned()
            .unwrap_or_default()
    }

    pub fn with_routing(mut self, choice: RoutingChoice) -> NginxRouter {
        self.choice = choice;
        self.resolved = OnceLock::new();
        self
    }

    /// The routing in use: `auto` becomes `dynamic` when nginx can load its Lua module
    /// (checked once, with `nginx -t`), else `reload`.
    pub fn routing(&self) -> Routing {
        self.resolve().0
    }

    /// The routing in use and why, for `validate`, `status` and the deploy output.
    pub fn routing_note(&self) -> String {
        let (routing, why) = self.resolve();
        format!("{} ({why})", routing.as_str())
    }

    fn resolve(&self) -> &(Routing, String) {
        self.resolved.get_or_init(|| match self.choice {
            RoutingChoice::Reload => (Routing::Reload, "proxy.routing = \"reload\"".into()),
            RoutingChoice::Dynamic => (Routing::Dynamic, "proxy.routing = \"dynamic\"".into()),
            RoutingChoice::Auto => {
                let probe = self
                    .dynamic_control_file(self.disk_generation())
                    .and_then(|text| routing::detect(&self.layout, &text));
                match probe {
                    Ok(()) => (Routing::Dynamic, "auto: nginx loads its Lua module".into()),
                    Err(why) => (
                        Routing::Reload,
                        format!(
                            "auto: nginx cannot load its Lua module (install libnginx-mod-http-lua and lua-cjson): {}",
                            why.lines().next().unwrap_or_default()
                        ),
                    ),
                }
            }
        })
    }

    /// Whether a service file in `conf_dir` takes its peers from the Lua balancer.
    fn dynamic_services_on_disk(&self) -> bool {
        let Ok(entries) = std::fs::read_dir(&self.layout.conf_dir) else {
            return false;
        };
        entries.filter_map(Result::ok).any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.ends_with(".conf")
                && name != CONTROL_FILE
                && std::fs::read_to_string(e.path())
                    .is_ok_and(|text| text.contains("switchyard_routing"))
        })
    }

    /// This nginx's version (`nginx -v`), asked once.
    fn nginx_version(&self) -> Option<(u32, u32, u32)> {
        *self.version.get_or_init(|| {
            let output = std::process::Command::new(&self.layout.nginx)
                .arg("-v")
                .output()
                .ok()?;
            procs::nginx_version(&String::from_utf8_lossy(&output.stderr))
        })
    }

    /// Whether this nginx knows `keepalive_min_timeout` (1.27.4 and later).
    fn has_keepalive_min_timeout(&self) -> bool {
        self.nginx_version().is_some_and(|v| v >= (1, 27, 4))
    }

    /// The files an apply of `set` writes, each only if it differs from the one on disk (None
    /// removes one): the service file (its claim, then `upstreams`), its locations proxying to
    /// `upstream`, and every site the claims need, with the stale ones removed.
    fn front_files(
        &self,
        set: &UpstreamSet,
        upstreams: String,
        upstream: Upstream,
    ) -> Result<Vec<(String, Option<String>)>, RouterError> {
        let unavailable = RouterError::Unavailable;
        let service = &set.service;
        let front = self.front(service);
        let claim = Claim::new(service.as_str(), set.listen, &front);
        let locations = self
            .templates
            .locations(
                service,
                set.listen,
                &front,
                upstream,
                &self.layout.access_log,
            )
            .map_err(unavailable)?;
        let mut files = self.changed(vec![
            (
                format!("{service}.conf"),
                Some(format!("{}{upstreams}", claim.line())),
            ),
            (format!("{service}.locations"), Some(locations)),
        ]);
        // The sites on disk always serve the claims on disk: only a change to this
        // service's files can change them, or another switchyard's rendering of the same
        // claims (new templates, another nginx version), checked on this router's first
        // apply. A route change reads no other file.
        let first = !self.sites_checked.swap(true, Ordering::Relaxed);
        if !files.is_empty() || first {
            let mut claims = sites::claims_on_disk(&self.layout.conf_dir);
            claims.insert(service.to_string(), claim);
            let listens: Vec<SocketAddr> = claims.values().map(|c| c.listen).collect();
            let legacy = sites::legacy_listens(&self.layout.conf_dir);
            if let Some((old, listen)) = legacy
                .iter()
                .find(|(old, l)| old != service.as_str() && listens.contains(l))
            {
                return Err(RouterError::Unavailable(format!(
                    "{old}.conf was written by an older switchyard and holds its own server on {listen}, which {service} now shares: deploy {old} first (any version) so it is rewritten, then {service}"
                )));
            }
            files.extend(self.changed(self.site_files(&claims)?));
        }
        Ok(files)
    }

    /// Every site file `claims` need, and None for each site file on disk they do not.
    fn site_files(
        &self,
        claims: &BTreeMap<String, Claim>,
    ) -> Result<Vec<(String, Option<String>)>, RouterError> {
        let include_dir = self
            .layout
            .conf_dir
            .strip_prefix(
                self.layout
                    .main_conf
                    .parent()
                    .unwrap_or(std::path::Path::new("/")),
            )
            .unwrap_or(&self.layout.conf_dir)
            .display()
            .to_string();
        let http2_directive = self.nginx_version().is_some_and(|v| v >= (1, 25, 1));
        let planned = sites::plan(claims, &include_dir).map_err(RouterError::Unavailable)?;
        let mut files = Vec::new();
        for (name, site) in &planned {
            let text = self
                .templates
                .site(site, http2_directive)
                .map_err(RouterError::Unavailable)?;
            files.push((name.clone(), Some(text)));
        }
        for stale in sites::sites_on_disk(&self.layout.conf_dir) {
            if !planned.contains_key(&stale) {
                files.push((stale, None));
            }
        }
        Ok(files)
    }

    /// `files` without those already on disk as they are.
    fn changed(&self, files: Vec<(String, Option<String>)>) -> Vec<(String, Option<String>)> {
        files
            .into_iter()
            .filter(|(name, text)| {
                std::fs::read_to_string(self.layout.conf_dir.join(name)).ok() != *text
            })
            .collect()
    }

    fn state_file(&self) -> StateFile {
        StateFile {
            path: self.layout.conf_dir.join(STATE_FILE),
        }
    }

    fn dynamic_control_file(&self, generation: u64) -> Result<String, String> {
        let state = self.layout.conf_dir.join(STATE_FILE);
        self.templates.control(
            self.control,
            generation,
            ControlRouting::Dynamic { state_file: &state },
        )
    }

    /// The control file for the routing in use. Reload routing keeps the dynamic one while a
    /// service file on disk still routes dynamically: that service goes on working until its
    /// next deploy renders it for reloads.
    pub fn control_file(&self, generation: u64) -> Result<String, String> {
        match self.routing() {
            Routing::Dynamic => self.dynamic_control_file(generation),
            Routing::Reload if self.dynamic_services_on_disk() => {
                self.dynamic_control_file(generation)
            }
            Routing::Reload => self.templates.control(
                self.control,
                generation,
                ControlRouting::Reload {
                    keepalive_min_timeout: self
                        .has_keepalive_min_timeout()
                        .then_some(KEEPALIVE_MIN_TIMEOUT),
                },
            ),
        }
    }

    fn service_file(&self, service: &str) -> PathBuf {
        self.layout.conf_dir.join(format!("{service}.conf"))
    }

    /// The generation the control file on disk names (0 before the first apply).
    pub fn disk_generation(&self) -> u64 {
        let text =
            std::fs::read_to_string(self.layout.conf_dir.join(CONTROL_FILE)).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("# generation ")?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The generation nginx answers with now.
    pub async fn live_generation(&self) -> Result<u64, String> {
        control::generation(self.control, Duration::from_secs(2)).await
    }

    /// Puts the files from before a failed apply back, under a new generation (a number is
    /// never reused: the failed one may have gone live), reloads, confirms, and waits for the
    /// workers that may still proxy to the failed apply's backends.
    async fn restore(
        &self,
        previous: Vec<(String, Option<String>)>,
        generation: u64,
        master: u32,
    ) -> Result<(), String> {
        let control = self.control_file(generation)?;
        let files: Vec<(String, Option<String>)> = previous
            .into_iter()
            .map(|(name, text)| {
                if name == CONTROL_FILE {
                    (name, Some(control.clone()))
                } else {
                    (name, text)
                }
            })
            .collect();
        stage::install(&self.layout.conf_dir, &files)
            .map_err(|e| format!("writing {}: {e}", self.layout.conf_dir.display()))?;
        let before = procs::workers(master);
        let since = Instant::now();
        kill(Pid::from_raw(master as i32), Signal::SIGHUP)
            .map_err(|e| format!("signalling nginx master {master}: {e}"))?;
        self.confirm(generation, master, &before, since).await?;
        let reload = Reload {
            generation,
            drain: DrainHandle::new(&before),
            confirm_ms: 0,
        };
        self.wait_drained(&reload, self.confirm_timeout)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    pub fn master(&self) -> Result<u32, RouterError> {
        let pid = procs::read_pid(&self.layout.pid_file)
            .filter(|&p| procs::is_nginx_master(p))
            .ok_or_else(|| {
                RouterError::Unavailable(format!(
                    "nginx is not running (no live pid in {})",
                    self.layout.pid_file.display()
                ))
            })?;
        Ok(pid)
    }

    /// Reload routing's files for `set`: the service's, the sites', and the control file
    /// under `generation`.
    fn render(
        &self,
        set: &UpstreamSet,
        generation: u64,
    ) -> Result<Vec<(String, Option<String>)>, RouterError> {
        let upstreams = self
            .templates
            .service(set, &self.front(&set.service))
            .map_err(RouterError::Unavailable)?;
        let upstream = if set.canary.is_some() {
            Upstream::Split
        } else {
            Upstream::Stable
        };
        let mut files = self.front_files(set, upstreams, upstream)?;
        let control = self
            .control_file(generation)
            .map_err(RouterError::Unavailable)?;
        files.push((CONTROL_FILE.to_owned(), Some(control)));
        Ok(files)
    }

    /// Waits until the new generation answers on a fresh connection *and* no old worker
    /// still accepts: the master starts the new workers, sleeps 100 ms, and only then tells
    /// the old ones to stop, so until each old worker has exited or retitled itself
    /// "shutting down" a new connection can still land on the old config.
    async fn confirm(
        &self,
        generation: u64,
        master: u32,
        old_workers: &[u32],
        since: Instant,
    ) -> Result<u64, String> {
        let mut last = String::new();
        let mut live = false;
        while since.elapsed() < self.confirm_timeout {
            if !live {
                match control::generation(self.control, Duration::from_secs(1)).await {
                    Ok(g) if g == generation => live = true,
                    Ok(g) => last = format!("still generation {g}"),
                    Err(e) => last = e,
                }
            }
            if live {
                let accepting: Vec<u32> = old_workers
                    .iter()
                    .copied()
                    .filter(|&p| procs::accepting(master, p))
                    .collect();
                if accepting.is_empty() {
                    return Ok(since.elapsed().as_millis() as u64);
                }
                last = format!("old workers {accepting:?} still accepting");
            }
            tokio::time::sleep(POLL).await;
        }
        Err(format!(
            "generation {generation} not live after {:?} ({last}); {}",
            self.confirm_timeout,
            self.error_log_tail()
        ))
    }

    fn error_log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.layout.error_log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(5).collect();
        let tail: Vec<&str> = lines.into_iter().rev().collect();
        format!(
            "last lines of {}:\n{}",
            self.layout.error_log.display(),
            tail.join("\n")
        )
    }

    async fn lock(&self) -> Result<std::fs::File, RouterError> {
        let path = self.layout.conf_dir.join(LOCK_FILE);
        let open = move || -> std::io::Result<std::fs::File> {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            f.lock()?;
            Ok(f)
        };
        tokio::task::spawn_blocking(open)
            .await
            .map_err(|e| RouterError::Unavailable(e.to_string()))?
            .map_err(|e| {
                RouterError::Unavailable(format!("locking {}: {e}", self.layout.conf_dir.display()))
            })
    }
}

/// What a route change's drain handle names (a bare list of workers from older routers).
pub fn drain_token(handle: &DrainHandle) -> DrainToken {
    handle
        .token::<DrainToken>()
        .or_else(|| {
            handle.token::<Vec<u32>>().map(|workers| DrainToken {
                workers,
                ..DrainToken::default()
            })
        })
        .unwrap_or_default()
}

/// The nginx worker PIDs a reload's drain handle names: the workers of the config before it.
pub fn old_workers(reload: &Reload) -> Vec<u32> {
    drain_token(&reload.drain).workers
}

impl Router for NginxRouter {
    async fn apply(&self, set: &UpstreamSet) -> Result<Reload, RouterError> {
        match self.routing() {
            Routing::Reload => self.apply_reload(set).await,
            Routing::Dynamic => self.apply_dynamic(set).await,
        }
    }

    async fn wait_drained(
        &self,
        reload: &Reload,
        timeout: Duration,
    ) -> Result<Drained, RouterError> {
        let token = drain_token(&reload.drain);
        let since = Instant::now();
        let master = if token.workers.is_empty() {
            None
        } else {
            Some(self.master()?)
        };
        loop {
            let mut lingering = Vec::new();
            if let Some(master) = master {
                let workers = self.lingering_workers(master, &token.workers);
                if !workers.is_empty() {
                    lingering.push(format!("old nginx workers {workers:?} still running"));
                }
            }
            if let Some(service) = &token.service {
                if let Some(busy) = self.busy_peers(service, &token.serving).await {
                    lingering.push(busy);
                }
            }
            if lingering.is_empty() || since.elapsed() >= timeout {
                return Ok(Drained {
                    waited_ms: since.elapsed().as_millis() as u64,
                    lingering: (!lingering.is_empty()).then(|| lingering.join("; ")),
                });
            }
            let poll = if token.service.is_some() {
                PEER_POLL
            } else {
                POLL
            };
            tokio::time::sleep(poll).await;
        }
    }

    async fn remove(&self, service: &Name) -> Result<Reload, RouterError> {
        self.remove_service(service).await
    }

    fn preview(&self, set: &UpstreamSet) -> Result<ConfigDiff, RouterError> {
        if self.routing() == Routing::Dynamic {
            return self.preview_dynamic(set);
        }
        let path = self.service_file(set.service.as_str());
        let front = self.front(&set.service);
        let claim = Claim::new(set.service.as_str(), set.listen, &front);
        let upstreams = self
            .templates
            .service(set, &front)
            .map_err(RouterError::Unavailable)?;
        Ok(ConfigDiff {
            path: path.display().to_string(),
            old: std::fs::read_to_string(&path).unwrap_or_default(),
            new: format!("{}{upstreams}", claim.line()),
        })
    }
}

mod dynamic;
mod reload;
