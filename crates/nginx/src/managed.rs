//! An nginx that switchyard runs itself, with its own prefix: [`ManagedNginx`].
//!
//! Tests, benchmarks and the demo each start one on free loopback ports; a host without a
//! system nginx can use it too. The main config comes from `templates/nginx.conf.tera`
//! (with `worker_shutdown_timeout` set); the control server answers generation 0 until the
//! first deploy. Dropping a [`ManagedNginx`] that was started (not adopted) stops it.
//!
//! Supervision (`switchyard serve`, `switchyard proxy`): [`ManagedNginx::restart`] starts it
//! again after a crash, under the router's apply lock and after stopping the orphaned workers
//! of a killed master ([`reap_orphans`]); [`stop_running`] stops it gracefully;
//! [`reopen_logs`] asks the master to reopen its logs after a rotation.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use switchyard_engine::RouterError;

use crate::router::{NginxRouter, CONTROL_FILE};
use crate::routing::Routing;
use crate::stage::{install, Layout};
use crate::{control, procs};

/// The router's advisory apply lock in `conf_dir` (`router.rs`): a restart or a stop takes
/// it too, so it never runs in the middle of an apply.
const LOCK_FILE: &str = ".switchyard.lock";
/// Left by [`stop_running`]: a supervisor does not start this nginx again.
const HELD_DOWN_FILE: &str = ".stopped";
/// How long the orphans of a killed master get to close their listening sockets after
/// SIGQUIT before they are killed.
const ORPHAN_GRACE: Duration = Duration::from_secs(2);

/// How long a starting nginx may take to write its pid and answer its control endpoint: generous,
/// since a loaded 2-core machine starting several at once is slow, and a healthy start is fast.
const STARTUP: Duration = Duration::from_secs(20);

pub struct ManagedNginx {
    pub master: u32,
    /// Whether this handle started nginx (and so stops it on drop).
    owned: bool,
}

