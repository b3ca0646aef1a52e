//! An nginx that switchyard runs itself, with its own prefix: [`ManagedNginx`].
//!
//! Tests, benchmarks and the demo each start one on free loopback ports; a host without a
//! system nginx can use it too. The main config comes from `templates/nginx.conf.tera`
//! (with `worker_shutdown_timeout` set); the control server answers generation 0 until the
//! first deploy. Dropping a [`ManagedNginx`] that was started (not adopted) stops it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use switchyard_engine::RouterError;

use crate::router::{NginxRouter, CONTROL_FILE};
use crate::routing::Routing;
use crate::stage::install;
use crate::{control, procs};

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
        Ok(nginx)
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
