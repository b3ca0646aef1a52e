//! One switchyard installation as an operator runs it: a [`Host`] is a [`Sandbox`] (managed
//! nginx, the demo-app as local processes) whose config opens the API with a token file, the
//! `switchyard` binary run against it as a child process for every deploy and history read
//! ([`Host::deploy`]), and, when asked, `switchyard serve` running beside it as a process of
//! its own ([`ServeProcess`]), as the dashboard and `--remote` reach it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::Value;
use switchyard_app::sandbox::{Sandbox, SandboxOptions, SERVICE};

use crate::common::{free_port, http_call};

/// The API's bearer token (loopback only; never printed).
pub const TOKEN: &str = "bench-control-7c41e9a2";
/// The longest one CLI command or API exchange may take.
const PATIENCE: Duration = Duration::from_secs(120);
/// How long serve may take to answer `/healthz` after it was started.
const SERVE_START: Duration = Duration::from_secs(20);

/// How a deploy is driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// `switchyard deploy web --version V`: the engine runs in that process.
    Cli,
    /// `switchyard --remote http://serve deploy web --version V`: `POST …/deploy`, answered
    /// 202 with the id, then the deployment's event stream followed to its `end`; the engine
    /// runs inside serve.
    Api,
}

impl Driver {
    pub fn name(self) -> &'static str {
        match self {
            Driver::Cli => "cli",
            Driver::Api => "api",
        }
    }
}

pub struct Host {
    pub sandbox: Sandbox,
    /// Holds the token file (the sandbox's directory does not exist before its config).
    _token_dir: tempfile::TempDir,
    token_file: PathBuf,
    serve: Option<ServeProcess>,
}

/// `switchyard serve` as a child process; SIGTERM on [`ServeProcess::stop`], SIGKILL when
/// dropped.
pub struct ServeProcess {
    child: tokio::process::Child,
    pub addr: SocketAddr,
    pub pid: u32,
}

impl Host {
    /// A sandbox from `options` plus `extra` services (`svc-1` …, one replica each, the same
    /// demo-app and health), the API opened with [`TOKEN`]; serve started when `serve`.
    pub async fn start(
        mut options: SandboxOptions,
        extra: usize,
        serve: bool,
    ) -> anyhow::Result<Host> {
        let token_dir = tempfile::tempdir().context("a directory for the token file")?;
        let token_file = token_dir.path().join("api.token");
        write_private(&token_file, &format!("{TOKEN}\n"))?;
        let serve_addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        options.tables = format!(
            "[serve]\nlisten = \"{serve_addr}\"\ntoken_file = {:?}\n{}{}",
            token_file.display().to_string(),
            extra_services(&options, extra)?,
            options.tables
        );
        let sandbox = Sandbox::start(&options)
            .await
            .context("starting the sandbox")?;
        let mut host = Host {
            sandbox,
            _token_dir: token_dir,
            token_file,
            serve: None,
        };
        if serve {
            host.serve = Some(ServeProcess::start(&host.sandbox, serve_addr).await?);
        }
        Ok(host)
    }

    pub fn serve(&self) -> anyhow::Result<&ServeProcess> {
        self.serve.as_ref().context("this host runs no serve")
    }

    /// The services of the config: `web`, then `svc-1` ….
    pub fn services(&self) -> Vec<String> {
        let config = &self.sandbox.live().config;
        config.services.iter().map(|s| s.name.to_string()).collect()
    }

