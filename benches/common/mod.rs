//! Helpers the benchmarks share: a timestamped event log ([`Timeline`]), medians and
//! spreads ([`spread`], [`Spread`]), Markdown tables ([`print_metrics`], [`Table`]), number
//! formatting, the bench's start ([`demo_app`], [`block_on`]), sandbox and image clean-up
//! ([`finish`], [`remove_images`]), where raw rows go ([`json_path`]), the machine they ran
//! on ([`Machine`]), the naive reload-then-stop flow the engine is measured against
//! ([`naive_flip`], built from [`naive_start`], [`wait_healthy`], [`naive_route`] and
//! [`naive_stop_at_once`]), a client that never re-sends ([`Wrk`], [`under_wrk`]), a count of
//! an nginx master's workers taken on a thread of its own ([`WorkerWatch`]), the knobs
//! ([`knob`], [`bench_parts`]), a plain HTTP exchange ([`http_call`]) and a process's CPU
//! time ([`cpu_time`]).

// Each bench compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use switchyard_app::sandbox::{demo_app_binary, Sandbox, IMAGE};
use switchyard_engine::deploy::upstream_set;
use switchyard_engine::{
    Color, Event, Instance, InstanceSpec, Observer, Prober, Runtime, ServiceSpec, UpstreamSet,
    Version,
};

/// Records every engine event with the instant it arrived.
#[derive(Default)]
pub struct Timeline(pub Mutex<Vec<(Instant, Event)>>);

impl Observer for Timeline {
    fn event(&self, event: &Event) {
        let mut events = self.0.lock().expect("timeline lock");
        events.push((Instant::now(), event.clone()));
    }
}

/// The static demo-app binary, or an error saying how to build it.
pub fn demo_app() -> anyhow::Result<PathBuf> {
    let binary = demo_app_binary();
    if !binary.exists() {
        bail!(
            "demo-app binary not found at {}: build it with scripts/build-demo-app first",
            binary.display()
        );
    }
    Ok(binary)
}

/// Runs a bench's body on a multi-threaded tokio runtime.
pub fn block_on(body: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(body)
}

/// Shuts the sandbox down whatever `result` is, and returns it.
pub async fn finish<T>(sandbox: Sandbox, result: anyhow::Result<T>) -> anyhow::Result<T> {
    let cleanup = sandbox.shutdown().await;
    let value = result?;
    cleanup.context("shutting the sandbox down")?;
    Ok(value)
}

/// Untags the bench's images; they share one layer with the demo's, so only tags go.
pub async fn remove_images(versions: &[String]) {
    let tags = versions.iter().map(|v| format!("{IMAGE}:{v}"));
    let removed = tokio::process::Command::new("docker")
        .args(["image", "rm", "--no-prune"])
        .args(tags)
        .output()
        .await;
    match removed {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "removing the bench images: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => eprintln!("removing the bench images: running docker: {e}"),
    }
}

/// `target/<file>`, or `$CARGO_TARGET_DIR/<file>` when that is set.
pub fn json_path(file: &str) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join(file)
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median, quartiles and range of some values (linear interpolation between ranks).
pub struct Spread {
    pub min: f64,
    pub p25: f64,
    pub median: f64,
    pub p75: f64,
    pub max: f64,
}

pub fn spread(mut values: Vec<f64>) -> Option<Spread> {
    values.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        let h = q * (values.len() - 1) as f64;
        let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
        values[lo] + (h - h.floor()) * (values[hi] - values[lo])
    };
    Some(Spread {
        min: *values.first()?,
        p25: quantile(0.25),
        median: quantile(0.5),
        p75: quantile(0.75),
        max: *values.last()?,
    })
}

