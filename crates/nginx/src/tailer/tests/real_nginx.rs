//! A real nginx writes [`LOG_FORMAT`](crate::tailer::LOG_FORMAT) for requests to an upstream
//! named `sy_demo_canary`, and the [`Tailer`] reads back exactly the requests sent.
//! Skips loudly without `/usr/sbin/nginx`; fails instead where `CI` is set.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::procs;
use crate::tailer::{log_format_directive, ProxyRecord, Start, Tailer, LOG_FORMAT_NAME};

const NGINX: &str = "/usr/sbin/nginx";
const REQUESTS: usize = 50;

/// An nginx started in its own prefix, stopped (SIGTERM to the pid in its pid file) on drop.
struct Nginx {
    pid_file: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let Some(pid) = procs::read_pid(&self.pid_file) else {
            return;
        };
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while procs::alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `/` routes to `sy_demo_canary` through a variable, as the canary template's `proxy_pass`
/// does; `/retry` to `sy_demo_stable`, whose first server refuses connections.
fn config(prefix: &Path, access_log: &Path, backend: u16, listen: u16) -> String {
    format!(
        "worker_processes 1;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    {directive}
    access_log {access_log} {LOG_FORMAT_NAME};
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream sy_demo_canary {{ server 127.0.0.1:{backend}; }}
    upstream sy_demo_stable {{
        server 127.0.0.1:{refused} max_fails=0;
        server 127.0.0.1:{backend} max_fails=0;
    }}
    map $http_x_track $sy_demo_track {{ default canary; }}
    server {{
        listen 127.0.0.1:{listen};
        location / {{ proxy_pass http://sy_demo_$sy_demo_track; }}
        location /retry {{ proxy_pass http://sy_demo_stable; }}
    }}
}}
",
        prefix = prefix.display(),
        access_log = access_log.display(),
        directive = log_format_directive(),
        refused = free_port(),
    )
}

/// Answers every request on a connection `200 ok`.
async fn backend(listener: TcpListener) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
                while let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                    request.drain(..end + 4);
                    let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    if conn.write_all(reply).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}

async fn get(port: u16, path: &str) -> String {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    response
}

/// A running nginx, its backend, and a tailer at the end of its (empty) access log.
struct Fixture {
    listen: u16,
    backend: String,
    tailer: Tailer,
    _nginx: Nginx,
    _prefix: tempfile::TempDir,
}

/// `None` (after saying so) where nginx is missing and `CI` is not set.
async fn start() -> Option<Fixture> {
    if !Path::new(NGINX).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{NGINX} is required when CI is set, and it is missing"
        );
        eprintln!("SKIPPED: {NGINX} is missing (set CI=1 to make this a failure)");
        return None;
    }
    let prefix = tempfile::tempdir().unwrap();
    let access_log = prefix.path().join("access.log");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_port = listener.local_addr().unwrap().port();
    tokio::spawn(backend(listener));
    let listen = free_port();
    let conf = prefix.path().join("nginx.conf");
    std::fs::write(
        &conf,
        config(prefix.path(), &access_log, backend_port, listen),
    )
    .unwrap();
    let output = tokio::process::Command::new(NGINX)
        .arg("-p")
        .arg(prefix.path())
        .arg("-e")
        .arg(prefix.path().join("error.log"))
        .arg("-c")
        .arg(&conf)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "starting nginx failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let nginx = Nginx {
        pid_file: prefix.path().join("nginx.pid"),
    };
    Some(Fixture {
        listen,
        backend: format!("127.0.0.1:{backend_port}"),
        tailer: Tailer::open(&access_log, Start::End).unwrap(),
        _nginx: nginx,
        _prefix: prefix,
    })
}

impl Fixture {
    /// Sends `n` requests for `path`, each answered 200, and reads back their records: exactly
    /// `n` of them, none malformed.
    async fn requests(&mut self, path: &str, n: usize) -> Vec<ProxyRecord> {
        for _ in 0..n {
            let response = get(self.listen, path).await;
            assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        }
        let mut records = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while records.len() < n {
            let stats = self.tailer.poll(&mut |r| records.push(r)).unwrap();
            assert_eq!(stats.malformed, 0, "{:?}", stats.first_malformed);
            assert_eq!(stats.skipped, 0);
            assert!(
                Instant::now() < deadline,
                "read {} of {n} records",
                records.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Nothing more arrives: exactly one line per request.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.tailer.poll(&mut |r| records.push(r)).unwrap();
        assert_eq!(records.len(), n);
        records
    }
}

#[tokio::test]
async fn real_nginx_lines_parse_into_one_record_per_request() {
    let Some(mut nginx) = start().await else {
        return;
    };
    let records = nginx.requests("/", REQUESTS).await;
    for r in &records {
        assert_eq!(
            (r.service.as_str(), r.track.as_deref()),
            ("demo", Some("canary"))
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.attempts.len(), 1, "{r:?}");
        assert_eq!(r.attempts[0].addr, nginx.backend);
        assert_eq!(r.attempts[0].status, Some(200));
        assert!(r.attempts[0].response_time.is_some());
        assert!(r.time > 1.6e9, "{r:?}");
    }
}

#[tokio::test]
async fn real_nginx_retries_are_one_attempt_each() {
    let Some(mut nginx) = start().await else {
        return;
    };
    let records = nginx.requests("/retry", 10).await;
    let retried: Vec<_> = records.iter().filter(|r| r.attempts.len() == 2).collect();
    assert!(!retried.is_empty(), "no request was retried: {records:?}");
    for r in &records {
        assert_eq!(
            (r.service.as_str(), r.track.as_deref()),
            ("demo", Some("stable"))
        );
        assert_eq!(r.status, 200);
        let last = r.attempts.last().unwrap();
        assert_eq!(
            (last.addr.as_str(), last.status),
            (nginx.backend.as_str(), Some(200))
        );
    }
    for r in retried {
        // A refused connection is answered 502 by nginx itself.
        assert!(r.attempts[0].is_error(), "{r:?}");
        assert_ne!(r.attempts[0].addr, nginx.backend);
    }
}
