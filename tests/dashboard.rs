//! The dashboard in a real browser: headless Chromium (Debian's `chromium`) driven over the
//! DevTools protocol. The page signs in with the token, shows the live version and weights of
//! a paused canary, its latest steps and thresholds, and its promote button finishes it; a failed deployment picked in
//! the history shows its hooks, steps, disruption and evidence as text; every request the page
//! makes stays on serve's own 127.0.0.1 origin. Screenshots are kept in
//! `target/test-artifacts/dashboard*.png`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchyard_app::live::Live;
use switchyard_app::progress::Progress;
use switchyard_app::sandbox::SERVICE;
use switchyard_app::serve::{self, ServeOptions};
use switchyard_app::settings;
use switchyard_engine::config::RuntimeChoice;
use switchyard_engine::{Name, Store};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::support::{assert_no_failures, require};

const CHROMIUM: &str = "/usr/bin/chromium";
const TOKEN: &str = "dashboard-test-token-0123456789";

/// A headless Chromium of this test's own, and one page of it over the DevTools protocol.
struct Browser {
    child: tokio::process::Child,
    page: WebSocketStream<TcpStream>,
    next: u64,
    /// Every event the page sent, in order (`Network.requestWillBeSent` among them).
    events: Vec<Value>,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn launch() -> Browser {
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
    async fn call(&mut self, method: &str, params: Value) -> Value {
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
    async fn eval(&mut self, expression: &str) -> Value {
        let params =
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true });
        self.call("Runtime.evaluate", params).await["result"]["value"].clone()
    }

