//! Dynamic routing's side of [`NginxRouter`]: a route change is a routing document, written to
//! the state file, posted to the control server and read back; the files change (and nginx
//! reloads) only when the service's server or the control server is not yet as rendered.

use std::collections::BTreeMap;
use std::time::Instant;

use switchyard_engine::{ConfigDiff, DrainHandle, Reload, RouterError, UpstreamSet};

use super::{NginxRouter, CONTROL_FILE};
use crate::routing::{self, DrainToken, RouteDoc};
use crate::templates::Upstream;
use crate::{procs, stage};

impl NginxRouter {
    pub(super) async fn apply_dynamic(&self, set: &UpstreamSet) -> Result<Reload, RouterError> {
        let _lock = self.lock().await?;
        let since = Instant::now();
        let service = set.service.as_str();
        let structural = self.structural_files(set)?;
        let unavailable = RouterError::Unavailable;

        let state_file = self.state_file();
        let mut state = state_file.read().map_err(unavailable)?;
        let previous = state.get(service).cloned();
        let live = match routing::live_generation(self.control, service).await {
            Ok(g) => g,
            // An nginx still on a reload-routing control file has no routes to read yet.
            Err(_) if !self.control_on_disk_is_dynamic() => 0,
            Err(e) => {
                return Err(unavailable(format!(
                "the control endpoint {} does not answer for {service}: {e}; traffic was not moved",
                self.control
            )))
            }
        };
        let generation = previous.as_ref().map_or(0, |d| d.generation).max(live) + 1;
        let doc = RouteDoc::new(set, generation);
        if !structural.is_empty() {
            stage::validate(&self.layout, &structural, service).await?;
        }
        state.insert(service.to_owned(), doc.clone());
        state_file.write(&state).map_err(unavailable)?;

        let mut workers = Vec::new();
        let applied = if structural.is_empty() {
            self.post_or_live(&doc).await
        } else {
            // The reload's `init_by_lua` loads the document from the state file. A reload
            // that fails may have loaded it too, into the shared memory the old workers
            // serve from: the file names the previous routing again before the previous
            // files are reloaded, under a newer generation, so that reload restores it.
            let back = previous.as_ref().map(|p| p.at(generation + 1));
            let undo = || {
                let _ = self.write_state(service, back.clone());
            };
            match self.reload(structural, undo).await {
                Ok(reload) => {
                    workers = super::drain_token(&reload.drain).workers;
                    Ok(())
                }
                Err(e) => {
                    let back = self.put_back(service, previous, generation + 1).await;
                    return Err(match e {
                        RouterError::NotConfirmed(why) => {
                            RouterError::NotConfirmed(format!("{why}; {back}"))
                        }
                        other => other,
                    });
                }
            }
        };
        let confirmed = match applied {
            Ok(()) => self.confirm_routing(service, generation).await,
            Err(e) => Err(e),
        };
        if let Err(why) = confirmed {
            let back = self.put_back(service, previous, generation + 1).await;
            return Err(RouterError::NotConfirmed(format!("{why}; {back}")));
        }
        let confirm_ms = since.elapsed().as_millis() as u64;
        // Traffic has moved. The file is in place; syncing it only guards against a power
        // cut, so a failure here must not undo a change that is live.
        let _ = state_file.sync();
        Ok(Reload {
            generation,
            drain: DrainHandle::new(DrainToken {
                workers,
                service: Some(service.to_owned()),
                serving: doc.serving(),
            }),
            confirm_ms,
        })
    }

    /// Posts `doc`; a refusal because that very generation is already live (an nginx reload
    /// by someone else loaded it from the state file) is success.
    async fn post_or_live(&self, doc: &RouteDoc) -> Result<(), String> {
        match routing::post(self.control, doc).await {
            Ok(_) => Ok(()),
            Err(e) => match routing::live_generation(self.control, &doc.service).await {
                Ok(g) if g == doc.generation => Ok(()),
                _ => Err(e),
            },
        }
    }

    /// Whether the control file on disk serves routing documents.
    fn control_on_disk_is_dynamic(&self) -> bool {
        std::fs::read_to_string(self.layout.conf_dir.join(CONTROL_FILE))
            .is_ok_and(|text| text.contains("location = /routes"))
    }

    /// The state file with `service`'s document replaced by `doc` (removed for None).
    fn write_state(&self, service: &str, doc: Option<RouteDoc>) -> Result<(), String> {
        let state_file = self.state_file();
        let mut state: BTreeMap<String, RouteDoc> = state_file.read().unwrap_or_default();
        match doc {
            Some(doc) => state.insert(service.to_owned(), doc),
            None => state.remove(service),
        };
        state_file.write(&state).and_then(|()| state_file.sync())
    }

