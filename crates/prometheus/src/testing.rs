//! [`TestPrometheus`]: a real Prometheus for tests, on a free loopback port with its own
//! config and data directory, scraping one target's `/metrics`.
//!
//! Tests that need it call [`start_or_skip`]: where `CI` is set a missing Prometheus fails
//! the test; elsewhere the test prints a loud `SKIPPED:` line. The process is stopped by
//! its PID (SIGTERM, then SIGKILL after 10 s) on [`TestPrometheus::stop`] or drop, so a
//! failing test stops it too.
//!
//! Prometheus 2.42 is ready within ~0.1 s but scrapes for the first time ~5 s later (its
//! discovery and scrape managers apply new targets on a 5 s tick, with no flag to change
//! it): wait with [`TestPrometheus::wait_scraped`] or poll for data, never a fixed sleep.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::PromClient;

/// Debian's `prometheus` package puts the server here.
pub const PROMETHEUS: &str = "/usr/bin/prometheus";

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct TestPrometheus {
    // Declared before `dir`: fields drop in order, so the process stops before its
    // directory is removed.
    process: Option<Process>,
    url: String,
    scrape_interval: Duration,
    dir: tempfile::TempDir,
}

impl TestPrometheus {
    /// Whether the Prometheus binary is installed.
    pub fn available() -> bool {
        Path::new(PROMETHEUS).exists()
    }

    /// Starts Prometheus scraping `http://{scrape_target}/metrics` every `scrape_interval`
    /// (job `switchyard`) and waits until `/-/ready` answers. The error carries
    /// Prometheus's own output.
    pub async fn start(
        scrape_target: SocketAddr,
        scrape_interval: Duration,
    ) -> Result<TestPrometheus, String> {
        if !Self::available() {
            return Err(format!(
                "{PROMETHEUS} is missing (apt-get install prometheus)"
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("switchyard-prometheus-")
            .tempdir()
            .map_err(|e| format!("creating a directory for prometheus: {e}"))?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, config_yaml(scrape_target, scrape_interval))
            .map_err(|e| format!("writing {}: {e}", config.display()))?;
        let log = dir.path().join("prometheus.log");
        // The free port may be taken between our probe and Prometheus's bind: try again.
        let mut attempts = 3;
        loop {
            let port = free_port().map_err(|e| format!("finding a free port: {e}"))?;
            let url = format!("http://127.0.0.1:{port}");
            let mut process = Process::spawn(dir.path(), &config, &log, port)?;
            match process.wait_ready(&url, &log).await {
                Ok(()) => {
                    return Ok(TestPrometheus {
                        process: Some(process),
                        url,
                        scrape_interval,
                        dir,
                    })
                }
                Err(e) => {
                    drop(process);
                    attempts -= 1;
                    let in_use = read(&log).contains("address already in use");
                    if !in_use || attempts == 0 {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// The server's root URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn client(&self, timeout: Duration) -> PromClient {
        PromClient::new(&self.url, timeout)
    }

    pub fn scrape_interval(&self) -> Duration {
        self.scrape_interval
    }

    /// The PID while running.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.0.id())
    }

    /// What Prometheus logged so far.
    pub fn log(&self) -> String {
        read(&self.dir.path().join("prometheus.log"))
    }

    /// Waits until the target has been scraped successfully (`up == 1`).
    pub async fn wait_scraped(&self, timeout: Duration) -> Result<(), String> {
        let client = self.client(Duration::from_secs(1));
        let since = Instant::now();
        loop {
            let up = client.query(r#"up{job="switchyard"} == 1"#, None).await;
            if up.is_ok_and(|samples| !samples.is_empty()) {
                return Ok(());
            }
            if since.elapsed() > timeout {
                return Err(format!(
                    "prometheus at {} did not scrape its target within {timeout:?}",
                    self.url
                ));
            }
            tokio::time::sleep(self.scrape_interval / 4).await;
        }
    }

    /// SIGTERM by PID, then waits for the exit (SIGKILL after 10 s). Idempotent; dropping
    /// the handle does the same.
    pub fn stop(&mut self) {
        self.process.take();
    }
}

/// The Prometheus child; dropping it stops it.
struct Process(Child);

impl Process {
    fn spawn(dir: &Path, config: &Path, log: &Path, port: u16) -> Result<Process, String> {
        let out = File::create(log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("opening {}: {e}", log.display()))?;
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--storage.tsdb.retention.time=1h")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {PROMETHEUS}: {e}"))?;
        Ok(Process(child))
    }

    async fn wait_ready(&mut self, url: &str, log: &Path) -> Result<(), String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .map_err(|e| format!("building an HTTP client: {e}"))?;
        let ready = format!("{url}/-/ready");
        let since = Instant::now();
        loop {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Err(format!(
                    "prometheus exited ({status}) before it was ready:\n{}",
                    tail(&read(log), 20)
                ));
            }
            let answer = http.get(&ready).send().await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            if since.elapsed() > READY_TIMEOUT {
                return Err(format!(
                    "prometheus at {url} not ready within {READY_TIMEOUT:?}:\n{}",
                    tail(&read(log), 20)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let child = &mut self.0;
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let since = Instant::now();
        while since.elapsed() < STOP_TIMEOUT {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "prometheus pid {} ignored SIGTERM for {STOP_TIMEOUT:?}; killing it",
            child.id()
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Starts a Prometheus, or returns `None` after a loud skip when it is not installed and
/// `CI` is not set. Panics when `CI` is set and it is missing, or when it fails to start.
pub async fn start_or_skip(
    scrape_target: SocketAddr,
    scrape_interval: Duration,
) -> Option<TestPrometheus> {
    if !TestPrometheus::available() {
        if std::env::var_os("CI").is_some() {
            panic!("{PROMETHEUS} is required when CI is set, and it is missing");
        }
        eprintln!(
            "SKIPPED: {PROMETHEUS} is missing (apt-get install prometheus; set CI=1 to make this a failure)"
        );
        return None;
    }
    match TestPrometheus::start(scrape_target, scrape_interval).await {
        Ok(prom) => Some(prom),
        Err(e) => panic!("starting prometheus: {e}"),
    }
}

fn config_yaml(target: SocketAddr, scrape_interval: Duration) -> String {
    let interval = scrape_interval.as_millis().max(1);
    // Prometheus refuses a scrape timeout longer than the interval.
    let timeout = interval.min(10_000);
    format!(
        "global:\n  scrape_interval: {interval}ms\n  scrape_timeout: {timeout}ms\n  \
         evaluation_interval: {interval}ms\nscrape_configs:\n  - job_name: switchyard\n    \
         metrics_path: /metrics\n    static_configs:\n      - targets: ['{target}']\n"
    )
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_scrapes_one_target_at_the_interval() {
        let yaml = config_yaml("127.0.0.1:8080".parse().unwrap(), Duration::from_secs(1));
        assert_eq!(
            yaml,
            "global:\n  scrape_interval: 1000ms\n  scrape_timeout: 1000ms\n  \
             evaluation_interval: 1000ms\nscrape_configs:\n  - job_name: switchyard\n    \
             metrics_path: /metrics\n    static_configs:\n      - targets: ['127.0.0.1:8080']\n"
        );
    }
}
