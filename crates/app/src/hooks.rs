//! The real [`Hooks`]: [`HookRunner`] runs a service's hook commands and posts its webhooks,
//! and [`resolve`] checks `[service.hooks]` on disk when the config is loaded.
//!
//! A command is an argv (never a shell string), run in its own process group with stdin
//! closed and the deployment in its environment (`SWITCHYARD_SERVICE`, `_VERSION`,
//! `_PREVIOUS`, `_DEPLOYMENT`, `_STRATEGY`, `_REPLICAS`, `_HOOK`); stdout and stderr go to one
//! pipe, of which the last [`OUTPUT_CAP`] bytes are kept. At its timeout the whole group is
//! killed. A webhook is a POST of the [`HookCall`] as JSON, signed when the hook has a
//! `secret_file` with `X-Switchyard-Signature: sha256=<hex HMAC-SHA256 of the body>`; an
//! answer outside 2xx fails it. The key is read from its file when the hook runs and never
//! printed. What a hook prints or answers is kept (journaled, shown, sent on) with the key
//! and the service's `env_file` and `secrets` values replaced by `[redacted]`
//! ([`HookRunner::redacting`]).

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use switchyard_engine::config::{HookAction, HookSpec};
use switchyard_engine::{Config, HookCall, HookFuture, HookRun, Hooks};

use crate::AppError;

/// How much of a hook's output (or a webhook's answer) is kept: the last 64 KiB.
pub const OUTPUT_CAP: usize = 64 * 1024;

/// The header that carries a webhook's signature.
pub const SIGNATURE_HEADER: &str = "X-Switchyard-Signature";

/// How long output is still read after a command exited (a child it left may hold the pipe).
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// Runs hooks for real: commands with tokio, webhooks with reqwest.
pub struct HookRunner {
    client: reqwest::Client,
    /// Each service's secret values, replaced in what its hooks print or answer.
    secrets: BTreeMap<String, Vec<String>>,
}

impl Default for HookRunner {
    /// A client that follows no redirect: a 3xx answer fails the hook rather than re-sending
    /// the payload (and its signature) somewhere else.
    fn default() -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        HookRunner {
            client,
            secrets: BTreeMap::new(),
        }
    }
}

impl Hooks for HookRunner {
    fn run<'a>(&'a self, hook: &'a HookSpec, call: &'a HookCall) -> HookFuture<'a> {
        Box::pin(async move {
            let run = match &hook.action {
                HookAction::Command(argv) => run_command(argv, hook.timeout, call).await,
                HookAction::Webhook { url, secret_file } => {
                    self.post(url, secret_file.as_deref(), hook.timeout, call)
                        .await
                }
            };
            self.redacted(&call.service, run)
        })
    }
}

impl HookRunner {
    /// A runner that keeps every value of each service's `env_file` and `secrets` in
    /// `config` (read by [`crate::secrets::read`]) out of what that service's hooks print or
    /// answer: a hook may read the same secrets as the app.
    pub fn redacting(config: &Config) -> HookRunner {
        let secrets = config
            .services
            .iter()
            .map(|s| {
                let values = crate::secrets::values(s).into_iter().map(str::to_owned);
                (s.name.to_string(), values.collect())
            })
            .collect();
        HookRunner {
            secrets,
            ..HookRunner::default()
        }
    }

    fn redacted(&self, service: &str, run: HookRun) -> HookRun {
        let Some(values) = self.secrets.get(service).filter(|v| !v.is_empty()) else {
            return run;
        };
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        HookRun {
            summary: crate::secrets::redact(&run.summary, &values),
            output: crate::secrets::redact(&run.output, &values),
            ..run
        }
    }
}

/// The environment a hook command gets, beyond switchyard's own.
pub fn environment(call: &HookCall) -> Vec<(&'static str, String)> {
    let replicas: Vec<String> = call.replicas.iter().map(|a| a.to_string()).collect();
    vec![
        ("SWITCHYARD_HOOK", call.hook.as_str().to_owned()),
        ("SWITCHYARD_SERVICE", call.service.clone()),
        ("SWITCHYARD_VERSION", call.version.clone()),
        (
            "SWITCHYARD_PREVIOUS",
            call.previous.clone().unwrap_or_default(),
        ),
        ("SWITCHYARD_DEPLOYMENT", call.deployment.to_string()),
        ("SWITCHYARD_STRATEGY", call.strategy.clone()),
        ("SWITCHYARD_REPLICAS", replicas.join(",")),
    ]
}