impl ManagedNginx {
    /// Writes the main config and starts nginx under `router.layout.prefix`, or adopts the
    /// one already running there.
    pub async fn start(
        router: &NginxRouter,
        worker_shutdown_timeout: Duration,
    ) -> Result<ManagedNginx, RouterError> {
        let layout = &router.layout;
        let prefix = layout
            .prefix
            .as_deref()
            .ok_or_else(|| RouterError::Unavailable("a managed nginx needs a prefix".into()))?;
        let io = |what: &str, e: std::io::Error| {
            RouterError::Unavailable(format!("{what} under {}: {e}", prefix.display()))
        };
        for dir in ["logs", "tmp"] {
            std::fs::create_dir_all(prefix.join(dir)).map_err(|e| io("creating directories", e))?;
        }
        std::fs::create_dir_all(&layout.conf_dir).map_err(|e| io("creating directories", e))?;
        let lua = router.routing() == Routing::Dynamic;
        let main = router
            .templates
            .main_conf(prefix, worker_shutdown_timeout, lua)
            .map_err(RouterError::Unavailable)?;
        let conf_root = layout.main_conf.parent().unwrap_or(Path::new("/"));
        if let Some(master) =
            procs::read_pid(&layout.pid_file).filter(|&p| procs::is_nginx_master(p))
        {
            // A running nginx reads the main config at its next reload: the first apply in
            // another routing reloads (its control file changes) and loads the modules then.
            if std::fs::read_to_string(&layout.main_conf).ok().as_deref() != Some(main.as_str()) {
                install(conf_root, &[("nginx.conf".to_owned(), Some(main))])
                    .map_err(|e| io("writing nginx.conf", e))?;
            }
            return Ok(ManagedNginx {
                master,
                owned: false,
            });
        }
        // Written afresh for the routing in use: a tree left by an earlier run may have
        // been rendered for the other one.
        let generation = router.disk_generation();
        let text = router
            .control_file(generation)
            .map_err(RouterError::Unavailable)?;
        install(&layout.conf_dir, &[(CONTROL_FILE.to_owned(), Some(text))])
            .map_err(|e| io("writing the control file", e))?;
        install(conf_root, &[("nginx.conf".to_owned(), Some(main))])
            .map_err(|e| io("writing nginx.conf", e))?;

        let output = layout
            .command(&["-c".as_ref(), layout.main_conf.as_os_str()])
            .output()
            .await
            .map_err(|e| {
                RouterError::Unavailable(format!("running {}: {e}", layout.nginx.display()))
            })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(RouterError::Unavailable(format!(
                "starting nginx failed: {}",
                stderr.trim()
            )));
        }
        let master = wait_for_pid(&layout.pid_file).await?;
        let nginx = ManagedNginx {
            master,
            owned: true,
        };
        wait_for_generation(router.control, generation).await?;
        // Started (by a deploy, say): no longer held down by an earlier `proxy stop`.
        let _ = std::fs::remove_file(held_down_file(layout));
        Ok(nginx)
    }

    /// Starts nginx again when its master is gone, holding the apply lock: the orphaned
    /// workers of a killed master are stopped first (they hold the listening sockets), then
    /// nginx starts from the files on disk, which are always the last confirmed config (and,
    /// with dynamic routing, `init_by_lua` restores the routing from the state file). A
    /// master that someone else started meanwhile is adopted. nginx is left running.
    ///
    /// An nginx stopped with [`stop_running`] stays down for a [`StartBy::Supervisor`]
    /// (`None`) until a [`StartBy::Operator`] starts it.
    pub async fn restart(
        router: &NginxRouter,
        worker_shutdown_timeout: Duration,
        by: StartBy,
    ) -> Result<Option<Restarted>, RouterError> {
        let _lock = apply_lock(&router.layout.conf_dir).await?;
        let held = held_down_file(&router.layout);
        match by {
            StartBy::Supervisor if held.exists() => return Ok(None),
            StartBy::Supervisor => {}
            StartBy::Operator => match std::fs::remove_file(&held) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(RouterError::Unavailable(format!(
                        "removing {}: {e}",
                        held.display()
                    )))
                }
                _ => {}
            },
        }
        if let Ok(master) = router.master() {
            return Ok(Some(Restarted {
                master,
                adopted: true,
                orphans: Vec::new(),
            }));
        }
        let orphans = reap_orphans(router.control).await;
        let nginx = ManagedNginx::start(router, worker_shutdown_timeout).await?;
        let master = nginx.master;
        nginx.detach();
        Ok(Some(Restarted {
            master,
            adopted: false,
            orphans,
        }))
    }

    /// Whether nginx was stopped on purpose ([`stop_running`]) and not started since.
    pub fn held_down(layout: &Layout) -> bool {
        held_down_file(layout).exists()
    }

    /// A handle that owns the master running under the router's prefix now (whoever started
    /// it), so dropping it stops that nginx: for a test whose nginx was restarted by `serve`.
    pub fn take_over(router: &NginxRouter) -> Option<ManagedNginx> {
        router.layout.prefix.as_ref()?;
        let master = router.master().ok()?;
        Some(ManagedNginx {
            master,
            owned: true,
        })
    }

    /// Leaves nginx running when this handle is dropped (the CLI starts it for later runs).
    pub fn detach(mut self) {
        self.owned = false;
    }

    /// Fast shutdown (SIGTERM), waiting for the master to exit.
    pub async fn stop(mut self) {
        self.terminate();
        let since = Instant::now();
        while procs::alive(self.master) && since.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn terminate(&mut self) {
        if self.owned {
            let _ = kill(Pid::from_raw(self.master as i32), Signal::SIGTERM);
            self.owned = false;
        }
    }
}

impl Drop for ManagedNginx {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Who asks [`ManagedNginx::restart`]: a supervisor leaves an nginx that was stopped on
/// purpose alone; an operator (`switchyard proxy start`) starts it regardless.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartBy {
    Supervisor,
    Operator,
}

/// The marker [`stop_running`] leaves in `conf_dir` (no include pattern matches it).
fn held_down_file(layout: &Layout) -> std::path::PathBuf {
    layout.conf_dir.join(HELD_DOWN_FILE)
}

/// What [`ManagedNginx::restart`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restarted {
    pub master: u32,
    /// A master was already running (started by someone else meanwhile).
    pub adopted: bool,
    /// The orphaned workers of the dead master that were stopped first.
    pub orphans: Vec<u32>,
}

/// Takes the router's apply lock on `conf_dir` (created if missing), waiting for an apply
/// in progress; released when the file is dropped.
pub async fn apply_lock(conf_dir: &Path) -> Result<std::fs::File, RouterError> {
    let dir = conf_dir.to_owned();
    let open = move || -> std::io::Result<std::fs::File> {
        std::fs::create_dir_all(&dir)?;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))?;
        f.lock()?;
        Ok(f)
    };
    tokio::task::spawn_blocking(open)
        .await
        .map_err(|e| RouterError::Unavailable(e.to_string()))?
        .map_err(|e| RouterError::Unavailable(format!("locking {}: {e}", conf_dir.display())))
}

