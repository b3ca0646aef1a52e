//! Talking to the generated control server: [`generation`] (the live config generation) and
//! [`request`], the one-shot HTTP exchange the routing client uses.
//!
//! Each request opens a fresh connection, so it is answered by a worker of the newest
//! config: a kept-alive connection could be held by an old worker.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// GET /generation on `control`, within `timeout`.
pub async fn generation(control: SocketAddr, timeout: Duration) -> Result<u64, String> {
    let (status, body) = request(control, "GET", "/generation", None, timeout).await?;
    if status != 200 {
        return Err(format!("unexpected answer: HTTP {status}"));
    }
    body.trim()
        .parse::<u64>()
        .map_err(|_| format!("not a generation: {body:?}"))
}

/// One HTTP/1.0 request on a fresh connection to `control`, within `timeout`: the status
/// and the body.
pub async fn request(
    control: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = TcpStream::connect(control)
            .await
            .map_err(|e| format!("connecting to {control}: {e}"))?;
        let mut head = format!("{method} {path} HTTP/1.0\r\nHost: switchyard\r\n");
        if let Some(body) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let mut message = head.into_bytes();
        message.extend_from_slice(body.unwrap_or_default());
        stream
            .write_all(&message)
            .await
            .map_err(|e| e.to_string())?;
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or("truncated response")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| {
                format!(
                    "not an HTTP response: {}",
                    head.lines().next().unwrap_or("")
                )
            })?;
        Ok((status, body.to_owned()))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("{control} did not answer within {timeout:?}"))?
}
