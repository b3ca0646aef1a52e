//! `switchyard --remote URL deploy …`: the deploy runs inside the `serve` at URL, through
//! its API (`POST /api/v1/services/{service}/deploy`), and this command follows the
//! deployment's event stream, printing a progress line per event and exiting with the code
//! the stream's `end` carries (0 done, 1 failed and rolled back, 2 refused, 3 environment).
//! The token comes from `--token-file` or `SWITCHYARD_TOKEN_FILE` (0600, as serve's own).
//!
//! `https://` verifies serve's certificate against the system's roots (`SSL_CERT_FILE` /
//! `SSL_CERT_DIR` when set) and `--remote-ca`; `http://` is for a serve on loopback. The
//! client is written over a `TcpStream` (in TLS, `serve/tls.rs`) by hand: one request per
//! connection, nothing re-sent.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchyard_app::progress::percent;
use switchyard_app::serve::tls;
use switchyard_app::AppError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Cli;

/// How long the deploy request may take to be answered (serve answers at Begin).
const ANSWER_WITHIN: Duration = Duration::from_secs(120);

pub async fn deploy(
    remote: &str,
    cli: &Cli,
    service: &str,
    version: &str,
    strategy: Option<&str>,
) -> Result<(), AppError> {
    let serve = Serve::parse(remote, cli.remote_ca.as_deref())?;
    let token = read_token(cli.token_file.as_deref())?;
    let authority = &serve.authority;
    let mut body = json!({ "version": version });
    if let Some(strategy) = strategy {
        body["strategy"] = json!(strategy);
    }
    let path = format!("/api/v1/services/{service}/deploy");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.to_string().len()
    );
    let answer = tokio::time::timeout(ANSWER_WITHIN, serve.exchange(&request))
        .await
        .map_err(|_| {
            AppError::environment(format!("{remote}: no answer within {ANSWER_WITHIN:?}"))
        })??;
    let (status, reply) = answer;
    let said = reply["error"].as_str().unwrap_or("").to_owned();
    let id = match status {
        200 | 202 => reply["deployment"].as_i64().ok_or_else(|| {
            AppError::environment(format!("{remote}: no deployment id in {reply}"))
        })?,
        400 | 401 | 404 | 409 => return Err(AppError::input(format!("{remote}: {said}"))),
        _ => {
            return Err(AppError::environment(format!(
                "{remote}: HTTP {status}: {said}"
            )))
        }
    };
    serve.follow(&token, id).await
}

/// The serve `--remote` names: its `host:port`, and how to speak TLS to it for `https://`.
struct Serve {
    authority: String,
    tls: Option<Arc<tls::ClientConfig>>,
}

/// A connection to serve, plain or TLS.
trait Connection: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Connection for T {}

impl Serve {
    /// `http://HOST:PORT` or `https://HOST:PORT`; `ca` (`--remote-ca`) for https only.
    fn parse(remote: &str, ca: Option<&Path>) -> Result<Serve, AppError> {
        let usage = || {
            AppError::input(format!(
                "--remote {remote:?}: use https://HOST:PORT (or http:// to a serve on loopback)"
            ))
        };
        let (rest, https) = match remote.strip_prefix("https://") {
            Some(rest) => (rest, true),
            None => (remote.strip_prefix("http://").ok_or_else(usage)?, false),
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(usage());
        }
        // The bearer token crosses the network in clear over http://: loopback only.
        let host = authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !https && !loopback {
            return Err(AppError::input(format!(
                "--remote {remote:?}: {host} is not loopback, and over http:// the token would cross the network in clear; use https:// (serve with [serve] cert and key)"
            )));
        }
        let tls = match (https, ca) {
            (false, Some(ca)) => {
                return Err(AppError::input(format!(
                    "--remote-ca {}: only an https:// remote is verified with a CA",
                    ca.display()
                )))
            }
            (false, None) => None,
            (true, ca) => Some(
                tls::client_config(ca.map(|ca| ("--remote-ca", ca)))
                    .map_err(|e| AppError::input(format!("{}: {e}", e.field)))?,
            ),
        };
        Ok(Serve {
            authority: authority.to_owned(),
            tls,
        })
    }