async fn run_command(argv: &[String], timeout: Duration, call: &HookCall) -> HookRun {
    let failed = |summary: String| HookRun {
        ok: false,
        summary,
        output: String::new(),
    };
    let (reader, writer) = match std::io::pipe() {
        Ok(pipe) => pipe,
        Err(e) => return failed(format!("could not make a pipe for {}: {e}", argv[0])),
    };
    let stderr = match writer.try_clone() {
        Ok(w) => w,
        Err(e) => return failed(format!("could not make a pipe for {}: {e}", argv[0])),
    };
    let mut command = tokio::process::Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .envs(environment(call))
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(stderr)
        .process_group(0)
        .kill_on_drop(true);
    let child = command.spawn();
    // The parent's copies of the write end go, so the pipe ends when the hook's group does.
    drop(command);
    let mut child = match child {
        Ok(child) => child,
        Err(e) => return failed(format!("could not run {}: {e}", argv[0])),
    };
    let tail = Arc::new(Mutex::new(Tail::default()));
    let reading = tokio::task::spawn_blocking({
        let tail = tail.clone();
        move || read_into(reader, &tail)
    });
    let summary = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => match (status.code(), status.signal()) {
            (Some(0), _) => Ok("exit 0".to_owned()),
            (Some(code), _) => Err(format!("exit {code}")),
            (None, Some(signal)) => Err(format!("killed by signal {signal}")),
            (None, None) => Err(format!("ended with {status}")),
        },
        Ok(Err(e)) => Err(format!("waiting for {}: {e}", argv[0])),
        Err(_) => {
            kill_group(child.id());
            let _ = child.wait().await;
            Err(format!(
                "timed out after {} (its process group was killed)",
                humantime(timeout)
            ))
        }
    };
    let _ = tokio::time::timeout(OUTPUT_GRACE, reading).await;
    let output = tail.lock().expect("hook output lock").text();
    match summary {
        Ok(summary) => HookRun {
            ok: true,
            summary,
            output,
        },
        Err(summary) => HookRun {
            ok: false,
            summary,
            output,
        },
    }
}

/// SIGKILL to the process group `pid` leads (the hook and whatever it started).
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn read_into(mut reader: std::io::PipeReader, tail: &Mutex<Tail>) {
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => tail.lock().expect("hook output lock").push(&buf[..n]),
        }
    }
}

/// The last [`OUTPUT_CAP`] bytes of a stream, and how many were cut before them.
#[derive(Default)]
struct Tail {
    bytes: Vec<u8>,
    cut: usize,
}

impl Tail {
    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
        if self.bytes.len() > OUTPUT_CAP {
            let excess = self.bytes.len() - OUTPUT_CAP;
            self.bytes.drain(..excess);
            self.cut += excess;
        }
    }

    /// The tail as text. After a cut, the partial first line goes too: it could hold the
    /// end of a secret whose start was cut, which redaction could not recognise.
    fn text(&self) -> String {
        if self.cut == 0 {
            return String::from_utf8_lossy(&self.bytes).into_owned();
        }
        let partial = self
            .bytes
            .iter()
            .position(|&b| b == b'\n')
            .map_or(self.bytes.len(), |at| at + 1);
        let cut = self.cut + partial;
        let text = String::from_utf8_lossy(&self.bytes[partial..]);
        format!("[{cut} earlier bytes cut]\n{text}")
    }
}

