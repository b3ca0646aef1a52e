//! A bounded HTTP load generator, used by the demo, the end-to-end tests and the benchmarks
//! to show that no request fails while traffic moves between versions.
//!
//! [`Load::start`] spawns [`LoadConfig::connections`] tokio tasks. Each task owns its own
//! `reqwest::Client` with `pool_max_idle_per_host(1)` and sends requests one after another,
//! so each task is one keep-alive connection (reopened when the server closes it, as a real
//! client would). Every task stops on its own once the shared [`LoadConfig::max_requests`]
//! budget is spent or [`LoadConfig::max_duration`] has passed, whether or not anyone calls
//! [`Load::stop`]; dropping a [`Load`] stops it too.
//!
//! Each request is a GET or a POST with a body, as [`LoadConfig::method`] says. By default
//! the client is one that never sends a request twice, as wrk, Python's requests or any
//! client sending a POST behaves: a request that crosses a connection close is a failure.
//! [`LoadConfig::resend`] makes it send a GET once more when a reused keep-alive connection
//! closes before answering, as browsers, curl and Go's `http.Transport` do; the
//! [`LoadReport`] counts those in [`LoadReport::retried`].
//!
//! A request fails when it errors (connect, reset, timeout, broken body) or answers a
//! non-2xx status, redirects included: they are not followed. The [`LoadReport`] counts
//! both, keeps the first [`MAX_FAILURES_KEPT`] [`Failure`]s, tallies successful responses
//! per `x-version` header in [`VersionSeen`], and keeps one [`Sample`] (send time and
//! latency) per successful request, at most [`MAX_SAMPLES_KEPT`] of them (32 MB), so
//! latency can be split into steady state and during-deploy windows with
//! [`LoadReport::percentile`]. All times are when the request was sent.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use switchyard_engine::error_chain;

use tokio::task::JoinHandle;

/// How many failures a report keeps in detail; the rest are only counted.
pub const MAX_FAILURES_KEPT: usize = 50;
/// How many latency samples a report keeps; later successes are only counted.
pub const MAX_SAMPLES_KEPT: usize = 4_000_000;
/// Pause after a transport error, so a closed port is not hammered in a tight loop.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// What to load and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadConfig {
    /// An `http://` URL; every request goes to it.
    pub url: String,
    /// What each request is; a GET by default.
    pub method: Method,
    /// Send a GET once more, on a fresh connection, when the reused keep-alive connection it
    /// went out on closed before any response byte came back (see [`send_loop`]). Off by
    /// default: then no request is sent twice and one that crosses a connection close is a
    /// failure. POSTs are never sent twice, whatever this says: they are not idempotent.
    pub resend: bool,
    /// Concurrent keep-alive connections, one task each.
    pub connections: usize,
    /// Requests sent across all connections before the tasks stop.
    pub max_requests: u64,
    /// Time after [`Load::start`] at which the tasks stop sending.
    pub max_duration: Duration,
    /// Limit on one request, connect through body.
    pub request_timeout: Duration,
}

impl LoadConfig {
    /// GETs that are never re-sent, on 4 connections, at most 100 000 requests over at most
    /// 60 s, 5 s per request. Change fields with struct update syntax:
    /// `LoadConfig { connections: 8, ..LoadConfig::new(url) }`.
    pub fn new(url: impl Into<String>) -> LoadConfig {
        LoadConfig {
            url: url.into(),
            method: Method::Get,
            resend: false,
            connections: 4,
            max_requests: 100_000,
            max_duration: Duration::from_secs(60),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// The HTTP method of every request, and the body a POST carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Get,
    /// Sent with `content-type: application/octet-stream`. Copied once per request, so keep
    /// it small.
    Post {
        body: Vec<u8>,
    },
}

/// One failed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// When it was sent, since [`LoadReport::started`].
    pub at: Duration,
    /// Which connection task sent it, `0..connections`.
    pub connection: usize,
    pub kind: FailureKind,
}

/// What went wrong with a [`Failure`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// The server answered with a non-2xx status.
    Status { code: u16, version: Option<String> },
    /// No complete response: the error and its sources, joined with `": "`.
    Error(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.at.as_secs_f64();
        write!(f, "+{at:.3}s connection {}: ", self.connection)?;
        match &self.kind {
            FailureKind::Status {
                code,
                version: Some(version),
            } => write!(f, "HTTP {code} from version {version}"),
            FailureKind::Status {
                code,
                version: None,
            } => write!(f, "HTTP {code}"),
            FailureKind::Error(error) => f.write_str(error),
        }
    }
}