    async fn connect(&self) -> Result<Box<dyn Connection>, AppError> {
        let authority = &self.authority;
        let tcp = TcpStream::connect(authority)
            .await
            .map_err(|e| AppError::environment(format!("connecting to {authority}: {e}")))?;
        let Some(config) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        match tls::connect(tcp, authority, Arc::clone(config)).await {
            Ok(stream) => Ok(Box::new(stream)),
            Err(e) => Err(AppError::environment(format!(
                "TLS with {authority}: {e} (serve's certificate must be signed by a CA in the \
                 system's store, SSL_CERT_FILE or --remote-ca, for the name or address in the \
                 URL)"
            ))),
        }
    }

    /// One request, its whole answer: (status, JSON body).
    async fn exchange(&self, request: &str) -> Result<(u16, Value), AppError> {
        let authority = &self.authority;
        let mut stream = self.connect().await?;
        let io = |e: std::io::Error| AppError::environment(format!("{authority}: {e}"));
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.map_err(io)?;
        let (head, body) = raw.split_once("\r\n\r\n").ok_or_else(|| {
            // A serve with a certificate answers plain HTTP with a TLS alert, then closes.
            let hint = match (raw.starts_with("HTTP/"), &self.tls) {
                (false, None) => " (if serve has [serve] cert and key, use https://)",
                _ => "",
            };
            AppError::environment(format!("{authority}: an incomplete answer{hint}"))
        })?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = serde_json::from_str(body).unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// Follows deployment `id`'s event stream to its `end`.
    async fn follow(&self, token: &str, id: i64) -> Result<(), AppError> {
        let authority = &self.authority;
        let mut stream = self.connect().await?;
        let io = |e: std::io::Error| AppError::environment(format!("{authority}: {e}"));
        let request = format!(
            "GET /api/v1/deployments/{id}/events HTTP/1.1\r\nHost: {authority}\r\n\
             Authorization: Bearer {token}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        let mut lines = Lines::new();
        let mut sse = Sse::default();
        let mut buf = [0u8; 8192];
        // Bounded by the deployment: serve ends the stream after `end`.
        loop {
            let n = stream.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                return Err(AppError::environment(format!(
                    "{authority}: the event stream of deployment #{id} closed before its end \
                     (the deployment goes on in serve: see `history`)"
                )));
            }
            for (name, data) in sse.feed(&buf[..n])? {
                if name == "end" {
                    return match data["code"].as_i64().unwrap_or(3) {
                        0 => Ok(()),
                        code => Err(AppError {
                            code: code as i32,
                            message: data["error"]
                                .as_str()
                                .map_or(format!("deployment #{id} failed"), str::to_owned),
                        }),
                    };
                }
                if let Some(line) = lines.describe(&data) {
                    lines.print(line);
                }
            }
        }
    }
}

fn read_token(file: Option<&Path>) -> Result<String, AppError> {
    let file = file.ok_or_else(|| {
        AppError::input("--remote needs the API token: --token-file or SWITCHYARD_TOKEN_FILE")
    })?;
    if let Some(why) = switchyard_app::settings::token_file_problem(file) {
        return Err(AppError::input(format!(
            "--token-file {}: {why}",
            file.display()
        )));
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| AppError::input(format!("--token-file {}: {e}", file.display())))?;
    let token = text.trim();
    if token.is_empty() || token.contains(['\r', '\n']) {
        return Err(AppError::input(format!(
            "--token-file {}: holds no token (one line expected)",
            file.display()
        )));
    }
    Ok(token.to_owned())
}

/// A chunked `text/event-stream` answer, parsed as it arrives.
#[derive(Default)]
struct Sse {
    head_done: bool,
    raw: Vec<u8>,
    body: Vec<u8>,
}

impl Sse {
    /// The complete events in what has arrived so far: (event name, JSON data).
    fn feed(&mut self, bytes: &[u8]) -> Result<Vec<(String, Value)>, AppError> {
        self.raw.extend_from_slice(bytes);
        if !self.head_done {
            let Some(end) = self.raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                return Ok(Vec::new());
            };
            let head = String::from_utf8_lossy(&self.raw[..end]).into_owned();
            if !head.starts_with("HTTP/1.1 200") {
                let status = head.lines().next().unwrap_or("").to_owned();
                return Err(AppError::environment(format!("the event stream: {status}")));
            }
            self.raw.drain(..end + 4);
            self.head_done = true;
        }
        while let Some(line) = self.raw.windows(2).position(|w| w == b"\r\n") {
            let size = std::str::from_utf8(&self.raw[..line])
                .ok()
                .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                .ok_or_else(|| AppError::environment("the event stream: a bad chunk"))?;
            if self.raw.len() < line + 2 + size + 2 {
                break;
            }
            self.body
                .extend_from_slice(&self.raw[line + 2..line + 2 + size]);
            self.raw.drain(..line + 2 + size + 2);
        }
        let mut events = Vec::new();
        while let Some(end) = self.body.windows(2).position(|w| w == b"\n\n") {
            let block = String::from_utf8_lossy(&self.body[..end]).into_owned();
            self.body.drain(..end + 2);
            let mut name = String::from("message");
            let mut data = String::new();
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_owned();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            if let Ok(value) = serde_json::from_str(&data) {
                events.push((name, value));
            }
        }
        Ok(events)
    }
}