pub fn num(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A Markdown table of named columns of values, each as median, p25–p75 and min–max, so
/// the output pastes into BENCHMARKS.md. `width` is the metric column's.
pub fn print_metrics(width: usize, metrics: &[(&str, Vec<f64>)]) {
    println!(
        "| {:<width$} | {:>8} | {:>15} | {:>15} |",
        "metric", "median", "p25–p75", "min–max"
    );
    println!(
        "|{:-<dashes$}|{:->10}|{:->17}|{:->17}|",
        "",
        ":",
        ":",
        ":",
        dashes = width + 2
    );
    for (name, values) in metrics {
        let [median, quartiles, range] = match spread(values.clone()) {
            None => ["–".to_owned(), String::new(), String::new()],
            Some(s) => [
                num(s.median),
                format!("{}–{}", num(s.p25), num(s.p75)),
                format!("{}–{}", num(s.min), num(s.max)),
            ],
        };
        println!("| {name:<width$} | {median:>8} | {quartiles:>15} | {range:>15} |");
    }
    println!();
}

/// A Markdown table with one row per case: the first column left-aligned, the others
/// right-aligned, every column as wide as its widest cell.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells print empty.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn print(&self) {
        let cell = |row: &[String], i: usize| row.get(i).cloned().unwrap_or_default();
        let widths: Vec<usize> = (0..self.header.len())
            .map(|i| {
                std::iter::once(&self.header)
                    .chain(&self.rows)
                    .map(|row| cell(row, i).chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |row: &[String]| {
            let cells: Vec<String> = widths
                .iter()
                .enumerate()
                .map(|(i, &w)| match i {
                    0 => format!(" {:<w$} ", cell(row, i)),
                    _ => format!(" {:>w$} ", cell(row, i)),
                })
                .collect();
            format!("|{}|", cells.join("|"))
        };
        println!("{}", line(&self.header));
        let rule: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(i, &w)| match i {
                0 => format!("{:-<n$}", "", n = w + 2),
                _ => format!("{:->n$}", ":", n = w + 2),
            })
            .collect();
        println!("|{}|", rule.join("|"));
        for row in &self.rows {
            println!("{}", line(row));
        }
        println!();
    }
}

/// A command's stdout, or its stderr when stdout is empty (`nginx -v`); "unknown" on error.
pub async fn output(program: &str, args: &[&str]) -> String {
    match tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
    {
        Ok(out) => {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text).trim().to_owned()
        }
        Err(e) => format!("unknown ({program}: {e})"),
    }
}

/// What the numbers were measured on.
#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
    pub docker: String,
    pub nginx: String,
}

impl Machine {
    pub async fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        let docker_format = "{{.Server.Version}} (API {{.Server.APIVersion}})";
        let docker = output("docker", &["version", "--format", docker_format]).await;
        let nginx = output("nginx", &["-v"]).await;
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
                .unwrap_or("unknown")
                .trim()
                .to_owned(),
            memory_gib: mem_kib / 1024.0 / 1024.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            docker,
            nginx: nginx.trim_start_matches("nginx version: ").to_owned(),
        }
    }

    pub fn line(&self) -> String {
        format!(
            "machine: {} CPUs ({}), {:.1} GiB RAM, Linux {}, Docker {}, {}",
            self.cpus, self.cpu_model, self.memory_gib, self.kernel, self.docker, self.nginx
        )
    }
}

/// When each phase of one deploy ended.
#[derive(Debug, Clone, Copy)]
pub struct Phases {
    pub called: Instant,
    /// The engine's `Begin` (lock taken, deployment recorded); `called` for the naive flow.
    pub begun: Instant,
    pub first_started: Instant,
    pub last_started: Instant,
    pub healthy: Instant,
    /// Engine: reload confirmed. Naive: SIGHUP sent.
    pub reloaded: Instant,
    pub drained: Option<Instant>,
    /// Every old replica's stop call has returned (the engine's last `Stopped` event).
    pub old_stopped: Option<Instant>,
    pub returned: Instant,
}

/// The seed script's order: start, wait healthy, rewrite the upstream file (no `nginx -t`,
/// no confirmation), SIGHUP the master, and stop and remove the old replicas at once.
/// `live_now` holds the serving replicas, and the new ones afterwards. `n` keeps the new
/// replicas' names apart from earlier naive flips in the same sandbox.
pub async fn naive_flip(
    sandbox: &Sandbox,
    live_now: &mut Vec<Instance>,
    to: &str,
    n: usize,
) -> anyhow::Result<Phases> {
    let spec = sandbox.spec();
    let version = Version::parse(to).map_err(anyhow::Error::msg)?;
    let color = live_now
        .first()
        .context("nothing is serving before a naive flip")?
        .color
        .other();
    let called = Instant::now();
    let (new, first_started) = naive_start(sandbox, &version, color, n, 0..spec.replicas).await?;
    let last_started = Instant::now();
    wait_healthy(sandbox, spec, &new).await?;
    let healthy = Instant::now();
    naive_route(sandbox, &upstream_set(spec, &new)).await?;
    let reloaded = Instant::now();
    let old_stopped = naive_stop_at_once(sandbox, live_now).await?;
    *live_now = new;
    Ok(Phases {
        called,
        begun: called,
        first_started: first_started.unwrap_or(last_started),
        last_started,
        healthy,
        reloaded,
        drained: None,
        old_stopped: Some(old_stopped),
        returned: Instant::now(),
    })
}

