//! The demo app's long-lived routes, for tests of what passes through a deploy besides short
//! requests: [`router`] serves `GET /ws` (a websocket answering each text message `m` with
//! `"<version> m"`), `GET /events?n=N&ms=M` (a server-sent event stream of N events
//! `data: <version> <i>`, M ms apart, each written as it is made) and `POST /upload` (reads
//! the whole body and answers `"<version> <bytes> <fnv-1a 32 in hex>"`, see [`Checksum`]).
//!
//! Each holds an [`InFlight`] guard while it lasts, an open websocket until it closes, so the
//! app's graceful shutdown waits for them up to its grace and then cuts them.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;

use crate::in_flight::{InFlight, InFlightGuard};

/// Most events one `/events` stream sends.
const MAX_EVENTS: u64 = 10_000;
/// Longest gap between two events, in milliseconds.
const MAX_EVENT_GAP_MS: u64 = 60_000;

#[derive(Clone)]
struct Streams {
    version: Arc<str>,
    in_flight: InFlight,
}

/// `GET /ws`, `GET /events` and `POST /upload`, answering as `version`.
pub fn router(version: &str, in_flight: InFlight) -> Router {
    Router::new()
        .route("/ws", get(websocket))
        .route("/events", get(events))
        .route("/upload", post(upload))
        .with_state(Streams {
            version: version.into(),
            in_flight,
        })
}

/// Counted in flight from the upgrade request until the socket closes; a failed upgrade
/// drops the callback, and the guard with it.
async fn websocket(State(streams): State<Streams>, upgrade: WebSocketUpgrade) -> Response {
    let guard = streams.in_flight.enter();
    upgrade.on_upgrade(move |socket| echo(socket, streams.version, guard))
}

async fn echo(mut socket: WebSocket, version: Arc<str>, _guard: InFlightGuard) {
    // tungstenite answers pings itself; a close frame or a broken socket ends the loop.
    while let Some(Ok(message)) = socket.recv().await {
        match message {
            Message::Text(text) => {
                let reply = format!("{version} {}", text.as_str());
                if socket.send(Message::Text(reply.into())).await.is_err() {
                    return;
                }
            }
            Message::Close(_) => return,
            Message::Binary(_) | Message::Ping(_) | Message::Pong(_) => {}
        }
    }
}

/// `/events?n=N&ms=M`: the first event at once, the next ones M ms apart. hyper writes each
/// as a chunk of its own as soon as the stream yields it: nothing here buffers.
async fn events(State(streams): State<Streams>, uri: Uri) -> Response {
    let query = uri.query();
    let (Some(n), Some(gap)) = (
        number(query, "n").filter(|n| (1..=MAX_EVENTS).contains(n)),
        number(query, "ms").filter(|ms| *ms <= MAX_EVENT_GAP_MS),
    ) else {
        let body = format!(
            "expected /events?n=N&ms=M, N events (1 to {MAX_EVENTS}) M milliseconds apart \
             (up to {MAX_EVENT_GAP_MS})\n"
        );
        return (StatusCode::BAD_REQUEST, body).into_response();
    };
    let gap = Duration::from_millis(gap);
    let version = streams.version;
    let guard = streams.in_flight.enter();
    // The guard lives in the stream's state: dropped when the last event is sent or the
    // client goes away.
    let stream = futures_util::stream::unfold((1, guard), move |(i, guard)| {
        let version = Arc::clone(&version);
        async move {
            if i > n {
                return None;
            }
            if i > 1 {
                tokio::time::sleep(gap).await;
            }
            let event = Event::default().data(format!("{version} {i}"));
            Some((Ok::<_, Infallible>(event), (i + 1, guard)))
        }
    });
    Sse::new(stream).into_response()
}

/// The value of `name=` in a query string, as a whole number.
fn number(query: Option<&str>, name: &str) -> Option<u64> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))?
        .parse()
        .ok()
}

/// Streams the body (no size limit, nothing kept) and answers with its length and checksum.
async fn upload(State(streams): State<Streams>, body: Body) -> Response {
    let _guard = streams.in_flight.enter();
    let mut checksum = Checksum::default();
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        match chunk {
            Ok(bytes) => checksum.update(&bytes),
            Err(e) => {
                let body = format!("reading the upload: {e}\n");
                return (StatusCode::BAD_REQUEST, body).into_response();
            }
        }
    }
    let version = &streams.version;
    format!("{version} {} {:08x}", checksum.bytes, checksum.fnv).into_response()
}

/// The length and FNV-1a (32 bits) of a byte stream: cheap, and any lost, doubled or
/// reordered chunk changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checksum {
    pub bytes: u64,
    pub fnv: u32,
}

impl Default for Checksum {
    fn default() -> Checksum {
        Checksum {
            bytes: 0,
            fnv: 0x811c_9dc5,
        }
    }
}

impl Checksum {
    pub fn update(&mut self, bytes: &[u8]) {
        self.bytes += bytes.len() as u64;
        for &byte in bytes {
            self.fnv = (self.fnv ^ u32::from(byte)).wrapping_mul(0x0100_0193);
        }
    }
}

#[cfg(test)]
mod tests;
