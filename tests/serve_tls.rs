//! serve over HTTPS (`[serve] cert` and `key`) on 127.0.0.1, with a test CA made by the
//! openssl CLI (`support/tls.rs`): curl, verifying with the CA, gets /healthz, the API
//! (401 without the token), the dashboard and /metrics; curl without the CA and plain HTTP
//! get nothing. `switchyard --remote https://…` deploys through it under a non-retrying load
//! with `--remote-ca` or `SSL_CERT_FILE`, and fails with a TLS error naming `--remote-ca`
//! without either. Certificate and key files that cannot serve are refused at load, named
//! with their line and field, before serve listens. Chromium, trusting the test certificate
//! by its key's hash, runs the dashboard from its https origin. (An https webhook is in
//! `hooks.rs`.)

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use switchyard_app::live::Live;
use switchyard_app::progress::Progress;
use switchyard_app::sandbox::SERVICE;
use switchyard_app::serve::{self, ServeOptions};
use switchyard_app::settings;

use crate::api::{deployments, load, remote_at, sandbox_serving, serve_with, token_file, TOKEN};
use crate::support::tls::TestCa;
use crate::support::{assert_exit, assert_no_failures, free_port, require, text};

/// What curl got: its exit code, the status, the headers and the body.
struct Curl {
    exit: i32,
    status: u16,
    headers: String,
    body: String,
}

/// `curl` of `url` verifying with `ca` (None: the system's roots only), plus `extra`.
fn curl(url: &str, ca: Option<&Path>, extra: &[&str]) -> Curl {
    let dir = tempfile::tempdir().unwrap();
    let (headers, body) = (dir.path().join("headers"), dir.path().join("body"));
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "10", "-w", "%{http_code}"])
        .arg("-D")
        .arg(&headers)
        .arg("-o")
        .arg(&body);
    if let Some(ca) = ca {
        cmd.arg("--cacert").arg(ca);
    }
    let out = cmd.args(extra).arg(url).output().expect("running curl");
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    Curl {
        exit: out.status.code().unwrap_or(-1),
        status: text(&out.stdout).trim().parse().unwrap_or(0),
        headers: read(&headers).to_lowercase(),
        body: read(&body),
    }
}

fn require_curl() -> bool {
    let found = Command::new("curl").arg("--version").output().is_ok();
    require(found, "curl")
}

/// A config for serve alone (the process runtime, one service that never runs): `[serve]`
/// with the token file and `serve_lines`.
fn serve_only_config(dir: &Path, token: &Path, serve_lines: &str) -> std::path::PathBuf {
    let config = dir.join("switchyard.toml");
    let text = format!(
        "[proxy]\nprefix = \"nginx\"\ncontrol = \"127.0.0.1:{}\"\n[state]\npath = \"state/switchyard.db\"\n\
         [runtime]\nkind = \"process\"\n[serve]\ntoken_file = {:?}\n{serve_lines}[[service]]\n\
         name = \"web\"\nlisten = \"127.0.0.1:{}\"\ncommand = [\"/bin/true\"]\n",
        free_port(),
        token.display().to_string(),
        free_port()
    );
    std::fs::write(&config, text).unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_a_certificate_answers_https_only_and_the_api_still_needs_its_token() {
    let Some(ca) = TestCa::new() else {
        return;
    };
    if !require_curl() {
        return;
    }
    let (dir, token) = token_file(0o600);
    let config = serve_only_config(dir.path(), &token, &ca.serve_lines());
    let live = Live::open_lazy(settings::load(&config).unwrap()).unwrap();
    let options = ServeOptions {
        supervise: false,
        ..ServeOptions::new("127.0.0.1:0".parse().unwrap())
    };
    let server = serve::start_with(live, options)
        .await
        .expect("serve starts");
    let addr = server.addr();
    let url = format!("https://127.0.0.1:{}", addr.port());
    assert_eq!(server.url(), url);

    let health = curl(&format!("{url}/healthz"), Some(&ca.ca), &[]);
    assert_eq!((health.exit, health.status), (0, 200), "{}", health.body);
    assert_eq!(health.body, "ok\n");
    // The name in the certificate is checked: localhost is in it too, another name is not.
    let by_name = format!("https://localhost:{}/healthz", addr.port());
    assert_eq!(curl(&by_name, Some(&ca.ca), &[]).status, 200);
    let wrong_name = format!("https://serve.example:{}/healthz", addr.port());
    let resolve = format!("serve.example:{}:127.0.0.1", addr.port());
    let wrong = curl(&wrong_name, Some(&ca.ca), &["--resolve", &resolve]);
    assert_eq!(
        wrong.exit, 60,
        "curl: the certificate is not for serve.example"
    );
    // Without the test CA, curl trusts nothing here (60: peer certificate not verified).
    let untrusted = curl(&format!("{url}/healthz"), None, &[]);
    assert_eq!((untrusted.exit, untrusted.status), (60, 0));
    // Plain HTTP gets no HTTP answer: nothing is served in clear.
    assert_eq!(plain_http_answer(addr).await, None);

    let api = format!("{url}/api/v1/status");
    let anonymous = curl(&api, Some(&ca.ca), &[]);
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let authed = curl(&api, Some(&ca.ca), &["-H", &bearer]);
    assert_eq!(authed.status, 200, "{}", authed.body);
    let status: serde_json::Value = serde_json::from_str(&authed.body).unwrap();
    assert_eq!(status["services"][0]["service"], "web", "{status}");

    // The dashboard and the metrics come over the same listener; the dashboard's policy
    // allows its own origin, which is now https://127.0.0.1:port.
    let page = curl(&format!("{url}/"), Some(&ca.ca), &[]);
    assert_eq!(page.status, 200);
    assert!(
        page.headers.contains("content-security-policy:")
            && page.headers.contains("connect-src 'self'"),
        "{}",
        page.headers
    );
    assert!(
        page.body.contains("fetch(\"/api/v1/\""),
        "the page reads the API"
    );
    let metrics = curl(&format!("{url}/metrics"), Some(&ca.ca), &[]);
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body.contains("switchyard_proxy_up"),
        "{}",
        metrics.body
    );
    server.shutdown().await.unwrap();
}