/// Successful responses that carried one `x-version` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionSeen {
    pub count: u64,
    /// Send time of the first and last such request.
    pub first: Instant,
    pub last: Instant,
}

/// One successful request: when it was sent and how long it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Milliseconds from [`LoadReport::started`] to sending.
    pub at_ms: u32,
    pub latency_us: u32,
}

/// Counts so far ([`Load::snapshot`]) or final ([`Load::stop`], [`Load::wait`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    pub started: Instant,
    /// From start to the last completed request (final reports) or to the snapshot.
    pub elapsed: Duration,
    /// `ok + failed`: requests that completed, successfully or not.
    pub total: u64,
    pub ok: u64,
    pub failed: u64,
    /// The first [`MAX_FAILURES_KEPT`] failures, in the order they were recorded.
    pub failures: Vec<Failure>,
    /// Successful responses by their `x-version` header; those without one are not here.
    pub by_version: BTreeMap<String, VersionSeen>,
    /// Failed responses (non-2xx) by their `x-version` header, all of them counted (not only
    /// the kept [`LoadReport::failures`]): what a version failed by itself.
    pub failed_by_version: BTreeMap<String, u64>,
    /// One per successful request, up to [`MAX_SAMPLES_KEPT`], in completion order.
    pub samples: Vec<Sample>,
    /// Successful requests beyond [`MAX_SAMPLES_KEPT`], counted but not sampled.
    pub samples_dropped: u64,
    /// GETs sent again because the reused keep-alive connection they went out on was closed
    /// before any response byte came back (see [`send_loop`]). Not failures, but reported.
    /// Always 0 unless [`LoadConfig::resend`] is set.
    pub retried: u64,
}

impl LoadReport {
    /// The `p`th percentile (0–100, nearest rank) of successful requests' latency,
    /// over requests sent in `[from, to)` when a window is given. `None` without samples.
    pub fn percentile(&self, p: f64, window: Option<(Instant, Instant)>) -> Option<Duration> {
        let mut latencies: Vec<u32> = self
            .samples
            .iter()
            .filter(|sample| match window {
                None => true,
                Some((from, to)) => {
                    let sent = self.sent_at(sample);
                    from <= sent && sent < to
                }
            })
            .map(|sample| sample.latency_us)
            .collect();
        if latencies.is_empty() {
            return None;
        }
        latencies.sort_unstable();
        let rank = (p.clamp(0.0, 100.0) / 100.0 * latencies.len() as f64).ceil() as usize;
        let index = rank.clamp(1, latencies.len()) - 1;
        Some(Duration::from_micros(u64::from(latencies[index])))
    }

    /// Completed requests per second over [`LoadReport::elapsed`].
    pub fn requests_per_second(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.total as f64 / seconds
        } else {
            0.0
        }
    }

    /// When `sample`'s request was sent.
    pub fn sent_at(&self, sample: &Sample) -> Instant {
        self.started + Duration::from_millis(u64::from(sample.at_ms))
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} requests, {} ok, {} failed, {} re-sent in {:.2}s ({:.0} req/s)",
            self.total,
            self.ok,
            self.failed,
            self.retried,
            self.elapsed.as_secs_f64(),
            self.requests_per_second()
        )?;
        if let (Some(p50), Some(p99)) = (self.percentile(50.0, None), self.percentile(99.0, None)) {
            write!(f, ", p50 {p50:?}, p99 {p99:?}")?;
        }
        for (version, seen) in &self.by_version {
            write!(f, "\n  version {version}: {} ok", seen.count)?;
        }
        for failure in &self.failures {
            write!(f, "\n  failed {failure}")?;
        }
        let unlisted = self.failed.saturating_sub(self.failures.len() as u64);
        if unlisted > 0 {
            write!(f, "\n  and {unlisted} more failures")?;
        }
        Ok(())
    }
}