/// Stops the orphaned nginx workers still listening on `control` (the address only this
/// nginx listens on) once their master is gone: SIGQUIT, so they close their listening
/// sockets at once and finish the requests they hold, then SIGKILL for any still there after
/// [`ORPHAN_GRACE`]. A master, and the workers of a live master (an nginx someone else is
/// starting right now), are not orphans and are left alone. Returns the pids it stopped.
pub async fn reap_orphans(control: SocketAddr) -> Vec<u32> {
    let find = move || {
        procs::listen_holders(control)
            .into_iter()
            .filter(|&pid| procs::is_orphaned_worker(pid))
            .collect::<Vec<u32>>()
    };
    let orphans = tokio::task::spawn_blocking(find).await.unwrap_or_default();
    if orphans.is_empty() {
        return orphans;
    }
    signal_all(&orphans, Signal::SIGQUIT);
    let since = Instant::now();
    loop {
        let holding: Vec<u32> = orphans
            .iter()
            .copied()
            .filter(|&p| procs::running(p) && procs::listen_holders(control).contains(&p))
            .collect();
        if holding.is_empty() {
            break;
        }
        if since.elapsed() >= ORPHAN_GRACE {
            signal_all(&holding, Signal::SIGKILL);
            wait_gone(&holding, Duration::from_secs(2)).await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    orphans
}

/// Stops the nginx whose master is in the router's pid file, under the apply lock: SIGQUIT
/// (graceful: requests in flight finish), SIGTERM after `grace`, SIGKILL (with its workers)
/// 5 s later; waits for the master to exit. Returns its pid, or `None` if none was running.
/// Either way it stays down: a supervisor does not start it again (see [`StartBy`]).
pub async fn stop_running(
    router: &NginxRouter,
    grace: Duration,
) -> Result<Option<u32>, RouterError> {
    let _lock = apply_lock(&router.layout.conf_dir).await?;
    let held = held_down_file(&router.layout);
    std::fs::write(&held, "stopped by `switchyard proxy stop`\n")
        .map_err(|e| RouterError::Unavailable(format!("writing {}: {e}", held.display())))?;
    let Ok(master) = router.master() else {
        return Ok(None);
    };
    let workers = procs::workers(master);
    for (signal, wait) in [
        (Signal::SIGQUIT, grace),
        (Signal::SIGTERM, Duration::from_secs(5)),
    ] {
        signal_all(&[master], signal);
        if wait_gone(&[master], wait).await {
            return Ok(Some(master));
        }
    }
    signal_all(&[master], Signal::SIGKILL);
    signal_all(&workers, Signal::SIGKILL);
    if wait_gone(&[master], Duration::from_secs(2)).await {
        return Ok(Some(master));
    }
    Err(RouterError::Unavailable(format!(
        "nginx master {master} did not exit after SIGQUIT, SIGTERM and SIGKILL"
    )))
}

/// SIGUSR1 to the master in `layout`'s pid file: it reopens its log files (after the access
/// log was renamed).
pub fn reopen_logs(layout: &Layout) -> Result<u32, RouterError> {
    let master = procs::read_pid(&layout.pid_file)
        .filter(|&p| procs::is_nginx_master(p))
        .ok_or_else(|| {
            RouterError::Unavailable(format!(
                "nginx is not running (no live pid in {})",
                layout.pid_file.display()
            ))
        })?;
    kill(Pid::from_raw(master as i32), Signal::SIGUSR1).map_err(|e| {
        RouterError::Unavailable(format!("signalling nginx master {master} (USR1): {e}"))
    })?;
    Ok(master)
}

fn signal_all(pids: &[u32], signal: Signal) {
    for &pid in pids {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }
}

/// Waits until none of `pids` is alive, at most `timeout`; returns whether they are gone.
async fn wait_gone(pids: &[u32], timeout: Duration) -> bool {
    let since = Instant::now();
    loop {
        if !pids.iter().any(|&p| procs::running(p)) {
            return true;
        }
        if since.elapsed() >= timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for_pid(pid_file: &Path) -> Result<u32, RouterError> {
    let since = Instant::now();
    while since.elapsed() < STARTUP {
        if let Some(pid) = procs::read_pid(pid_file).filter(|&p| procs::is_nginx_master(p)) {
            return Ok(pid);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(RouterError::Unavailable(format!(
        "nginx started but wrote no pid to {}",
        pid_file.display()
    )))
}

async fn wait_for_generation(addr: SocketAddr, generation: u64) -> Result<(), RouterError> {
    let since = Instant::now();
    let mut last = String::new();
    while since.elapsed() < STARTUP {
        match control::generation(addr, Duration::from_secs(1)).await {
            Ok(g) if g == generation => return Ok(()),
            Ok(g) => last = format!("generation {g}"),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(RouterError::Unavailable(format!(
        "nginx control endpoint {addr} not answering generation {generation}: {last}"
    )))
}