    /// Runs `switchyard --config <sandbox> <args>` to its end; its stdout, or an error with
    /// what it printed when it did not exit 0.
    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("--config")
            .arg(&self.sandbox.config_path)
            .args(args)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(PATIENCE, run)
            .await
            .with_context(|| {
                format!(
                    "switchyard {}: not done within {PATIENCE:?}",
                    args.join(" ")
                )
            })?
            .context("running switchyard")?;
        if !out.status.success() {
            bail!(
                "switchyard {} exited with {}: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Deploys `version` of `service` (with `strategy`, else the service's) through
    /// `driver`; how long the command took, from spawn to exit.
    pub async fn deploy(
        &self,
        driver: Driver,
        service: &str,
        version: &str,
        strategy: Option<&str>,
    ) -> anyhow::Result<Duration> {
        let remote;
        let token = self.token_file.display().to_string();
        let mut args = Vec::new();
        if driver == Driver::Api {
            remote = format!("http://{}", self.serve()?.addr);
            args.extend(["--remote", remote.as_str(), "--token-file", token.as_str()]);
        }
        args.extend(["deploy", service, "--version", version]);
        if let Some(strategy) = strategy {
            args.extend(["--strategy", strategy]);
        }
        let since = Instant::now();
        self.cli(&args).await?;
        Ok(since.elapsed())
    }

    /// The newest deployment of `service` as `switchyard --output json history` lists it:
    /// the record with its `disruption`.
    pub async fn last_deployment(&self, service: &str) -> anyhow::Result<Value> {
        let out = self
            .cli(&["--output", "json", "history", service, "--limit", "1"])
            .await?;
        let listed: Value = serde_json::from_str(&out)
            .with_context(|| format!("history --output json: not JSON: {out}"))?;
        listed["deployments"]
            .get(0)
            .cloned()
            .with_context(|| format!("history of {service} is empty: {listed}"))
    }

    /// Stops serve first (it would start the nginx the sandbox stops again), then the
    /// sandbox: every replica of every service, and nginx.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let stopped = match self.serve.take() {
            Some(serve) => serve.stop().await,
            None => Ok(()),
        };
        self.sandbox
            .shutdown()
            .await
            .context("shutting the sandbox down")?;
        stopped
    }
}

impl ServeProcess {
    /// `switchyard --config <sandbox> serve`, its output in `serve.log` in the sandbox;
    /// returns once `/healthz` answers 200.
    async fn start(sandbox: &Sandbox, addr: SocketAddr) -> anyhow::Result<ServeProcess> {
        let log_path = sandbox.dir.path().join("serve.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("--config")
            .arg(&sandbox.config_path)
            .arg("serve")
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting switchyard serve")?;
        let pid = child.id().context("serve exited at once")?;
        let serve = ServeProcess { child, addr, pid };
        let since = Instant::now();
        loop {
            let healthz = http_call(addr, "GET", "/healthz", None, Duration::from_secs(1)).await;
            if matches!(healthz, Ok((200, _))) {
                return Ok(serve);
            }
            if since.elapsed() > SERVE_START {
                let said = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!("switchyard serve: /healthz not 200 within {SERVE_START:?}: {said}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET path` with the token: the status, the JSON body and how long it took.
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, Value, Duration)> {
        let since = Instant::now();
        let (status, body) = http_call(self.addr, "GET", path, Some(TOKEN), PATIENCE).await?;
        let took = since.elapsed();
        let json = serde_json::from_str(&body)
            .with_context(|| format!("GET {path}: {status}, not JSON: {body}"))?;
        Ok((status, json, took))
    }

    /// SIGTERM, as systemd stops it, and the wait for it to exit (SIGKILL after 30 s).
    async fn stop(mut self) -> anyhow::Result<()> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .with_context(|| format!("sending SIGTERM to serve {}", self.pid))?;
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => {
                status.context("waiting for serve")?;
                Ok(())
            }
            Err(_) => {
                self.child.kill().await.context("killing serve")?;
                bail!("serve {} did not stop within 30 s of SIGTERM", self.pid)
            }
        }
    }
}

/// `[[service]]` tables `svc-1` … `svc-<extra>`: one replica of the sandbox's demo-app
/// each, on a free loopback listen, with the sandbox's health check.
fn extra_services(options: &SandboxOptions, extra: usize) -> anyhow::Result<String> {
    let mut tables = String::new();
    for k in 1..=extra {
        let listen = format!("127.0.0.1:{}", free_port()?);
        tables.push_str(&format!(
            "\n[[service]]\nname = \"svc-{k}\"\nlisten = \"{listen}\"\ncommand = [{:?}]\n\
             port = 8080\nreplicas = 1\nstop_timeout = \"5s\"\nhealth = {{ {} }}\n",
            options.app_binary.display().to_string(),
            options.health
        ));
    }
    Ok(tables)
}

/// Writes `text` to a new file readable by its owner only (serve refuses a token file
/// others can read).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 600 {}", path.display()))
}

/// The sandbox's own service.
pub const WEB: &str = SERVICE;