/// Starts `replicas` of `version` in `color`, one after another, with the engine's
/// `InstanceSpec`; the instances and when the first start returned. `n` numbers the naive
/// deploy, so its instance names never collide with the engine's or an earlier one's.
pub async fn naive_start(
    sandbox: &Sandbox,
    version: &Version,
    color: Color,
    n: usize,
    replicas: std::ops::Range<u16>,
) -> anyhow::Result<(Vec<Instance>, Option<Instant>)> {
    let (live, spec) = (sandbox.live(), sandbox.spec());
    let mut new = Vec::new();
    let mut first_started = None;
    for replica in replicas {
        let instance = live
            .runtime
            .start(&InstanceSpec {
                service: spec.name.clone(),
                version: version.clone(),
                color,
                // Far from the engine's ids, so instance names never collide.
                deployment: 1000 + n as i64,
                replica,
                source: spec.source_for(version),
                port: spec.port,
                env: spec.env.clone(),
                host_port: None,
                container: Default::default(),
                secrets: Default::default(),
            })
            .await?;
        first_started.get_or_insert_with(Instant::now);
        new.push(instance);
    }
    Ok((new, first_started))
}

/// Renders `set` with the engine's template over `conf/switchyard/<service>.conf` and
/// SIGHUPs the master: no `nginx -t`, no atomic rename, no confirmation.
pub async fn naive_route(sandbox: &Sandbox, set: &UpstreamSet) -> anyhow::Result<()> {
    let live = sandbox.live();
    let front = Default::default();
    let claim = switchyard_nginx::sites::Claim::new(set.service.as_str(), set.listen, &front);
    let upstreams = live
        .router
        .templates
        .service(set, &front)
        .map_err(anyhow::Error::msg)?;
    // Its server and locations stay as the engine's first deploy wrote them.
    let text = format!("{}{upstreams}", claim.line());
    let file = live
        .router
        .layout
        .conf_dir
        .join(format!("{}.conf", set.service));
    std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    hup(live.router.master()?).await
}

/// Stops every one of `old` together with a zero stop timeout (SIGTERM then SIGKILL, like
/// `docker stop -t 0 a b`), then removes them; when all the stop calls had returned.
pub async fn naive_stop_at_once(sandbox: &Sandbox, old: &[Instance]) -> anyhow::Result<Instant> {
    let runtime = &sandbox.live().runtime;
    // "At once": every old replica together, as `docker stop a b` does. One after another,
    // nginx would retry a dead one's requests on the other (`proxy_next_upstream error`).
    let stops = old.iter().map(|o| runtime.stop(o, Duration::ZERO));
    join_all(stops.collect())
        .await
        .into_iter()
        .collect::<Result<Vec<()>, _>>()?;
    let stopped = Instant::now();
    for o in old {
        runtime.remove(o).await?;
    }
    Ok(stopped)
}

/// The engine's health rule without its Docker status checks: `healthy_after` passes in a
/// row per replica, polled every `interval`, within `deadline`.
pub async fn wait_healthy(
    sandbox: &Sandbox,
    spec: &ServiceSpec,
    instances: &[Instance],
) -> anyhow::Result<()> {
    let h = &spec.health;
    let start = Instant::now();
    let mut passes = vec![0u32; instances.len()];
    loop {
        for (i, instance) in instances.iter().enumerate() {
            if passes[i] < h.healthy_after {
                let probe = sandbox
                    .live()
                    .prober
                    .probe(instance.addr(), &h.path, h.timeout)
                    .await;
                passes[i] = if probe.ok { passes[i] + 1 } else { 0 };
            }
        }
        if passes.iter().all(|&p| p >= h.healthy_after) {
            return Ok(());
        }
        if start.elapsed() >= h.deadline {
            bail!(
                "naive flow: new replicas not healthy within {:?}",
                h.deadline
            );
        }
        tokio::time::sleep(h.interval).await;
    }
}

/// Polls `futures` together on this task (the runtime's futures are not `Send`).
pub async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// SIGHUP through kill(1): the bench has no signal crate of its own.
async fn hup(pid: u32) -> anyhow::Result<()> {
    let status = tokio::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .await
        .context("running kill -HUP")?;
    if !status.success() {
        bail!("kill -HUP {pid} failed: {status}");
    }
    Ok(())
}