    async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
    }

    /// Polls `expression` until it is true.
    async fn until(&mut self, what: &str, expression: &str) {
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
    fn requested(&self) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| e["method"] == "Network.requestWillBeSent")
            .filter_map(|e| e["params"]["request"]["url"].as_str().map(str::to_owned))
            .collect()
    }

    /// Every URL the page asked for that is not on `origin` (nor the blank start page).
    fn requested_elsewhere(&self, origin: &str) -> Vec<String> {
        let own = format!("{origin}/");
        self.requested()
            .into_iter()
            .filter(|u| !u.starts_with(&own) && u != "about:blank")
            .collect()
    }

    fn assert_stayed_on(&self, origin: &str) {
        let outside = self.requested_elsewhere(origin);
        assert!(
            outside.is_empty(),
            "requests off serve's origin: {outside:?}"
        );
    }

    async fn screenshot(&mut self) -> Vec<u8> {
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

fn require_chromium() -> bool {
    require(
        std::path::Path::new(CHROMIUM).exists(),
        "chromium (apt-get install chromium)",
    )
}

/// `switchyard serve` in-process on the sandbox's config, on a free loopback port.
async fn serve_for(sandbox: &switchyard_app::sandbox::Sandbox) -> serve::Server {
    let live = Live::open(settings::load(&sandbox.config_path).unwrap())
        .await
        .unwrap();
    serve::start_with(live, ServeOptions::new("127.0.0.1:0".parse().unwrap()))
        .await
        .expect("serve starts")
}

fn artifact(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_paused_canary_and_its_promote_button_finishes_it() {
    if !require_chromium() {
        return;
    }
    let (_token_dir, token_file) = token_file();
    let canary = format!("{}\npause = [20]", crate::canary::FAST);
    let Some(sandbox) = crate::e2e::sandbox(RuntimeChoice::Process, |mut o| {
        o.canary = canary;
        o.tables = format!(
            "[serve]\ntoken_file = {:?}\n",
            token_file.display().to_string()
        );
        o
    })
    .await
    else {
        return;
    };
    sandbox
        .deploy("v1", &Progress::new(false))
        .await
        .expect("v1 deploys");
    let server = serve_for(&sandbox).await;
    let origin = format!("http://{}", server.addr());
    let load = crate::support::load(sandbox.url(), 8);
    let name = Name::parse(SERVICE).unwrap();
    let quiet = Progress::new(false);
    let deploy = sandbox.deploy_canary("v2", &quiet);
    let browse = async {
        let store = &sandbox.live().store;
        crate::support::until_paused(store, &name, "20%").await;
        let mut browser = Browser::launch().await;
        // Without a token: the sign-in form, nothing else.
        browser.navigate(&format!("{origin}/")).await;
        browser
            .until(
                "the sign-in form",
                "!document.getElementById('login').hidden",
            )
            .await;
        // With it (the fragment never reaches the server).
        browser.navigate(&format!("{origin}/#token={TOKEN}")).await;
        browser
            .until(
                "v1 on stable, v2 on the canary at 20 %, paused",
                "(() => { const q = (s) => document.querySelector(s)?.textContent; \
                 return q('[data-track=stable]') === 'v1' && q('[data-track=canary]') === 'v2' \
                 && q('[data-step=web]') === 'paused' \
                 && (q('[data-weights=web]') || '').includes('canary 20%'); })()",
            )
            .await;
        // The deployment's latest steps from its journal, and what the judge holds it to.
        browser
            .until(
                "the canary's latest steps and its thresholds",
                "(() => { const q = (s) => document.querySelector(s)?.innerText || ''; \
                 return q('[data-current-steps=web]').includes('paused') \
                 && q('[data-current-steps=web]').includes('analysis') \
                 && q('[data-thresholds=web]').includes('error rate at most 1.00%, at least 20 requests'); })()",
            )
            .await;
        // The charts have data once two scrapes have passed.
        browser
            .until(
                "a request rate on the stable track",
                "Number(document.querySelector('[data-chart=rate]')?.dataset.stable || 0) > 0",
            )
            .await;
        let png = browser.screenshot().await;
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(artifact("dashboard.png"), &png).unwrap();
        browser
            .eval("document.querySelector('button[data-action=promote][data-service=web]').click(), true")
            .await;
        browser
    };
    let (result, browser) = tokio::join!(deploy, browse);
    result.expect("the canary is promoted by the dashboard's button");
    let active = sandbox.live().store.service(&name).unwrap().active.unwrap();
    assert_eq!(active.version.as_str(), "v2");
    let requested = browser.requested();
    assert!(
        requested.iter().any(|u| u.contains("/api/v1/status")),
        "{requested:?}"
    );
    browser.assert_stayed_on(&origin);
    drop(browser);
    let traffic = load.stop().await;
    assert_no_failures(&traffic);
    server.shutdown().await.unwrap();
    sandbox.shutdown().await.unwrap();
}

/// Before any sign-in: the page asks for the token, says nothing of the services, names no
/// other origin, and its headers forbid other origins and framing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_asks_for_the_token_and_loads_nothing_from_outside() {
    if !require_chromium() {
        return;
    }
    let Some(sandbox) = crate::e2e::sandbox(RuntimeChoice::Process, |o| o).await else {
        return;
    };
    let server = serve_for(&sandbox).await;
    let out = std::process::Command::new("curl")
        .args(["-s", "-D", "-", "-o", "/dev/null"])
        .arg(format!("http://{}/", server.addr()))
        .output()
        .expect("curl");
    let head = crate::support::text(&out.stdout).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    assert!(head.contains("connect-src 'self'"), "{head}");
    assert!(head.contains("x-frame-options: deny"), "{head}");

    let origin = format!("http://{}", server.addr());
    let mut browser = Browser::launch().await;
    browser.navigate(&format!("{origin}/")).await;
    browser
        .until(
            "the sign-in form",
            "!document.getElementById('login').hidden",
        )
        .await;
    let services = browser
        .eval("document.getElementById('services').children.length")
        .await;
    assert_eq!(services, json!(0), "nothing shown before sign-in");
    let requested = browser.requested();
    assert!(
        requested.iter().any(|u| u == &format!("{origin}/")),
        "{requested:?}"
    );
    browser.assert_stayed_on(&origin);
    drop(browser);
    server.shutdown().await.unwrap();
    sandbox.shutdown().await.unwrap();
}

/// A 0600 token file for serve, in a directory of its own.
fn token_file() -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    (dir, file)
}