/// Running load; see the module docs.
#[derive(Debug)]
pub struct Load {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    /// Spawns one task per connection on the current tokio runtime (panics outside one).
    pub fn start(config: LoadConfig) -> Load {
        let started = Instant::now();
        let shared = Arc::new(Shared {
            started,
            // None only when max_duration is too large to add to an Instant.
            deadline: started.checked_add(config.max_duration),
            max_requests: config.max_requests,
            sent: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            tally: Mutex::new(Tally::default()),
        });
        let tasks = (0..config.connections)
            .map(|connection| {
                let shared = Arc::clone(&shared);
                let config = config.clone();
                tokio::spawn(async move { send_loop(connection, &config, &shared).await })
            })
            .collect();
        Load { shared, tasks }
    }

    /// Counts so far, without stopping. Copies every sample, so call it now and then,
    /// not per request.
    pub fn snapshot(&self) -> LoadReport {
        self.shared.report(Instant::now())
    }

    /// True once every task has stopped (budget spent, time up, or stopped).
    pub fn is_finished(&self) -> bool {
        self.tasks.iter().all(JoinHandle::is_finished)
    }

    /// Tells the tasks to stop, lets requests in flight finish, and returns the final report.
    pub async fn stop(mut self) -> LoadReport {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.join().await
    }

    /// Waits until the tasks stop on their own (budget spent or time up).
    pub async fn wait(mut self) -> LoadReport {
        self.join().await
    }

    async fn join(&mut self) -> LoadReport {
        for task in std::mem::take(&mut self.tasks) {
            if let Err(err) = task.await {
                if err.is_panic() {
                    std::panic::resume_unwind(err.into_panic());
                }
            }
        }
        let end = self.shared.tally().last_completed;
        self.shared.report(end.unwrap_or_else(Instant::now))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

#[derive(Debug)]
struct Shared {
    started: Instant,
    deadline: Option<Instant>,
    max_requests: u64,
    /// Requests handed out so far; the shared budget.
    sent: AtomicU64,
    stop: AtomicBool,
    tally: Mutex<Tally>,
}

#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    failed: u64,
    failures: Vec<Failure>,
    by_version: BTreeMap<String, VersionSeen>,
    failed_by_version: BTreeMap<String, u64>,
    samples: Vec<Sample>,
    samples_dropped: u64,
    retried: u64,
    last_completed: Option<Instant>,
}

enum Outcome {
    Ok { version: Option<String> },
    Status { code: u16, version: Option<String> },
    Error(String),
}

impl Shared {
    fn tally(&self) -> MutexGuard<'_, Tally> {
        // A panic while recording leaves counts that are still worth reading.
        self.tally
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a task may send one more request, taking it from the budget if so.
    fn take_request(&self) -> bool {
        !self.stop.load(Ordering::SeqCst)
            && self
                .deadline
                .is_none_or(|deadline| Instant::now() < deadline)
            && self.sent.fetch_add(1, Ordering::SeqCst) < self.max_requests
    }

    fn record(&self, connection: usize, sent: Instant, latency: Duration, outcome: Outcome) {
        let at = sent.duration_since(self.started);
        let mut tally = self.tally();
        tally.last_completed = Some(Instant::now());
        let failure = match outcome {
            Outcome::Ok { version } => {
                tally.ok += 1;
                if let Some(version) = version {
                    tally
                        .by_version
                        .entry(version)
                        .and_modify(|seen| {
                            seen.count += 1;
                            seen.first = seen.first.min(sent);
                            seen.last = seen.last.max(sent);
                        })
                        .or_insert(VersionSeen {
                            count: 1,
                            first: sent,
                            last: sent,
                        });
                }
                if tally.samples.len() < MAX_SAMPLES_KEPT {
                    tally.samples.push(Sample {
                        at_ms: saturate_u32(at.as_millis()),
                        latency_us: saturate_u32(latency.as_micros()),
                    });
                } else {
                    tally.samples_dropped += 1;
                }
                return;
            }
            Outcome::Status { code, version } => {
                if let Some(v) = &version {
                    *tally.failed_by_version.entry(v.clone()).or_default() += 1;
                }
                FailureKind::Status { code, version }
            }
            Outcome::Error(error) => FailureKind::Error(error),
        };
        tally.failed += 1;
        if tally.failures.len() < MAX_FAILURES_KEPT {
            tally.failures.push(Failure {
                at,
                connection,
                kind: failure,
            });
        }
    }

