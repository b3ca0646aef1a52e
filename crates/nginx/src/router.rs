//! [`NginxRouter`]: the engine's `Router` over a real nginx.
//!
//! `apply` is the cutover protocol's steps 3 and 4: render, validate a staged copy of the
//! whole tree, rename into place, signal the master, and poll the control server on fresh
//! connections until the new generation answers. One apply at a time, across processes
//! (an advisory lock on `conf_dir/.switchyard.lock`). If the reload is not confirmed the
//! previous files are put back, so the files on disk always describe what nginx serves.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use switchyard_engine::{
    ConfigDiff, DrainHandle, Drained, Reload, Router, RouterError, UpstreamSet,
};

use crate::stage::{self, Layout};
use crate::templates::Templates;
use crate::{control, procs};

pub const CONTROL_FILE: &str = "_control.conf";
const LOCK_FILE: &str = ".switchyard.lock";
const POLL: Duration = Duration::from_millis(10);

pub struct NginxRouter {
    pub layout: Layout,
    pub control: SocketAddr,
    pub templates: Templates,
    /// How long a reload may take to become live.
    pub confirm_timeout: Duration,
}

impl NginxRouter {
    pub fn new(layout: Layout, control: SocketAddr, templates: Templates) -> NginxRouter {
        NginxRouter {
            layout,
            control,
            templates,
            confirm_timeout: Duration::from_secs(10),
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
        let control = self.templates.control(self.control, generation)?;
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

    fn render(
        &self,
        set: &UpstreamSet,
        generation: u64,
    ) -> Result<Vec<(String, String)>, RouterError> {
        let service = self
            .templates
            .service(set, &self.layout.access_log)
            .map_err(RouterError::Unavailable)?;
        let control = self
            .templates
            .control(self.control, generation)
            .map_err(RouterError::Unavailable)?;
        Ok(vec![
            (format!("{}.conf", set.service), service),
            (CONTROL_FILE.to_owned(), control),
        ])
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

/// The nginx worker PIDs a reload's drain handle names: the workers of the config before it.
pub fn old_workers(reload: &Reload) -> Vec<u32> {
    reload.drain.token().unwrap_or_default()
}

impl Router for NginxRouter {
    async fn apply(&self, set: &UpstreamSet) -> Result<Reload, RouterError> {
        let _lock = self.lock().await?;
        let master = self.master()?;
        let generation = self.disk_generation() + 1;
        let files = self.render(set, generation)?;
        stage::validate(&self.layout, &files, set.service.as_str()).await?;
        let previous: Vec<(String, Option<String>)> = files
            .iter()
            .map(|(name, _)| {
                (
                    name.clone(),
                    std::fs::read_to_string(self.layout.conf_dir.join(name)).ok(),
                )
            })
            .collect();
        let new: Vec<(String, Option<String>)> =
            files.into_iter().map(|(n, t)| (n, Some(t))).collect();
        let io = |e: std::io::Error| {
            RouterError::Unavailable(format!("writing {}: {e}", self.layout.conf_dir.display()))
        };
        stage::install(&self.layout.conf_dir, &new).map_err(io)?;

        let old_workers = procs::workers(master);
        let since = Instant::now();
        let outcome = match kill(Pid::from_raw(master as i32), Signal::SIGHUP) {
            Ok(()) => self.confirm(generation, master, &old_workers, since).await,
            Err(e) => Err(format!("signalling nginx master {master}: {e}")),
        };
        match outcome {
            Ok(confirm_ms) => Ok(Reload {
                generation,
                drain: DrainHandle::new(&old_workers),
                confirm_ms,
            }),
            Err(why) => {
                let restored = self.restore(previous, generation + 1, master).await;
                Err(RouterError::NotConfirmed(match restored {
                    Ok(()) => format!("{why}; the previous config is live again"),
                    Err(e) => format!("{why}; restoring the previous config also failed: {e}"),
                }))
            }
        }
    }

    async fn wait_drained(
        &self,
        reload: &Reload,
        timeout: Duration,
    ) -> Result<Drained, RouterError> {
        let master = self.master()?;
        let since = Instant::now();
        let old_workers = old_workers(reload);
        loop {
            let lingering: Vec<u32> = old_workers
                .iter()
                .copied()
                .filter(|&p| procs::is_worker(master, p))
                .collect();
            if lingering.is_empty() || since.elapsed() >= timeout {
                return Ok(Drained {
                    waited_ms: since.elapsed().as_millis() as u64,
                    lingering: (!lingering.is_empty())
                        .then(|| format!("old nginx workers {lingering:?} still running")),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn preview(&self, set: &UpstreamSet) -> Result<ConfigDiff, RouterError> {
        let path = self.service_file(set.service.as_str());
        Ok(ConfigDiff {
            path: path.display().to_string(),
            old: std::fs::read_to_string(&path).unwrap_or_default(),
            new: self
                .templates
                .service(set, &self.layout.access_log)
                .map_err(RouterError::Unavailable)?,
        })
    }
}