/// The status line a plain HTTP request to `addr` gets, if any.
async fn plain_http_answer(addr: SocketAddr) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        stream.read_to_end(&mut answer),
    );
    read.await
        .expect("serve closes a connection that is not TLS")
        .ok();
    let answer = String::from_utf8_lossy(&answer);
    answer
        .lines()
        .next()
        .filter(|l| l.starts_with("HTTP/"))
        .map(str::to_owned)
}

/// v1 deployed on a process sandbox (real nginx) under a non-retrying load, and serve
/// in-process over https on 127.0.0.1 with the test CA's certificate.
struct HttpsServe {
    ca: TestCa,
    token: std::path::PathBuf,
    sandbox: switchyard_app::sandbox::Sandbox,
    server: serve::Server,
    /// `https://127.0.0.1:PORT`.
    url: String,
    traffic: switchyard_app::load::Load,
    _token_dir: tempfile::TempDir,
}

impl HttpsServe {
    /// None after a loud skip (no openssl, nginx or demo-app).
    async fn start() -> Option<HttpsServe> {
        let ca = TestCa::new()?;
        let (token_dir, token) = token_file(0o600);
        let sandbox = sandbox_serving("", &token, &ca.serve_lines()).await?;
        sandbox
            .deploy("v1", &Progress::new(false))
            .await
            .expect("v1 deploys");
        let server = serve_with(settings::load(&sandbox.config_path).unwrap()).await;
        let url = format!("https://127.0.0.1:{}", server.addr().port());
        let traffic = load(&sandbox);
        Some(HttpsServe {
            ca,
            token,
            sandbox,
            server,
            url,
            traffic,
            _token_dir: token_dir,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_deploys_through_an_https_serve_it_trusts_and_refuses_one_it_does_not() {
    let Some(HttpsServe {
        ca,
        token,
        sandbox,
        server,
        url,
        traffic,
        _token_dir,
    }) = HttpsServe::start().await
    else {
        return;
    };

    // Not trusted: the system's roots do not hold the test CA. Nothing is deployed.
    let before = deployments(&sandbox);
    let out = remote_at(&url, &token, &["deploy", SERVICE, "--version", "v2"], &[]).await;
    assert_exit(&out, 3);
    let said = text(&out.stderr);
    assert!(said.contains("invalid peer certificate"), "{said}");
    assert!(said.contains("--remote-ca"), "{said}");
    assert_eq!(deployments(&sandbox), before);

    // With the CA, by the flag and then by SSL_CERT_FILE (the system's roots replaced).
    let ca_file = ca.ca.to_str().unwrap();
    let with_ca = |version| {
        [
            "--remote-ca",
            ca_file,
            "deploy",
            SERVICE,
            "--version",
            version,
        ]
    };
    let out = remote_at(&url, &token, &with_ca("v2"), &[]).await;
    assert_exit(&out, 0);
    let said = text(&out.stderr);
    assert!(said.contains(": web v1 -> v2 (green slot)"), "{said}");
    assert!(said.contains("succeeded"), "{said}");
    assert!(!said.contains(TOKEN), "{said}");
    let cert_file = [("SSL_CERT_FILE", ca.ca.as_path())];
    let v3 = ["deploy", SERVICE, "--version", "v3"];
    let out = remote_at(&url, &token, &v3, &cert_file).await;
    assert_exit(&out, 0);
    assert!(
        text(&out.stderr).contains("v2 -> v3"),
        "{}",
        text(&out.stderr)
    );
    // `--remote-ca` is for https only; a CA file that holds no certificate is bad input.
    let plain = format!("http://127.0.0.1:{}", server.addr().port());
    let out = remote_at(&plain, &token, &with_ca("v4"), &[]).await;
    assert_exit(&out, 2);
    // Plain HTTP to it gets no answer, and a hint.
    let out = remote_at(&plain, &token, &["deploy", SERVICE, "--version", "v4"], &[]).await;
    assert_exit(&out, 3);
    assert!(
        text(&out.stderr).contains("use https://"),
        "{}",
        text(&out.stderr)
    );
    let junk = sandbox.config_path.clone();
    let bad_ca = [
        "--remote-ca",
        junk.to_str().unwrap(),
        "deploy",
        SERVICE,
        "--version",
        "v4",
    ];
    let out = remote_at(&url, &token, &bad_ca, &[]).await;
    assert_exit(&out, 2);
    assert!(
        text(&out.stderr).contains("--remote-ca: ") && text(&out.stderr).contains("holds no PEM"),
        "{}",
        text(&out.stderr)
    );
    let report = traffic.stop().await;
    assert_no_failures(&report);
    assert_eq!(deployments(&sandbox), before + 2);
    server.shutdown().await.unwrap();
    sandbox.shutdown().await.unwrap();
}

#[test]
fn certificate_and_key_files_that_cannot_serve_are_named_with_their_line_and_field() {
    let Some(ca) = TestCa::new() else {
        return;
    };
    let (dir, token) = token_file(0o600);
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let gone = dir.path().join("gone.pem");
    let other = ca.other_key();
    let cases = [
        (&gone, &ca.key, "serve.cert", "cannot read"),
        (&junk, &ca.key, "serve.cert", "holds no PEM certificate"),
        (&ca.cert, &gone, "serve.key", "cannot read"),
        (
            &ca.cert,
            &junk,
            "serve.key",
            "holds no usable PEM private key",
        ),
        (
            &ca.cert,
            &other,
            "serve.key",
            "does not serve the certificate",
        ),
    ];
    for (cert, key, field, why) in cases {
        let lines = format!(
            "cert = {:?}\nkey = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        );
        let config = serve_only_config(dir.path(), &token, &lines);
        let err = settings::load(&config).unwrap_err();
        assert_eq!(err.code, 2, "{err}");
        // Where the value's quote opens: `cert = "` and `key = "`.
        let (line, column) = if field == "serve.cert" {
            (10, 8)
        } else {
            (11, 7)
        };
        let at = format!("{}:{line}:{column}: {field}: ", config.display());
        assert!(err.message.starts_with(&at), "{at} in {err}");
        assert!(err.message.contains(why), "{why} in {err}");
        let named = if field == "serve.cert" { cert } else { key };
        assert!(err.message.contains(&named.display().to_string()), "{err}");

        // The binary: validate says so and exits 2; serve exits 2 before it listens.
        let switchyard = |args: &[&str]| {
            Command::new(env!("CARGO_BIN_EXE_switchyard"))
                .arg("--config")
                .arg(&config)
                .args(args)
                .output()
                .unwrap()
        };
        let out = switchyard(&["validate"]);
        assert_exit(&out, 2);
        assert!(text(&out.stderr).contains(&at), "{}", text(&out.stderr));
        let listen = format!("127.0.0.1:{}", free_port());
        let out = switchyard(&["serve", "--listen", &listen]);
        assert_exit(&out, 2);
        assert!(text(&out.stderr).contains(why), "{}", text(&out.stderr));
        assert!(
            !text(&out.stderr).contains("serve: /metrics"),
            "it never served"
        );
    }
    // The good pair loads.
    let config = serve_only_config(dir.path(), &token, &ca.serve_lines());
    let loaded = settings::load(&config).unwrap();
    assert_eq!(loaded.serve.tls, Some(ca.serve_tls()));
}

/// The dashboard in Chromium (trusting the test certificate alone, by its key's hash) over
/// https: it signs in, shows the live version and a request rate, read from /api/v1 and
/// /metrics on its own https origin, and asks for nothing elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_over_https_from_its_own_origin() {
    if !crate::dashboard::require_chromium() {
        return;
    }
    let Some(HttpsServe {
        ca,
        sandbox,
        server,
        url: origin,
        traffic,
        // Kept: the rest of the struct is dropped here.
        _token_dir,
        ..
    }) = HttpsServe::start().await
    else {
        return;
    };
    let trust = format!("--ignore-certificate-errors-spki-list={}", ca.spki_sha256());
    let mut browser = crate::dashboard::Browser::launch_with(&[trust]).await;
    browser.navigate(&format!("{origin}/#token={TOKEN}")).await;
    browser
        .until(
            "v1 on the stable track",
            "document.querySelector('[data-track=stable]')?.textContent === 'v1'",
        )
        .await;
    browser
        .until(
            "a request rate on the stable track",
            "Number(document.querySelector('[data-chart=rate]')?.dataset.stable || 0) > 0",
        )
        .await;
    let outside = browser.requested_elsewhere(&origin);
    assert!(
        outside.is_empty(),
        "requests off serve's origin: {outside:?}"
    );
    drop(browser);
    assert_no_failures(&traffic.stop().await);
    server.shutdown().await.unwrap();
    sandbox.shutdown().await.unwrap();
}