/// Where Debian's `wrk` lives (`scripts/install-deps` installs it).
pub const WRK: &str = "/usr/bin/wrk";

/// `wrk` running in the background against one URL until [`Wrk::stop`]: a client that never
/// sends a request twice. Dropping it kills the process.
pub struct Wrk {
    child: tokio::process::Child,
}

/// What `wrk` printed when it stopped. Every socket error and every non-2xx/3xx response
/// counts as failed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WrkReport {
    pub requests: u64,
    pub seconds: f64,
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub timeout: u64,
    pub non_2xx_3xx: u64,
    pub failed: u64,
}

impl Wrk {
    /// `wrk -t<threads> -c<connections> -d<bound> --timeout 5s [-s script] url`; the duration
    /// is only a bound, [`Wrk::stop`] ends it earlier.
    pub fn start(
        url: &str,
        threads: usize,
        connections: usize,
        bound: Duration,
        script: Option<&Path>,
    ) -> anyhow::Result<Wrk> {
        if !Path::new(WRK).exists() {
            bail!(
                "wrk not found at {WRK}: install it with scripts/install-deps (Debian package wrk)"
            );
        }
        let mut cmd = tokio::process::Command::new(WRK);
        cmd.arg(format!("-t{threads}"))
            .arg(format!("-c{connections}"))
            .arg(format!("-d{}s", bound.as_secs().max(1)))
            .args(["--timeout", "5s"]);
        if let Some(script) = script {
            cmd.arg("-s").arg(script);
        }
        let child = cmd
            .arg(url)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {WRK}"))?;
        Ok(Wrk { child })
    }

    /// SIGINT, as Ctrl-C would: wrk stops its threads within 100 ms and prints its summary.
    pub async fn stop(self) -> anyhow::Result<WrkReport> {
        let pid = self
            .child
            .id()
            .context("wrk exited before it was stopped")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .with_context(|| format!("sending SIGINT to wrk {pid}"))?;
        let out = self
            .child
            .wait_with_output()
            .await
            .context("waiting for wrk")?;
        let text = String::from_utf8_lossy(&out.stdout);
        parse_wrk(&text).with_context(|| {
            format!(
                "wrk {pid} ({}) printed no summary: {}{}",
                out.status,
                text.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
    }
}

/// Runs `work` under wrk on `url` (with `script`, if any): wrk starts, runs `warm`, `work`
/// runs, wrk runs `settle` more and is stopped. wrk's report and what `work` returned, which
/// the caller looks at after wrk's (a failed deploy still leaves wrk's count to read).
pub async fn under_wrk<T>(
    url: &str,
    (threads, connections): (usize, usize),
    (warm, settle): (Duration, Duration),
    script: Option<&Path>,
    work: impl Future<Output = T>,
) -> anyhow::Result<(WrkReport, T)> {
    let wrk = Wrk::start(url, threads, connections, Duration::from_secs(120), script)?;
    tokio::time::sleep(warm).await;
    let done = work.await;
    tokio::time::sleep(settle).await;
    let report = wrk.stop().await?;
    if report.requests == 0 {
        bail!("wrk sent no request to {url}");
    }
    Ok((report, done))
}

/// A wrk script that sends every request as a POST with a `bytes`-byte body, written into
/// `dir`; its path.
pub fn post_script(dir: &Path, bytes: usize) -> anyhow::Result<PathBuf> {
    let path = dir.join("post.lua");
    let script = format!(
        "wrk.method = \"POST\"\nwrk.body = string.rep(\"x\", {bytes})\n\
         wrk.headers[\"Content-Type\"] = \"application/octet-stream\"\n"
    );
    std::fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Reads wrk's summary: "N requests in Xs", and when present "Socket errors: connect N,
/// read N, write N, timeout N" and "Non-2xx or 3xx responses: N".
pub fn parse_wrk(text: &str) -> anyhow::Result<WrkReport> {
    let mut report = WrkReport::default();
    let mut seen = false;
    for line in text.lines().map(str::trim) {
        if let Some((n, rest)) = line.split_once(" requests in ") {
            report.requests = n.trim().parse().context("wrk's request count")?;
            let secs = rest.split(',').next().unwrap_or_default();
            report.seconds = wrk_seconds(secs.trim()).unwrap_or(0.0);
            seen = true;
        } else if let Some(errors) = line.strip_prefix("Socket errors:") {
            for part in errors.split(',') {
                let mut words = part.split_whitespace();
                let (kind, n) = (words.next(), words.next().and_then(|n| n.parse().ok()));
                match (kind, n) {
                    (Some("connect"), Some(n)) => report.connect = n,
                    (Some("read"), Some(n)) => report.read = n,
                    (Some("write"), Some(n)) => report.write = n,
                    (Some("timeout"), Some(n)) => report.timeout = n,
                    _ => bail!("unexpected wrk line {line:?}"),
                }
            }
        } else if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            report.non_2xx_3xx = n.trim().parse().context("wrk's non-2xx count")?;
        }
    }
    if !seen {
        bail!("no \"requests in\" line");
    }
    report.failed =
        report.connect + report.read + report.write + report.timeout + report.non_2xx_3xx;
    Ok(report)
}

/// "3.00s", "1.02m", "500.00ms" as seconds.
fn wrk_seconds(text: &str) -> Option<f64> {
    let (n, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    n.parse::<f64>().ok().map(|n| n * scale)
}

/// Counts an nginx master's live workers every `every` on a thread of its own, so the count
/// goes on while the bench's tasks are busy.
pub struct WorkerWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<WorkerPeak>,
}

/// What a [`WorkerWatch`] saw.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct WorkerPeak {
    pub samples: usize,
    pub most: usize,
    pub fewest: usize,
    /// Workers seen that the first sample did not have: `worker_processes` per reload.
    pub started: usize,
}

impl WorkerWatch {
    /// Counts from now (the first sample is taken at once) until [`WorkerWatch::stop`].
    pub fn start(master: u32, every: Duration) -> WorkerWatch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let first = switchyard_nginx::procs::workers(master);
            let mut seen: std::collections::BTreeSet<u32> = first.iter().copied().collect();
            let mut peak = WorkerPeak {
                samples: 1,
                most: first.len(),
                fewest: first.len(),
                started: 0,
            };
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(every);
                let workers = switchyard_nginx::procs::workers(master);
                peak.samples += 1;
                peak.most = peak.most.max(workers.len());
                peak.fewest = peak.fewest.min(workers.len());
                seen.extend(workers);
            }
            peak.started = seen.len() - first.len();
            peak
        });
        WorkerWatch { stop, thread }
    }

    pub fn stop(self) -> WorkerPeak {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().expect("the worker watch panicked")
    }
}

