//! Dynamic routing's side of [`NginxRouter`]: a route change is a routing document, written to
//! the state file, posted to the control server and read back; the files change (and nginx
//! reloads) only when the service's server or the control server is not yet as rendered.

use std::collections::BTreeMap;
use std::time::Instant;

use switchyard_engine::{ConfigDiff, DrainHandle, Reload, RouterError, UpstreamSet};

use super::{NginxRouter, CONTROL_FILE};
use crate::routing::{self, DrainToken, RouteDoc};
use crate::stage;

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
            // The control server answers routes once the new control file is live.
            Err(_) if structural.iter().any(|(name, _)| name == CONTROL_FILE) => 0,
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
            routing::post(self.control, &doc).await.map(|_| ())
        } else {
            // The reload's `init_by_lua` loads the document from the state file.
            match self.reload(set, structural).await {
                Ok((_, old_workers, _)) => {
                    workers = old_workers;
                    Ok(())
                }
                Err(e) => {
                    self.put_back(service, previous, None).await;
                    return Err(e);
                }
            }
        };
        let confirmed = match applied {
            Ok(()) => self.confirm_routing(service, generation).await,
            Err(e) => Err(e),
        };
        if let Err(why) = confirmed {
            let back = self.put_back(service, previous, Some(generation + 1)).await;
            return Err(RouterError::NotConfirmed(format!("{why}; {back}")));
        }
        // Traffic has moved; the state file is on disk before anything relies on it.
        let confirm_ms = since.elapsed().as_millis() as u64;
        state_file.sync().map_err(unavailable)?;
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

    /// The files of `set`'s service and of the control server that differ from what is on
    /// disk, rendered (the control file under the next config generation).
    fn structural_files(&self, set: &UpstreamSet) -> Result<Vec<(String, String)>, RouterError> {
        let unavailable = RouterError::Unavailable;
        let read = |name: &str| std::fs::read_to_string(self.layout.conf_dir.join(name)).ok();
        let service_name = format!("{}.conf", set.service);
        let service = self
            .templates
            .dynamic_service(&set.service, set.listen, &self.layout.access_log)
            .map_err(unavailable)?;
        let generation = self.disk_generation();
        let control_now = self.control_file(generation).map_err(unavailable)?;
        let mut files = Vec::new();
        if read(&service_name).as_deref() != Some(service.as_str()) {
            files.push((service_name, service));
        }
        if files.is_empty() && read(CONTROL_FILE).as_deref() == Some(control_now.as_str()) {
            return Ok(files);
        }
        // Any reload carries the next generation, so it can be confirmed.
        let control = self.control_file(generation + 1).map_err(unavailable)?;
        files.push((CONTROL_FILE.to_owned(), control));
        Ok(files)
    }

    /// Reads the live generation of `service` back on a fresh connection.
    async fn confirm_routing(&self, service: &str, generation: u64) -> Result<(), String> {
        let since = Instant::now();
        let mut last = String::new();
        while since.elapsed() < self.confirm_timeout {
            match routing::live_generation(self.control, service).await {
                Ok(g) if g >= generation => return Ok(()),
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

    /// After a failed change: the state file holds `previous` again, and, when the new
    /// routing may have gone live, `previous` is posted under `generation`. Says what it did.
    async fn put_back(
        &self,
        service: &str,
        previous: Option<RouteDoc>,
        generation: Option<u64>,
    ) -> String {
        let state_file = self.state_file();
        let mut state: BTreeMap<String, RouteDoc> = state_file.read().unwrap_or_default();
        match &previous {
            Some(doc) => {
                let doc = generation.map_or_else(|| doc.clone(), |g| doc.at(g));
                state.insert(service.to_owned(), doc);
            }
            None => {
                state.remove(service);
            }
        }
        let wrote = state_file.write(&state).and_then(|()| state_file.sync());
        let posted = match (previous, generation) {
            (Some(doc), Some(g)) => routing::post(self.control, &doc.at(g)).await.map(|_| ()),
            _ => Ok(()),
        };
        match (wrote, posted) {
            (Ok(()), Ok(())) => "the previous routing is in place".into(),
            (Err(e), _) | (_, Err(e)) => format!("putting the previous routing back failed: {e}"),
        }
    }

    /// The peers of `service` outside `serving` that still have requests in flight, in words;
    /// None when there are none.
    pub(super) async fn busy_peers(&self, service: &str, serving: &[String]) -> Option<String> {
        let counts = match routing::inflight(self.control, service).await {
            Ok(counts) => counts,
            Err(e) => return Some(format!("in-flight counts unreadable: {e}")),
        };
        let busy: Vec<String> = counts
            .into_iter()
            .filter(|(peer, n)| *n > 0 && !serving.contains(peer))
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
