//! Whether each service's listen answers, for `status`, `proxy status` and `/api/status`:
//! [`probe_listen`] (a TCP connect with a short timeout, then an HTTP request on it: any HTTP
//! answer counts) and [`ListenCheck::sentence`], which says plainly when a listen does not
//! answer and why (with the [`ProxyState`]).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::nginx::ProxyState;

/// How long a listen check waits for the connection, and then for the answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether one listen answered.
#[derive(Debug, Clone, Serialize)]
pub struct ListenCheck {
    pub listen: String,
    pub answering: bool,
    /// `HTTP 200`, or why not (`connection refused`, `no answer within 2s`).
    pub detail: String,
}

impl ListenCheck {
    /// `listen 127.0.0.1:8000 answers (HTTP 200)`, or `listen 127.0.0.1:8000 is not
    /// answering: connection refused; nginx is down (…)`.
    pub fn sentence(&self, proxy: &ProxyState) -> String {
        if self.answering {
            return format!("listen {} answers ({})", self.listen, self.detail);
        }
        let nginx = if proxy.up {
            format!("nginx is up ({})", proxy.detail)
        } else {
            format!("nginx is down ({})", proxy.detail)
        };
        format!(
            "listen {} is not answering: {}; {nginx}",
            self.listen, self.detail
        )
    }
}

/// Connects to `listen` (at most [`CONNECT_TIMEOUT`]) and sends `GET path` on a fresh
/// connection; any HTTP status line within [`ANSWER_TIMEOUT`] counts as answering.
pub async fn probe_listen(listen: SocketAddr, path: &str) -> ListenCheck {
    let (answering, detail) = match ask(listen, path).await {
        Ok(status) => (true, status),
        Err(why) => (false, why),
    };
    ListenCheck {
        listen: listen.to_string(),
        answering,
        detail,
    }
}

async fn ask(listen: SocketAddr, path: &str) -> Result<String, String> {
    let mut stream =
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(listen)).await {
            Err(_) => return Err(format!("no connection within {CONNECT_TIMEOUT:?}")),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err("connection refused".into())
            }
            Ok(Err(e)) => return Err(format!("connecting: {e}")),
            Ok(Ok(stream)) => stream,
        };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {listen}\r\nConnection: close\r\n\r\n");
    let exchange = async {
        stream.write_all(request.as_bytes()).await?;
        let mut head = Vec::new();
        let mut buf = [0u8; 256];
        while !head.contains(&b'\n') && head.len() < 4096 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(head)
    };
    let head = match tokio::time::timeout(ANSWER_TIMEOUT, exchange).await {
        Err(_) => return Err(format!("no answer within {ANSWER_TIMEOUT:?}")),
        Ok(Err(e)) => return Err(format!("the connection failed: {e}")),
        Ok(Ok(head)) => head,
    };
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or_default();
    match line
        .strip_prefix("HTTP/")
        .and_then(|l| l.split_whitespace().nth(1))
    {
        Some(code) => Ok(format!("HTTP {code}")),
        None if head.is_empty() => Err("the connection closed without an answer".into()),
        None => Err(format!(
            "not an HTTP answer: {:?}",
            line.chars().take(40).collect::<String>()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener that answers every connection with `reply` (after reading the request).
    async fn answering(reply: &'static str) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(reply.as_bytes()).await;
            }
        });
        addr
    }

    fn down() -> ProxyState {
        ProxyState {
            up: false,
            master: None,
            mode: "managed",
            routing: "dynamic",
            detail: "nginx is not running (no live pid in logs/nginx.pid)".into(),
        }
    }

    #[tokio::test]
    async fn any_http_answer_counts_even_an_error() {
        let addr = answering("HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n").await;
        let check = probe_listen(addr, "/health").await;
        assert!(check.answering, "{check:?}");
        assert_eq!(check.detail, "HTTP 502");
        assert_eq!(
            check.sentence(&down()),
            format!("listen {addr} answers (HTTP 502)")
        );
    }

    #[tokio::test]
    async fn a_refused_connection_or_a_non_http_answer_is_not_answering() {
        let addr = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let check = probe_listen(addr, "/").await;
        assert!(!check.answering);
        assert_eq!(
            check.sentence(&down()),
            format!(
                "listen {addr} is not answering: connection refused; nginx is down (nginx is \
                 not running (no live pid in logs/nginx.pid))"
            )
        );
        let garbage = answering("SSH-2.0-OpenSSH\r\n").await;
        let check = probe_listen(garbage, "/").await;
        assert!(!check.answering);
        assert!(check.detail.starts_with("not an HTTP answer"), "{check:?}");
        let closed = answering("").await;
        let check = probe_listen(closed, "/").await;
        assert_eq!(
            (check.answering, check.detail.as_str()),
            (false, "the connection closed without an answer")
        );
    }
}
