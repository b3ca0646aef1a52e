//! The dashboard tests' browser: a headless Chromium of the test's own (Debian's
//! `chromium`), driven over the DevTools protocol ([`Browser`]), stopped by its PID on drop.

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::support::require;

const CHROMIUM: &str = "/usr/bin/chromium";

/// A headless Chromium of this test's own, and one page of it over the DevTools protocol.
pub(crate) struct Browser {
    child: tokio::process::Child,
    page: WebSocketStream<TcpStream>,
    next: u64,
    /// Every event the page sent, in order (`Network.requestWillBeSent` among them).
    events: Vec<Value>,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub(crate) async fn launch() -> Browser {
        Browser::launch_with(&[]).await
    }

    /// [`Browser::launch`] with more command-line switches.
    pub(crate) async fn launch_with(switches: &[String]) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = tokio::process::Command::new(CHROMIUM)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
            ])
            .args([
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-sync",
            ])
            .args([
                "--disable-background-networking",
                "--disable-component-update",
            ])
            .args([
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .args(["--window-size=1280,900"])
            .args(switches)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let browser_ws = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return url.trim().to_owned();
                }
            }
            panic!("chromium exited without a DevTools endpoint");
        })
        .await
        .expect("chromium's DevTools endpoint within 30 s");
        // Keep reading its stderr, so a full pipe never blocks it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let port: u16 = browser_ws
            .strip_prefix("ws://127.0.0.1:")
            .and_then(|rest| rest.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected DevTools URL {browser_ws}"));
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        let list = devtools_list(addr).await;
        let targets: Vec<Value> = serde_json::from_str(&list).unwrap();
        let page_ws = targets
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_owned();
        let stream = TcpStream::connect(addr).await.unwrap();
        let (page, _) = tokio_tungstenite::client_async(page_ws, stream)
            .await
            .unwrap();
        let mut browser = Browser {
            child,
            page,
            next: 0,
            events: Vec::new(),
            _profile: profile,
        };
        browser.call("Network.enable", json!({})).await;
        browser.call("Page.enable", json!({})).await;
        browser
    }

    /// One DevTools command; the events that arrive meanwhile are kept.
    pub(crate) async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let text = json!({ "id": id, "method": method, "params": params }).to_string();
        self.page.send(Message::text(text)).await.unwrap();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(20), self.page.next())
                .await
                .unwrap_or_else(|_| panic!("{method}: no answer in 20 s"))
                .expect("the page's socket is open")
                .unwrap();
            let Message::Text(text) = message else {
                continue;
            };
            let value: Value = serde_json::from_str(&text).unwrap();
            if value["id"] == id {
                assert!(value.get("error").is_none(), "{method}: {value}");
                return value["result"].clone();
            }
            self.events.push(value);
        }
    }

    /// The value of a JavaScript expression in the page.
    pub(crate) async fn eval(&mut self, expression: &str) -> Value {
        let params =
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true });
        self.call("Runtime.evaluate", params).await["result"]["value"].clone()
    }

    pub(crate) async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
    }

    /// Polls `expression` until it is true.
    pub(crate) async fn until(&mut self, what: &str, expression: &str) {
        let since = Instant::now();
        while since.elapsed() < Duration::from_secs(20) {
            if self.eval(expression).await == json!(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let text = self.eval("document.body.innerText").await;
        panic!("the dashboard never showed {what}; it shows:\n{text}");
    }

    /// Every URL the page asked for.
    pub(crate) fn requested(&self) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| e["method"] == "Network.requestWillBeSent")
            .filter_map(|e| e["params"]["request"]["url"].as_str().map(str::to_owned))
            .collect()
    }

    /// Every URL the page asked for that is not on `origin` (nor the blank start page).
    pub(crate) fn requested_elsewhere(&self, origin: &str) -> Vec<String> {
        let own = format!("{origin}/");
        self.requested()
            .into_iter()
            .filter(|u| !u.starts_with(&own) && u != "about:blank")
            .collect()
    }

    pub(crate) fn assert_stayed_on(&self, origin: &str) {
        let outside = self.requested_elsewhere(origin);
        assert!(
            outside.is_empty(),
            "requests off serve's origin: {outside:?}"
        );
    }

    pub(crate) async fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine;
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({ "format": "png", "captureBeyondViewport": true }),
            )
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap()
    }
}

/// `GET /json/list` of the DevTools server, which keeps the connection open: the body is read
/// by its Content-Length.
async fn devtools_list(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /json/list HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the DevTools server closed before answering");
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .expect("a Content-Length");
                if body.len() >= length {
                    return body[..length].to_owned();
                }
            }
        }
    })
    .await
    .expect("the DevTools target list within 10 s")
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ours, by its PID (kill_on_drop does the same).
        let _ = self.child.start_kill();
    }
}

pub(crate) fn require_chromium() -> bool {
    require(
        std::path::Path::new(CHROMIUM).exists(),
        "chromium (apt-get install chromium)",
    )
}