impl HookRunner {
    async fn post(
        &self,
        url: &str,
        secret_file: Option<&Path>,
        timeout: Duration,
        call: &HookCall,
    ) -> HookRun {
        let failed = |summary: String| HookRun {
            ok: false,
            summary,
            output: String::new(),
        };
        let body = match serde_json::to_vec(call) {
            Ok(body) => body,
            Err(e) => return failed(format!("encoding the payload: {e}")),
        };
        let mut request = self
            .client
            .post(url)
            .timeout(timeout)
            .header("content-type", "application/json");
        let mut key_text = None;
        if let Some(file) = secret_file {
            match read_key(file) {
                Ok(key) => {
                    request = request.header(SIGNATURE_HEADER, signature(&key, &body));
                    key_text = String::from_utf8(key).ok();
                }
                Err(e) => return failed(e),
            }
        }
        let response = match request.body(body).send().await {
            Ok(response) => response,
            Err(e) if e.is_timeout() => {
                return failed(format!(
                    "POST {url}: timed out after {}",
                    humantime(timeout)
                ))
            }
            Err(e) => {
                return failed(format!(
                    "POST {url}: {}",
                    switchyard_engine::error_chain(&e)
                ))
            }
        };
        let status = response.status();
        let mut tail = Tail::default();
        // The answer's tail, within what is left of the timeout's spirit: a few seconds.
        let read = tokio::time::timeout(timeout, response.bytes()).await;
        if let Ok(Ok(bytes)) = read {
            tail.push(&bytes);
        }
        // A receiver that echoes what it was sent would echo no key, but one that prints
        // its configuration might.
        let keys: Vec<&str> = key_text
            .iter()
            .map(String::as_str)
            .filter(|k| k.len() >= crate::secrets::REDACT_MIN_LEN)
            .collect();
        HookRun {
            ok: status.is_success(),
            summary: format!("HTTP {}", status.as_u16()),
            output: crate::secrets::redact(&tail.text(), &keys),
        }
    }
}

/// `sha256=<hex HMAC-SHA256 of body with key>`.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// The signing key: the file's content without its final newline. Errors name the file only.
fn read_key(file: &Path) -> Result<Vec<u8>, String> {
    let mut key = std::fs::read(file)
        .map_err(|e| format!("reading the secret_file {}: {e}", file.display()))?;
    if key.last() == Some(&b'\n') {
        key.pop();
    }
    Ok(key)
}

fn humantime(d: Duration) -> String {
    match d.as_millis() {
        ms if ms % 1000 != 0 => format!("{ms}ms"),
        ms => format!("{}s", ms / 1000),
    }
}

/// At load: resolves each hook's relative program (one naming a directory) and
/// `secret_file` against `base`, the config's directory, and checks them on disk: the
/// program exists, the secret file exists and is readable by its owner only (0600). One
/// error naming `file:line:column: field` per problem (exit 2).
pub fn resolve(config: &mut Config, base: &Path, file: &Path) -> Result<(), AppError> {
    let mut problems = Vec::new();
    for service in &mut config.services {
        let name = service.name.to_string();
        for (point, hook) in service.hooks.all_mut() {
            let (line, column) = hook.at;
            let mut problem = |field: &str, message: String| {
                problems.push(format!(
                    "{}:{line}:{column}: service.hooks.{}.{field}: service {name}: {message}",
                    file.display(),
                    point.as_str()
                ))
            };
            match &mut hook.action {
                HookAction::Command(argv) => {
                    if !argv[0].contains('/') {
                        continue;
                    }
                    if Path::new(&argv[0]).is_relative() {
                        argv[0] = base.join(&argv[0]).display().to_string();
                    }
                    match std::fs::metadata(&argv[0]) {
                        Ok(meta) if meta.is_file() => {}
                        Ok(_) => problem("command", format!("{} is not a file", argv[0])),
                        Err(e) => problem("command", format!("{}: {e}", argv[0])),
                    }
                }
                HookAction::Webhook {
                    secret_file: Some(secret),
                    ..
                } => {
                    if secret.is_relative() {
                        *secret = base.join(&*secret);
                    }
                    match std::fs::metadata(&*secret) {
                        Ok(meta) if !meta.is_file() => {
                            problem("secret_file", format!("{} is not a file", secret.display()))
                        }
                        Ok(meta) if meta.permissions().mode() & 0o077 != 0 => problem(
                            "secret_file",
                            format!(
                                "{} is readable by group or others (mode {:03o}); `chmod 600` it",
                                secret.display(),
                                meta.permissions().mode() & 0o777
                            ),
                        ),
                        Ok(_) => {}
                        Err(e) => problem("secret_file", format!("{}: {e}", secret.display())),
                    }
                }
                HookAction::Webhook { .. } => {}
            }
        }
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(AppError::input(problems.join("\n"))),
    }
}

#[cfg(test)]
mod tests;
