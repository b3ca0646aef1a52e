//! Clients for the long-lived requests of `tests/stream.rs`, none of which ever sends
//! anything twice: [`Websocket`] (tokio-tungstenite over a plain TCP stream) and
//! [`talk_until_closed`], which keeps one talking through a deploy; [`read_events`], an SSE
//! reader that records when each event arrived; [`upload`], a `POST /upload` on a fresh
//! connection, and [`upload_answer`], what the demo-app answers a body with.
//!
//! The HTTP ones are written over `TcpStream` by hand, so nothing between the test and nginx
//! buffers, pools or retries.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The longest wait for one reply, one read or a connect.
const PATIENCE: Duration = Duration::from_secs(10);
/// The longest one whole HTTP exchange (an event stream, an upload) may take.
const EXCHANGE_LIMIT: Duration = Duration::from_secs(60);

/// A websocket on the demo-app's `GET /ws`.
pub struct Websocket(WebSocketStream<TcpStream>);

impl Websocket {
    /// Opens `ws://addr/ws`: `addr` is nginx's listen.
    pub async fn open(addr: SocketAddr) -> Result<Websocket, String> {
        let tcp = within(PATIENCE, TcpStream::connect(addr))
            .await?
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let handshake = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp);
        let (socket, _) = within(PATIENCE, handshake)
            .await?
            .map_err(|e| format!("websocket handshake through {addr}: {e}"))?;
        Ok(Websocket(socket))
    }

    /// Sends `text` and returns the text reply; Err says how the socket ended instead.
    pub async fn exchange(&mut self, text: &str) -> Result<String, String> {
        self.0
            .send(Message::text(text))
            .await
            .map_err(|e| format!("sending: {e}"))?;
        // Skips control frames; a peer sending only those for ever is not plausible, but
        // the loop is bounded anyway.
        for _ in 0..100 {
            match within(PATIENCE, self.0.next()).await? {
                None => return Err("closed without a close frame".into()),
                Some(Err(e)) => return Err(format!("receiving: {e}")),
                Some(Ok(Message::Text(reply))) => return Ok(reply.as_str().to_owned()),
                Some(Ok(Message::Close(frame))) => return Err(format!("closed: {frame:?}")),
                Some(Ok(_)) => {}
            }
        }
        Err("100 control frames and no reply".into())
    }

    pub async fn close(mut self) {
        let _ = self.0.close(None).await;
    }
}

/// What [`talk_until_closed`] heard.
#[derive(Debug)]
pub struct Conversation {
    /// Each reply and when it came.
    pub replies: Vec<(Instant, String)>,
    /// When a message first got no reply, and why; None if the socket was still open at the
    /// limit.
    pub ended: Option<(Instant, String)>,
}

impl Conversation {
    /// When the last reply came.
    pub fn last_reply(&self) -> Option<Instant> {
        self.replies.last().map(|(at, _)| *at)
    }
}

/// Sends `"0"`, `"1"`, … one `every` apart until a message gets no reply or `limit` has
/// passed.
pub async fn talk_until_closed(
    mut ws: Websocket,
    every: Duration,
    limit: Duration,
) -> Conversation {
    let started = Instant::now();
    let mut replies = Vec::new();
    let mut i = 0u64;
    while started.elapsed() < limit {
        match ws.exchange(&i.to_string()).await {
            Ok(reply) => replies.push((Instant::now(), reply)),
            Err(why) => {
                return Conversation {
                    replies,
                    ended: Some((Instant::now(), why)),
                }
            }
        }
        i += 1;
        tokio::time::sleep(every).await;
    }
    ws.close().await;
    Conversation {
        replies,
        ended: None,
    }
}

/// An event stream as it arrived.
#[derive(Debug)]
pub struct Events {
    pub status: u16,
    /// The `data:` of each event and when its last byte arrived.
    pub events: Vec<(Instant, String)>,
}

/// `GET path` on `addr` as an event stream, read until the server ends it.
pub async fn read_events(addr: SocketAddr, path: &str) -> Result<Events, String> {
    within(EXCHANGE_LIMIT, read_events_unbounded(addr, path)).await?
}

async fn read_events_unbounded(addr: SocketAddr, path: &str) -> Result<Events, String> {
    let mut stream = connect(addr).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending GET {path}: {e}"))?;
    let mut raw = Vec::new();
    let mut events = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = within(PATIENCE, stream.read(&mut buf))
            .await?
            .map_err(|e| format!("reading {path}: {e}"))?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        let arrived = Instant::now();
        let Some(response) = Response::parse(&raw) else {
            continue;
        };
        let text = String::from_utf8_lossy(&response.body).into_owned();
        // Every event ends with a blank line; the part after the last one is unfinished.
        let complete: Vec<&str> = text.split("\n\n").collect();
        for event in &complete[events.len()..complete.len() - 1] {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(|data| data.strip_prefix(' ').unwrap_or(data))
                .collect();
            events.push((arrived, data.join("\n")));
        }
    }
    let response = Response::parse(&raw).ok_or_else(|| {
        format!(
            "GET {path}: no complete response head: {:?}",
            String::from_utf8_lossy(&raw)
        )
    })?;
    Ok(Events {
        status: response.status,
        events,
    })
}