    /// The files of `set`'s service, of the sites and of the control server that differ from
    /// what is on disk, rendered (the control file under the next config generation).
    fn structural_files(
        &self,
        set: &UpstreamSet,
    ) -> Result<Vec<(String, Option<String>)>, RouterError> {
        let unavailable = RouterError::Unavailable;
        let read = |name: &str| std::fs::read_to_string(self.layout.conf_dir.join(name)).ok();
        let upstreams = self
            .templates
            .dynamic_service(&set.service, &self.front(&set.service))
            .map_err(unavailable)?;
        let mut files = self.front_files(set, upstreams, Upstream::Dynamic)?;
        let generation = self.disk_generation();
        let control_now = self.control_file(generation).map_err(unavailable)?;
        if files.is_empty() && read(CONTROL_FILE).as_deref() == Some(control_now.as_str()) {
            return Ok(files);
        }
        // Any reload carries the next generation, so it can be confirmed.
        let control = self.control_file(generation + 1).map_err(unavailable)?;
        files.push((CONTROL_FILE.to_owned(), Some(control)));
        Ok(files)
    }

    /// Reads the live generation of `service` back on a fresh connection.
    async fn confirm_routing(&self, service: &str, generation: u64) -> Result<(), String> {
        let since = Instant::now();
        let mut last = String::new();
        while since.elapsed() < self.confirm_timeout {
            match routing::live_generation(self.control, service).await {
                Ok(g) if g == generation => return Ok(()),
                Ok(g) => last = format!("still generation {g}"),
                Err(e) => last = e,
            }
            tokio::time::sleep(super::POLL).await;
        }
        Err(format!(
            "routing generation {generation} of {service} not live after {:?} ({last})",
            self.confirm_timeout
        ))
    }

    /// After a failed change that may have gone live: `previous` is in the state file and
    /// posted under `generation` (newer than the failed one), and what the failed routing
    /// sent elsewhere is waited out, so the caller can remove its peers. Says what it did.
    async fn put_back(&self, service: &str, previous: Option<RouteDoc>, generation: u64) -> String {
        let Some(previous) = previous else {
            return match self.write_state(service, None) {
                Ok(()) => "the service had no routing before".into(),
                Err(e) => format!("removing its routing from the state file failed: {e}"),
            };
        };
        let doc = previous.at(generation);
        let put = match self.write_state(service, Some(doc.clone())) {
            Ok(()) => self.post_or_live(&doc).await,
            Err(e) => Err(e),
        };
        if let Err(e) = put {
            return format!("putting the previous routing back failed: {e}");
        }
        let serving = doc.serving();
        let since = Instant::now();
        while since.elapsed() < self.confirm_timeout {
            if self.busy_peers(service, &serving).await.is_none() {
                return "the previous routing is live again".into();
            }
            tokio::time::sleep(super::PEER_POLL).await;
        }
        let left = self.busy_peers(service, &serving).await.unwrap_or_default();
        format!(
            "the previous routing is live again ({left} after {:?})",
            self.confirm_timeout
        )
    }

    /// The peers of `service` outside `serving` that still have requests in flight in a live
    /// nginx worker, in words; None when there are none.
    pub(super) async fn busy_peers(&self, service: &str, serving: &[String]) -> Option<String> {
        let counts = match routing::inflight(self.control, service).await {
            Ok(counts) => counts,
            Err(e) => return Some(format!("in-flight counts unreadable: {e}")),
        };
        let master = self.master().ok();
        let mut busy: BTreeMap<String, i64> = BTreeMap::new();
        for (key, n) in counts {
            // "peer pid": a count kept by a worker that has since died is no request.
            let (peer, pid) = key.split_once(' ').unwrap_or((key.as_str(), ""));
            let live = match (master, pid.parse::<u32>()) {
                (Some(master), Ok(pid)) => procs::is_worker(master, pid),
                _ => true,
            };
            if live && n > 0 && !serving.iter().any(|s| s == peer) {
                *busy.entry(peer.to_owned()).or_default() += n;
            }
        }
        let busy: Vec<String> = busy
            .into_iter()
            .map(|(peer, n)| format!("{n} on {peer}"))
            .collect();
        (!busy.is_empty()).then(|| format!("requests still in flight: {}", busy.join(", ")))
    }

    pub(super) fn preview_dynamic(&self, set: &UpstreamSet) -> Result<ConfigDiff, RouterError> {
        let state_file = self.state_file();
        let state = state_file.read().map_err(RouterError::Unavailable)?;
        let previous = state.get(set.service.as_str());
        let generation = previous.map_or(0, |d| d.generation) + 1;
        let pretty = |doc: &RouteDoc| serde_json::to_string_pretty(doc).unwrap_or_default() + "\n";
        Ok(ConfigDiff {
            path: state_file.path.display().to_string(),
            old: previous.map(pretty).unwrap_or_default(),
            new: pretty(&RouteDoc::new(set, generation)),
        })
    }
}
