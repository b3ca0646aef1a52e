//! Reload routing's side of [`NginxRouter`] (the cutover protocol's steps 3 and 4), and the
//! reload every structural change makes: install the validated files, SIGHUP, confirm the
//! new generation, or put the previous files back.

use std::time::Instant;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use switchyard_engine::{DrainHandle, Name, Reload, RouterError, UpstreamSet};

use super::{NginxRouter, CONTROL_FILE};
use crate::routing::DrainToken;
use crate::{procs, sites, stage};

impl NginxRouter {
    /// Reload routing: the whole route change is a confirmed reload.
    pub(super) async fn apply_reload(&self, set: &UpstreamSet) -> Result<Reload, RouterError> {
        let _lock = self.lock().await?;
        let files = self.render(set, self.disk_generation() + 1)?;
        stage::validate(&self.layout, &files, set.service.as_str()).await?;
        self.reload(files, || {}).await
    }

    /// Takes `service`'s server and routing out: a validated, confirmed reload without its
    /// file (and, for dynamic routing, its document gone from the state file first).
    pub(super) async fn remove_service(&self, service: &Name) -> Result<Reload, RouterError> {
        let _lock = self.lock().await?;
        let mut claims = sites::claims_on_disk(&self.layout.conf_dir);
        claims.remove(service.as_str());
        let mut files = vec![
            (format!("{service}.conf"), None),
            (format!("{service}.locations"), None),
        ];
        files.extend(self.site_files(&claims)?);
        let mut files = self.changed(files);
        let control = self
            .control_file(self.disk_generation() + 1)
            .map_err(RouterError::Unavailable)?;
        files.push((CONTROL_FILE.to_owned(), Some(control)));
        stage::validate(&self.layout, &files, service.as_str()).await?;
        let state_file = self.state_file();
        let mut state = state_file.read().map_err(RouterError::Unavailable)?;
        let previous = state.remove(service.as_str());
        if previous.is_some() {
            state_file
                .write(&state)
                .and_then(|()| state_file.sync())
                .map_err(RouterError::Unavailable)?;
        }
        self.reload(files, || {}).await
    }

    /// Installs `files` (validated by the caller, who holds the lock; None removes one),
    /// reloads and confirms the new config generation (the one `files` hold: the disk's plus
    /// one). On failure the previous files are put back and reloaded, `before_restore` having
    /// run first. What it leaves to drain is the workers of the previous config.
    pub(super) async fn reload(
        &self,
        files: Vec<(String, Option<String>)>,
        before_restore: impl FnOnce(),
    ) -> Result<Reload, RouterError> {
        let master = self.master()?;
        let generation = self.disk_generation() + 1;
        let previous: Vec<(String, Option<String>)> = files
            .iter()
            .map(|(name, _)| {
                (
                    name.clone(),
                    std::fs::read_to_string(self.layout.conf_dir.join(name)).ok(),
                )
            })
            .collect();
        let io = |e: std::io::Error| {
            RouterError::Unavailable(format!("writing {}: {e}", self.layout.conf_dir.display()))
        };
        stage::install(&self.layout.conf_dir, &files).map_err(io)?;

        let old_workers = procs::workers(master);
        let since = Instant::now();
        let outcome = match kill(Pid::from_raw(master as i32), Signal::SIGHUP) {
            Ok(()) => self.confirm(generation, master, &old_workers, since).await,
            Err(e) => Err(format!("signalling nginx master {master}: {e}")),
        };
        match outcome {
            Ok(confirm_ms) => Ok(Reload {
                generation,
                drain: DrainHandle::new(DrainToken {
                    workers: old_workers,
                    ..DrainToken::default()
                }),
                confirm_ms,
            }),
            Err(why) => {
                before_restore();
                let restored = self.restore(previous, generation + 1, master).await;
                Err(RouterError::NotConfirmed(match restored {
                    Ok(()) => format!("{why}; the previous config is live again"),
                    Err(e) => format!("{why}; restoring the previous config also failed: {e}"),
                }))
            }
        }
    }

    /// Waits until none of `workers` is still a worker of the master.
    pub(super) fn lingering_workers(&self, master: u32, workers: &[u32]) -> Vec<u32> {
        workers
            .iter()
            .copied()
            .filter(|&p| procs::is_worker(master, p))
            .collect()
    }
}