/// A whole number above 0 from the environment, or `default` when unset.
pub fn knob(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => match v.trim().parse() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("{name}={v:?}: expected a whole number above 0"),
        },
    }
}

/// The parts `SWITCHYARD_BENCH_PARTS` names (comma-separated), all of `known` when unset;
/// an unknown name is refused.
pub fn bench_parts(known: &[&'static str]) -> anyhow::Result<Vec<&'static str>> {
    let Ok(asked) = std::env::var("SWITCHYARD_BENCH_PARTS") else {
        return Ok(known.to_vec());
    };
    asked
        .split(',')
        .map(str::trim)
        .map(|p| {
            known.iter().find(|k| **k == p).copied().with_context(|| {
                format!(
                    "SWITCHYARD_BENCH_PARTS: unknown part {p:?}; the parts are {}",
                    known.join(", ")
                )
            })
        })
        .collect()
}

/// A loopback port free now.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Milliseconds since the Unix epoch, the clock the store's deployment rows and nginx's
/// access log use.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One HTTP/1.1 request on a fresh connection with `Connection: close` (nothing pooled,
/// nothing re-sent), `Authorization: Bearer <token>` when given: the status and the body.
/// Answers with `Content-Length` only (not chunked); fails after `within`.
pub async fn http_call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    within: Duration,
) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\n\
             Connection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(within, exchange)
        .await
        .with_context(|| format!("{method} http://{addr}{path}: no answer within {within:?}"))?
        .with_context(|| format!("{method} http://{addr}{path}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("{method} http://{addr}{path}: an incomplete answer"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{method} http://{addr}{path}: no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// The CPU time (user and system) process `pid` has used so far, from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("{path}: field {} is not a number", i + 3))
    };
    // utime and stime, fields 14 and 15 of stat(5), in clock ticks of 1/100 s (USER_HZ).
    let ticks = ticks(11)? + ticks(12)?;
    Ok(Duration::from_millis(ticks * 10))
}
