//! The streaming routes against a real listener: websocket replies and how shutdown waits
//! for an open socket, event timing, and uploads past axum's 2 MB default body limit.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as ClientMessage;
use tokio_tungstenite::WebSocketStream;

use super::Checksum;
use crate::server::tests::{start, wait_for_in_flight};
use crate::server::Stopped;

async fn open_websocket(addr: SocketAddr) -> WebSocketStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (socket, response) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp)
        .await
        .expect("the websocket handshake succeeds");
    assert_eq!(response.status(), 101);
    socket
}

/// Sends `text` and returns the reply, or None when the socket closed or broke.
async fn exchange(socket: &mut WebSocketStream<TcpStream>, text: &str) -> Option<String> {
    socket.send(ClientMessage::text(text)).await.ok()?;
    let reply = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("a reply or a close within 5 s");
    match reply {
        Some(Ok(ClientMessage::Text(reply))) => Some(reply.as_str().to_owned()),
        _ => None,
    }
}

#[tokio::test]
async fn websocket_answers_each_message_with_the_version() {
    let app = start(&[("APP_VERSION", "v5")]).await;
    let mut socket = open_websocket(app.addr).await;
    for text in ["hello", "second message", ""] {
        assert_eq!(
            exchange(&mut socket, text).await.as_deref(),
            Some(format!("v5 {text}").as_str())
        );
    }
    wait_for_in_flight(&app.in_flight, 1).await;
    socket.close(None).await.unwrap();
    wait_for_in_flight(&app.in_flight, 0).await;
}

#[tokio::test]
async fn shutdown_waits_for_an_open_websocket_until_it_closes() {
    let app = start(&[("APP_VERSION", "v1")]).await;
    let mut socket = open_websocket(app.addr).await;
    wait_for_in_flight(&app.in_flight, 1).await;
    app.stop.send("SIGTERM").unwrap();
    // Regression guard: axum's graceful shutdown alone does not wait for upgraded
    // connections, so the server used to return with the socket open.
    for i in 0..5 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            exchange(&mut socket, &format!("{i}")).await,
            Some(format!("v1 {i}")),
            "the socket answers while the app drains"
        );
    }
    assert!(
        !app.server.is_finished(),
        "serve returned with a socket open"
    );
    socket.close(None).await.unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(5), app.server)
        .await
        .expect("serve returns once the socket closed")
        .unwrap();
    assert_eq!(
        stopped,
        Stopped {
            signal: "SIGTERM",
            abandoned: 0
        }
    );
}

#[tokio::test]
async fn a_websocket_still_open_when_the_grace_runs_out_is_cut() {
    let app = start(&[("SHUTDOWN_GRACE_MS", "300")]).await;
    let mut socket = open_websocket(app.addr).await;
    wait_for_in_flight(&app.in_flight, 1).await;
    let signalled = Instant::now();
    app.stop.send("SIGTERM").unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(5), app.server)
        .await
        .expect("serve returns when the grace runs out")
        .unwrap();
    assert!(signalled.elapsed() >= Duration::from_millis(300));
    assert_eq!(stopped.abandoned, 1);
    // The client sees its socket end, without waiting for a timeout of its own.
    let next = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("the cut socket ends at once");
    assert!(
        !matches!(next, Some(Ok(ClientMessage::Text(_)))),
        "{next:?}"
    );
}

/// One request on a fresh connection (`Connection: close`), the whole answer as text, and
/// when each line starting with `data: ` arrived.
async fn raw_request(addr: SocketAddr, head: &str, body: &[u8]) -> (String, Vec<Instant>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    let mut arrivals = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf));
        let n = read.await.expect("the answer within 10 s").unwrap();
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        let events = String::from_utf8_lossy(&answer)
            .lines()
            .filter(|line| line.starts_with("data: "))
            .count();
        arrivals.resize(events, Instant::now());
    }
    (String::from_utf8(answer).unwrap(), arrivals)
}

#[tokio::test]
async fn events_are_sent_one_by_one_the_given_gap_apart() {
    let app = start(&[("APP_VERSION", "v2"), ("SHUTDOWN_GRACE_MS", "0")]).await;
    let head = "GET /events?n=5&ms=150 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let asked = Instant::now();
    let (answer, arrivals) = raw_request(app.addr, head, b"").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer
            .to_lowercase()
            .contains("content-type: text/event-stream"),
        "{answer}"
    );
    let data: Vec<&str> = answer
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .collect();
    assert_eq!(data, ["v2 1", "v2 2", "v2 3", "v2 4", "v2 5"]);
    assert!(
        arrivals[0] - asked < Duration::from_millis(150),
        "first at once"
    );
    for pair in arrivals.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(100),
            "{arrivals:?}"
        );
    }
    assert_eq!(
        app.in_flight.get(),
        0,
        "a finished stream is no longer in flight"
    );
}

#[tokio::test]
async fn events_rejects_a_count_or_gap_it_cannot_read() {
    let app = start(&[]).await;
    for query in [
        "",
        "?n=3",
        "?ms=10",
        "?n=0&ms=1",
        "?n=10001&ms=1",
        "?n=2&ms=60001",
        "?n=x&ms=1",
    ] {
        let head = format!("GET /events{query} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let (answer, _) = raw_request(app.addr, &head, b"").await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{query}: {answer}");
        assert!(answer.contains("expected /events?n=N&ms=M"), "{query}");
    }
    let head = "GET /events?ms=0&n=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    assert!(raw_request(app.addr, head, b"")
        .await
        .0
        .starts_with("HTTP/1.1 200"));
}

#[test]
fn checksum_is_fnv_1a_32_and_counts_bytes() {
    // Reference values of FNV-1a, 32 bits.
    for (input, fnv) in [
        (&b""[..], 0x811c_9dc5),
        (b"a", 0xe40c_292c),
        (b"foobar", 0xbf9c_f968),
    ] {
        let mut checksum = Checksum::default();
        checksum.update(input);
        assert_eq!(
            checksum,
            Checksum {
                bytes: input.len() as u64,
                fnv
            },
            "{input:?}"
        );
    }
    let mut split = Checksum::default();
    split.update(b"foo");
    split.update(b"bar");
    assert_eq!(split.fnv, 0xbf9c_f968, "chunks add up to the whole");
}

#[tokio::test]
async fn upload_answers_the_length_and_checksum_of_a_body_past_the_default_limit() {
    let app = start(&[("APP_VERSION", "v3")]).await;
    // 3 MB: axum's extractors stop at 2 MB; the upload streams instead.
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut expected = Checksum::default();
    expected.update(&body);
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let (answer, _) = raw_request(app.addr, &head, &body).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let reply = answer.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(reply, format!("v3 3000000 {:08x}", expected.fnv));
    assert_eq!(app.in_flight.get(), 0);
}
