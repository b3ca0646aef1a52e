//! Per-track traffic read from nginx's own access log: [`TrafficWatch`] tails it in the
//! background into shared [`TrafficCounters`], and [`EmbeddedMetrics`] is the canary
//! judge's metric source when no Prometheus is configured (the embedded default).

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchyard_engine::judge::{Measurement, Track, TrackWindow};
use switchyard_engine::{MetricError, MetricSource};
use switchyard_nginx::tailer::{Start, Tailer, TrafficCounters, WindowCounts};
use tokio::task::JoinHandle;

/// How often the access log is read.
pub const POLL: Duration = Duration::from_millis(100);

/// A background tailer of the access log; stops when dropped.
pub struct TrafficWatch {
    counters: Arc<Mutex<TrafficCounters>>,
    task: JoinHandle<()>,
}

impl TrafficWatch {
    /// Tails `access_log` from its current end, with every (service, track) of `services`
    /// declared at 0 so their series exist before the first request.
    pub fn start(access_log: &Path, services: &[&str]) -> io::Result<TrafficWatch> {
        let mut tailer = Tailer::open(access_log, Start::End)?;
        let mut counters = TrafficCounters::new();
        for service in services {
            for track in [Track::Stable, Track::Canary] {
                counters.declare(service, track.as_str());
            }
        }
        let counters = Arc::new(Mutex::new(counters));
        let shared = Arc::clone(&counters);
        let path = access_log.display().to_string();
        let task = tokio::spawn(async move {
            let mut warned = false;
            loop {
                let mut batch = Vec::new();
                match tailer.poll(&mut |record| batch.push(record)) {
                    Ok(stats) => {
                        if let (Some(first), false) = (&stats.first_malformed, warned) {
                            tracing::warn!("skipping malformed lines in {path}: {first}");
                            warned = true;
                        }
                    }
                    Err(e) => tracing::warn!("reading {path}: {e}"),
                }
                if !batch.is_empty() {
                    let mut counters = shared.lock().expect("traffic counters lock");
                    batch.iter().for_each(|r| counters.record(r));
                }
                tokio::time::sleep(POLL).await;
            }
        });
        Ok(TrafficWatch { counters, task })
    }

    pub fn counters(&self) -> Arc<Mutex<TrafficCounters>> {
        Arc::clone(&self.counters)
    }

    /// What `service`'s `track` did over the trailing `window`, up to now.
    pub fn window(&self, service: &str, track: &str, window: Duration) -> WindowCounts {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.counters
            .lock()
            .expect("traffic counters lock")
            .window(service, track, window, now)
    }
}

impl Drop for TrafficWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The canary judge's measurements straight from the access log.
pub struct EmbeddedMetrics {
    pub watch: TrafficWatch,
}

impl MetricSource for EmbeddedMetrics {
    async fn measure(&self, query: &TrackWindow) -> Result<Measurement, MetricError> {
        // Lines written in the last poll interval would be missed: let the tailer catch up.
        tokio::time::sleep(POLL).await;
        let counts = self
            .watch
            .window(query.service.as_str(), query.track.as_str(), query.window);
        Ok(Measurement {
            requests: Some(counts.requests as f64),
            errors: Some(counts.errors as f64),
            p99_latency: counts.p99_latency,
        })
    }
}
