//! serve's reader of nginx's access log: [`AccessLog`] tails it into shared
//! [`TrafficCounters`] (as `TrafficWatch` does for a deploy) and, in the same loop, rotates it
//! at `[proxy] access_log_max`: right after a poll that read the file to its end it is renamed
//! to `<log>.1` ([`rotate_if_over`]) and the master is told to reopen its logs (SIGUSR1). The
//! tailer reads the renamed file to its end before it follows the new one, so no line is lost.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_nginx::managed::reopen_logs;
use switchyard_nginx::tailer::{rotate_if_over, Start, Tailer, TrafficCounters};
use switchyard_nginx::Layout;
use tokio::task::JoinHandle;

/// How often the access log is read (and its size checked).
pub const POLL: Duration = Duration::from_millis(100);

/// The background tailer; stops when dropped.
pub(super) struct AccessLog {
    counters: Arc<Mutex<TrafficCounters>>,
    task: JoinHandle<()>,
}

impl AccessLog {
    /// Tails `layout.access_log` from its current end, with every (service, track) of
    /// `services` declared at 0; rotates it past `cap` bytes.
    pub(super) fn start(layout: &Layout, services: &[&str], cap: u64) -> io::Result<AccessLog> {
        let mut tailer = Tailer::open(&layout.access_log, Start::End)?;
        let mut counters = TrafficCounters::new();
        for service in services {
            for track in super::proxy::TRACKS {
                counters.declare(service, track);
            }
        }
        let counters = Arc::new(Mutex::new(counters));
        let shared = Arc::clone(&counters);
        let layout = layout.clone();
        let task = tokio::spawn(async move {
            let mut warned = false;
            let mut rotate_failing = false;
            loop {
                let mut batch = Vec::new();
                match tailer.poll(&mut |record| batch.push(record)) {
                    Ok(stats) => {
                        if let (Some(first), false) = (&stats.first_malformed, warned) {
                            tracing::warn!("skipping malformed lines: {first}");
                            warned = true;
                        }
                    }
                    Err(e) => tracing::warn!("{e}"),
                }
                if !batch.is_empty() {
                    let mut counters = shared.lock().expect("traffic counters lock");
                    batch.iter().for_each(|r| counters.record(r));
                }
                match rotate(&tailer, &layout, cap) {
                    // Logged when it starts failing, not every poll.
                    Err(e) if !rotate_failing => {
                        tracing::warn!("rotating the access log: {e}");
                        rotate_failing = true;
                    }
                    Err(_) => {}
                    Ok(()) => rotate_failing = false,
                }
                tokio::time::sleep(POLL).await;
            }
        });
        Ok(AccessLog { counters, task })
    }

    pub(super) fn counters(&self) -> Arc<Mutex<TrafficCounters>> {
        Arc::clone(&self.counters)
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn rotate(tailer: &Tailer, layout: &Layout, cap: u64) -> io::Result<()> {
    let log = tailer.path();
    if let Some(r) = rotate_if_over(tailer, cap)? {
        match reopen_logs(layout) {
            Ok(master) => tracing::info!(
                "rotated {} at {} bytes (access_log_max {cap}) to {}; nginx master {master} \
                 reopens its logs",
                log.display(),
                r.size,
                r.to.display()
            ),
            Err(e) => tracing::warn!(
                "rotated {} to {}, but {e}: nginx opens a new log when it starts",
                log.display(),
                r.to.display()
            ),
        }
    }
    Ok(())
}