/// A body of `len` bytes in a pattern that a lost, doubled or moved chunk changes.
pub fn upload_body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// What the demo-app answers an upload of `body` with, after its version.
pub fn upload_answer(body: &[u8]) -> String {
    // FNV-1a, 32 bits, as crates/demo-app/src/streams.rs computes it.
    let fnv = body.iter().fold(0x811c_9dc5u32, |hash, &byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    });
    format!("{} {fnv:08x}", body.len())
}

/// `POST /upload` of `body` on a fresh connection: (status, body of the answer). The
/// answer is read while the body is still being sent, so an early 413 is seen as nginx
/// sends it.
pub async fn upload(addr: SocketAddr, body: &[u8]) -> Result<(u16, String), String> {
    within(EXCHANGE_LIMIT, upload_unbounded(addr, body)).await?
}

async fn upload_unbounded(addr: SocketAddr, body: &[u8]) -> Result<(u16, String), String> {
    let (mut reader, mut writer) = connect(addr).await?.into_split();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let send = async {
        writer.write_all(head.as_bytes()).await?;
        writer.write_all(body).await
    };
    let receive = async {
        let mut raw = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match within(PATIENCE, reader.read(&mut buf)).await? {
                Ok(0) => return Ok(raw),
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                // A reset after a whole response (nginx refusing the rest of a body) still
                // leaves the response.
                Err(_) if Response::parse(&raw).is_some_and(|r| r.complete) => return Ok(raw),
                Err(e) => return Err(format!("reading the answer to POST /upload: {e}")),
            }
        }
    };
    let (sent, raw) = tokio::join!(send, receive);
    let raw = raw?;
    match Response::parse(&raw) {
        Some(response) if response.complete => {
            let text = String::from_utf8_lossy(&response.body).into_owned();
            Ok((response.status, text))
        }
        _ => Err(format!(
            "POST /upload of {} bytes: no complete answer (sending: {sent:?}): {:?}",
            body.len(),
            String::from_utf8_lossy(&raw)
        )),
    }
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    within(PATIENCE, TcpStream::connect(addr))
        .await?
        .map_err(|e| format!("connecting to {addr}: {e}"))
}

async fn within<T>(
    limit: Duration,
    work: impl std::future::Future<Output = T>,
) -> Result<T, String> {
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| format!("no progress within {limit:?}"))
}

/// An HTTP/1.1 response read so far: the status once the head is in, the body decoded as
/// far as it has arrived (chunked or not), and whether it is all there.
struct Response {
    status: u16,
    body: Vec<u8>,
    complete: bool,
}

impl Response {
    fn parse(raw: &[u8]) -> Option<Response> {
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
        let status = head.split(' ').nth(1)?.parse().ok()?;
        let rest = &raw[end + 4..];
        let header = |name: &str| {
            head.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        if header("transfer-encoding") == Some("chunked") {
            let (body, complete) = dechunk(rest);
            return Some(Response {
                status,
                body,
                complete,
            });
        }
        let length = header("content-length").and_then(|l| l.parse::<usize>().ok());
        let complete = length.is_some_and(|l| rest.len() >= l);
        let body = rest[..length.unwrap_or(rest.len()).min(rest.len())].to_vec();
        Some(Response {
            status,
            body,
            complete,
        })
    }
}

/// The data of the complete chunks of a chunked body, and whether its last chunk came.
fn dechunk(mut raw: &[u8]) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = raw.windows(2).position(|w| w == b"\r\n") else {
            return (body, false);
        };
        let line = String::from_utf8_lossy(&raw[..line_end]);
        let size = line.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size, 16) else {
            return (body, false);
        };
        if size == 0 {
            return (body, true);
        }
        let data = &raw[line_end + 2..];
        if data.len() < size + 2 {
            return (body, false);
        }
        body.extend_from_slice(&data[..size]);
        raw = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::{dechunk, Response};

    #[test]
    fn a_chunked_body_is_decoded_as_far_as_it_has_arrived() {
        let whole = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        assert_eq!(dechunk(whole), (b"hello, world".to_vec(), true));
        // Cut inside the second chunk's data, inside its size line, and before anything.
        assert_eq!(dechunk(&whole[..20]), (b"hello".to_vec(), false));
        assert_eq!(dechunk(&whole[..12]), (b"hello".to_vec(), false));
        assert_eq!(dechunk(b""), (Vec::new(), false));
    }

    #[test]
    fn a_response_is_complete_by_its_length_or_last_chunk() {
        let head = "HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 4\r\n\r\n";
        let partial = Response::parse(format!("{head}ab").as_bytes()).unwrap();
        assert_eq!((partial.status, partial.complete), (413, false));
        let whole = Response::parse(format!("{head}abcd").as_bytes()).unwrap();
        assert_eq!(
            (whole.body.as_slice(), whole.complete),
            (&b"abcd"[..], true)
        );
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n";
        let open = Response::parse(chunked.as_bytes()).unwrap();
        assert_eq!((open.body.as_slice(), open.complete), (&b"ok"[..], false));
        assert!(Response::parse(b"HTTP/1.1 200 OK\r\nContent-Le").is_none());
    }
}