    fn report(&self, end: Instant) -> LoadReport {
        let tally = self.tally();
        LoadReport {
            started: self.started,
            elapsed: end.saturating_duration_since(self.started),
            total: tally.ok + tally.failed,
            ok: tally.ok,
            failed: tally.failed,
            failures: tally.failures.clone(),
            by_version: tally.by_version.clone(),
            failed_by_version: tally.failed_by_version.clone(),
            samples: tally.samples.clone(),
            samples_dropped: tally.samples_dropped,
            retried: tally.retried,
        }
    }
}

fn saturate_u32(value: u128) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

async fn send_loop(connection: usize, config: &LoadConfig, shared: &Shared) {
    let client = match build_client(config) {
        Ok(client) => client,
        Err(err) => {
            let error = format!("cannot build the HTTP client: {}", error_chain(&err));
            shared.record(
                connection,
                Instant::now(),
                Duration::ZERO,
                Outcome::Error(error),
            );
            return;
        }
    };
    let resend = config.resend && config.method == Method::Get;
    // Whether the next request goes out on a connection that already carried one.
    let mut reused = false;
    while shared.take_request() {
        let sent = Instant::now();
        let mut outcome = send(&client, config).await;
        // What browsers, curl and Go's Transport do: a GET sent on a reused keep-alive
        // connection that the server closed before answering is sent once more on a fresh
        // connection (RFC 9110 9.2.2). nginx's old workers close idle keep-alive connections
        // the moment a reload starts, and one can cross a request in flight.
        if resend && reused && closed_before_response(&outcome) {
            shared.tally().retried += 1;
            outcome = send(&client, config).await;
        }
        let transport_error = matches!(outcome, Outcome::Error(_));
        reused = !transport_error;
        shared.record(connection, sent, sent.elapsed(), outcome);
        if transport_error {
            tokio::time::sleep(ERROR_BACKOFF).await;
        }
    }
}

/// A client that sends each request at most once, on one keep-alive connection.
///
/// What retries reqwest 0.12 and hyper-util 0.1 make on their own, read in their source:
/// - reqwest's retry layer by default retries only HTTP/2 and HTTP/3 protocol NACKs
///   (GOAWAY, REFUSED_STREAM); with HTTP/1 alone it never retries. `retry::never()` says so
///   outright.
/// - hyper-util's legacy client, which reqwest does not let us configure here, has
///   `retry_canceled_requests` on: it re-sends a request only when hyper hands it back
///   unsent, because the reused pooled connection it was queued on failed before hyper
///   started writing it (never on a fresh connection since hyper-util PR 150). A request
///   that reached the socket is never re-sent, so the server sees each request at most
///   once and our counts stay honest.
/// - reqwest follows redirects by default, one more request per hop; we follow none, so a
///   3xx is a failure like any non-2xx.
fn build_client(config: &LoadConfig) -> reqwest::Result<reqwest::Client> {
    // One idle connection per client and requests sent one at a time: one keep-alive
    // connection per task.
    reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(config.request_timeout)
        .no_proxy()
        .retry(reqwest::retry::never())
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// The connection closed before any byte of a response: hyper's "incomplete message", or
/// a reset.
fn closed_before_response(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Error(e) if e.contains("connection closed before message completed") || e.contains("Connection reset by peer"))
}

async fn send(client: &reqwest::Client, config: &LoadConfig) -> Outcome {
    let request = match &config.method {
        Method::Get => client.get(&config.url),
        Method::Post { body } => client
            .post(&config.url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body.clone()),
    };
    let response = match request.send().await {
        Ok(response) => response,
        Err(err) => return Outcome::Error(error_chain(&err)),
    };
    let status = response.status();
    let version = response
        .headers()
        .get("x-version")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    // Read the whole body: a broken body is a failure, and the connection is reused only
    // once the body is consumed.
    if let Err(err) = response.bytes().await {
        return Outcome::Error(error_chain(&err));
    }
    if status.is_success() {
        Outcome::Ok { version }
    } else {
        Outcome::Status {
            code: status.as_u16(),
            version,
        }
    }
}

#[cfg(test)]
mod tests;