/// Regression: a deployment's details were one raw JSON `<pre>`. A v2 whose `pre_traffic`
/// smoke test fails (under a load that never re-sends: 0 failed) is shown, once picked in the
/// history, as sections of text: its hook with its output, its steps, what failed at the
/// proxy per track, the cause and the new replicas; no JSON document anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_deployments_evidence_is_rendered_as_readable_sections() {
    if !require_chromium() {
        return;
    }
    let (_token_dir, token) = token_file();
    let hook_dir = tempfile::tempdir().unwrap();
    let Some(sandbox) = crate::e2e::sandbox(RuntimeChoice::Process, |mut o| {
        let (hook, _) = crate::hooks::smoke_hook(hook_dir.path(), &o.app_binary, "v2");
        o.tables = format!("[serve]\ntoken_file = {:?}\n", token.display().to_string());
        o.service_keys(&hook)
    })
    .await
    else {
        return;
    };
    let quiet = Progress::new(false);
    sandbox.deploy("v1", &quiet).await.expect("v1 deploys");
    let load = crate::support::load(sandbox.url(), 8);
    crate::support::responses_from(&load, "v1", 50).await;
    // Through the binary, which keeps the evidence (the sandbox's deploys keep none).
    let deploy = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--config")
        .arg(&sandbox.config_path)
        .args(["deploy", SERVICE, "--version", "v2"])
        .output()
        .unwrap();
    crate::support::assert_exit(&deploy, 1);
    let said = crate::support::text(&deploy.stderr);
    assert!(said.contains("pre_traffic hook failed"), "{said}");
    crate::support::responses_from(&load, "v1", load.snapshot().by_version["v1"].count + 50).await;
    assert_no_failures(&load.stop().await);
    let failed = sandbox.live().store.history(None, 1).unwrap()[0].id;

    let server = serve_for(&sandbox).await;
    let origin = format!("http://{}", server.addr());
    let mut browser = Browser::launch().await;
    browser.navigate(&format!("{origin}/#token={TOKEN}")).await;
    let row = format!(
        "[...document.querySelectorAll('#history tr.pick')].find((r) => r.cells[0].textContent === '{failed}')"
    );
    browser
        .until(
            &format!("deployment #{failed} in the history"),
            &format!("!!{row}"),
        )
        .await;
    browser.eval(&format!("{row}.click(), true")).await;
    let section = |name: &str| {
        format!("(document.querySelector('#detail [data-evidence={name}]')?.innerText || '')")
    };
    browser
        .until(
            "the hook's output",
            &format!("{}.includes('smoke test failed on v2')", section("hooks")),
        )
        .await;
    let detail = browser
        .eval("document.getElementById('detail').innerText")
        .await;
    let detail = detail.as_str().unwrap().to_owned();
    let expected: [(&str, &[&str]); 5] = [
        (
            "hooks",
            &["pre_traffic: FAILED: exit 1", "smoke test failed on v2"],
        ),
        ("steps", &["hook_ran", "failing", "remove_new"]),
        (
            "cause",
            &["cause: hook: ", "pre_traffic hook failed: exit 1"],
        ),
        ("disruption", &["stable"]),
        ("replicas", &[" v2 127.0.0.1:", "exit code ", "log tail"]),
    ];
    for (name, needles) in expected {
        let shown = browser.eval(&section(name)).await;
        let shown = shown.as_str().unwrap();
        for needle in needles {
            assert!(
                shown.contains(needle),
                "{needle:?} in the {name} section; the details show:\n{detail}"
            );
        }
    }
    // Text, not a JSON document: no element holds the API's body as written.
    let raw = browser
        .eval(
            "[...document.querySelectorAll('#detail *')].some((e) => /^\\s*[{\\[]\\s*\"/.test(e.textContent)) \
             || document.getElementById('detail').innerText.includes('\"summary\":')",
        )
        .await;
    assert_eq!(raw, json!(false), "the details show raw JSON");
    let png = browser.screenshot().await;
    std::fs::write(artifact("dashboard-evidence.png"), &png).unwrap();
    browser.assert_stayed_on(&origin);
    drop(browser);
    server.shutdown().await.unwrap();
    sandbox.shutdown().await.unwrap();
}