/// The progress lines a local deploy prints (`switchyard_app::progress`), from the JSON of
/// the engine's events.
struct Lines {
    start: Instant,
    last_failure: String,
}

impl Lines {
    fn new() -> Lines {
        Lines {
            start: Instant::now(),
            last_failure: String::new(),
        }
    }

    fn print(&self, text: String) {
        eprintln!("  {:>6.2}s  {text}", self.start.elapsed().as_secs_f64());
    }

    fn describe(&mut self, e: &Value) -> Option<String> {
        let s = |k: &str| e[k].as_str().unwrap_or("").to_owned();
        let n = |k: &str| e[k].as_u64().unwrap_or(0);
        let weight = || percent(n("weight_bp") as u32);
        Some(match e["event"].as_str()? {
            "begin" => format!(
                "deployment #{}: {} {} -> {} ({} slot)",
                n("deployment"),
                s("service"),
                e["from"].as_str().unwrap_or("nothing"),
                s("to"),
                s("color")
            ),
            "resume" => format!("resuming: {}", s("reason")),
            "started" => {
                let how = if e["reused"] == true { "restarted" } else { "started" };
                format!("{how} {} on {}", s("instance"), s("addr"))
            }
            "waiting" if n("passes") == n("needed") => {
                format!("{} healthy ({} passes in a row)", s("instance"), n("needed"))
            }
            "waiting" if n("passes") == 0 && s("last") != self.last_failure => {
                self.last_failure = s("last");
                format!("{} not healthy yet: {}", s("instance"), s("last"))
            }
            "waiting" => return None,
            "healthy" => format!("all replicas healthy after {} ms", n("waited_ms")),
            "reloaded" => format!(
                "traffic moved: generation {} live (confirmed in {} ms)",
                n("generation"),
                n("confirm_ms")
            ),
            "drained" => match e["lingering"].as_str() {
                None => format!("old traffic drained after {} ms", n("waited_ms")),
                Some(left) => format!("{left} after {} ms (drain timeout)", n("waited_ms")),
            },
            "shifted" => format!(
                "canary at {}% (generation {}, confirmed in {} ms)",
                weight(),
                n("generation"),
                n("confirm_ms")
            ),
            "analysis" => {
                let what = match e["verdict"]["verdict"].as_str() {
                    Some("pass") => "pass",
                    Some("nodata") => "no data",
                    Some("inconclusive") => "inconclusive",
                    _ => "FAIL",
                };
                let why = e["verdict"]["reason"].as_str().unwrap_or("");
                format!("canary at {}%: {what}: {why}", weight())
            }
            "paused" => format!(
                "canary at {}% paused: run `switchyard promote` to go on or `switchyard abort` to roll back",
                weight()
            ),
            "rolled_back" => format!(
                "rolled back: all traffic on the stable version (generation {}): {}",
                n("generation"),
                s("reason")
            ),
            "stopped" => format!("stopped {} (kept for rollback)", s("instance")),
            "removed" => format!("removed {}", s("instance")),
            "done" => format!(
                "deployment #{} {}: {}",
                n("deployment"),
                s("outcome"),
                s("message")
            ),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Serve;

    #[test]
    fn plain_http_is_for_loopback_only() {
        for ok in [
            "http://127.0.0.1:9100",
            "http://localhost:9100/",
            "http://[::1]:9100",
        ] {
            assert!(Serve::parse(ok, None).is_ok(), "{ok}");
        }
        let err = Serve::parse("http://10.0.0.5:9100", None).err().unwrap();
        assert!(err.message.contains("cross the network in clear"), "{err}");
        assert!(Serve::parse("https://10.0.0.5:9100", None).is_ok());
    }
}
