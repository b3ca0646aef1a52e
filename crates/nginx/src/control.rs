//! Reading the live config generation from the generated control server: [`generation`].
//!
//! Each poll opens a fresh connection, so it is answered by a worker of the newest
//! config: a kept-alive connection could be held by an old worker.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// GET /generation on `control`, within `timeout`.
pub async fn generation(control: SocketAddr, timeout: Duration) -> Result<u64, String> {
    let fetch = async {
        let mut stream = TcpStream::connect(control)
            .await
            .map_err(|e| format!("connecting to {control}: {e}"))?;
        stream
            .write_all(b"GET /generation HTTP/1.0\r\nHost: switchyard\r\n\r\n")
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
        if !head.starts_with("HTTP/1.1 200") {
            return Err(format!(
                "unexpected answer: {}",
                head.lines().next().unwrap_or("")
            ));
        }
        body.trim()
            .parse::<u64>()
            .map_err(|_| format!("not a generation: {body:?}"))
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| format!("{control} did not answer within {timeout:?}"))?
}
