//! The front door on real nginx and Docker: services sharing one TLS listen, told apart by SNI
//! and Host, a path-prefixed service, plain HTTP redirected to HTTPS, a name nobody claims
//! refused; and a deploy through TLS under a client we did not write (curl: no retries, one
//! keep-alive connection, every answer counted).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use switchyard_app::progress::Progress;
use switchyard_app::sandbox::{Sandbox, SandboxOptions};
use switchyard_engine::config::RuntimeChoice;
use switchyard_engine::Version;
use tokio::io::AsyncReadExt;

use crate::support::{free_port, require, require_e2e};

const SHOP: &str = "shop.example.com";
const BLOG: &str = "blog.example.com";

/// A self-signed certificate for `host` (its own CA): (cert, key).
fn self_signed(dir: &Path, host: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{host}.pem")),
        dir.join(format!("{host}.key")),
    );
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-subj", &format!("/CN={host}")])
        .args(["-addext", &format!("subjectAltName=DNS:{host}")])
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        crate::support::text(&out.stderr)
    );
    (cert, key)
}

/// One curl run against `host` on `port` (resolved to 127.0.0.1, verified with `ca`): the
/// status, the `x-version` header, the HTTP version and the Location header, or curl's exit
/// code when it got no answer.
struct Answer {
    status: u16,
    version: String,
    http: String,
    location: String,
    exit: i32,
}

fn curl(scheme: &str, host: &str, port: u16, path: &str, ca: &Path, extra: &[&str]) -> Answer {
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--max-time", "10"])
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .arg("--cacert")
        .arg(ca)
        .args([
            "-w",
            "%{http_code} %header{x-version} %{http_version} %header{location}",
        ])
        .args(extra)
        .arg(format!("{scheme}://{host}:{port}{path}"))
        .output()
        .expect("running curl");
    let text = crate::support::text(&out.stdout);
    let mut parts = text.split(' ');
    let mut next = || parts.next().unwrap_or_default().to_owned();
    Answer {
        status: next().parse().unwrap_or(0),
        version: next(),
        http: next(),
        location: next(),
        exit: out.status.code().unwrap_or(-1),
    }
}

/// The three services' config: `web` (the sandbox's) as the shop at `/`, `blog` on the same
/// listen under its own name and certificate, `api` under the shop's `/api/`.
fn options(
    app: PathBuf,
    listen: SocketAddr,
    redirect: SocketAddr,
    shop: &(PathBuf, PathBuf),
    blog: &(PathBuf, PathBuf),
) -> SandboxOptions {
    let tls = |(cert, key): &(PathBuf, PathBuf)| {
        format!(
            "tls = {{ cert = {:?}, key = {:?} }}",
            cert.display().to_string(),
            key.display().to_string()
        )
    };
    let service = |name: &str, keys: String| {
        format!(
            "\n[[service]]\nname = \"{name}\"\nlisten = \"{listen}\"\nimage = \"switchyard-demo:{{version}}\"\nport = 8080\nstop_timeout = \"5s\"\nhealth = {{ path = \"/health\", interval = \"100ms\", healthy_after = 2, deadline = \"20s\" }}\n{keys}\n"
        )
    };
    let mut options = SandboxOptions::new(RuntimeChoice::Docker, app);
    options.listen = Some(listen);
    options.service_keys = format!(
        "hosts = [\"{SHOP}\"]\n{}\nredirect_http = \"{redirect}\"\nmax_body = \"16m\"",
        tls(shop)
    );
    options.tables = service("blog", format!("hosts = [\"{BLOG}\"]\n{}", tls(blog)))
        + &service(
            "api",
            format!(
                "hosts = [\"{SHOP}\"]\npath = \"/api\"\nstrip_path = true\n{}",
                tls(shop)
            ),
        );
    options
}

async fn deploy(sandbox: &Sandbox, service: &str, version: &str) {
    sandbox.ensure_image(version).await.expect("image builds");
    let live = sandbox.live();
    live.deployer(&Progress::new(false))
        .deploy(
            live.spec(service).unwrap(),
            &Version::parse(version).unwrap(),
        )
        .await
        .unwrap_or_else(|e| panic!("{service} {version} deploys: {e}"));
}

#[tokio::test]
async fn services_share_a_tls_listen_by_sni_host_and_path_and_deploy_under_curl() {
    let Some(app) = require_e2e(RuntimeChoice::Docker).await else {
        return;
    };
    if !require(
        ["curl", "openssl"].iter().all(|p| {
            std::process::Command::new(p)
                .arg("--version")
                .output()
                .is_ok()
        }),
        "curl and openssl",
    ) {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let (shop, blog) = (
        self_signed(certs.path(), SHOP),
        self_signed(certs.path(), BLOG),
    );
    let (port, http) = (free_port(), free_port());
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let redirect: SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    let sandbox = Sandbox::start(&options(app, listen, redirect, &shop, &blog))
        .await
        .expect("sandbox starts");
    deploy(&sandbox, "web", "v1").await;
    deploy(&sandbox, "blog", "b1").await;
    deploy(&sandbox, "api", "a1").await;

    // SNI picks each name's certificate (curl verifies it against that name's own CA
    // only), and Host picks the service.
    let a = curl("https", SHOP, port, "/", &shop.0, &[]);
    assert_eq!(
        (a.status, a.version.as_str()),
        (200, "v1"),
        "exit {}",
        a.exit
    );
    assert_eq!(a.http, "2", "HTTP/2 on TLS");
    let b = curl("https", BLOG, port, "/", &blog.0, &[]);
    assert_eq!(
        (b.status, b.version.as_str()),
        (200, "b1"),
        "exit {}",
        b.exit
    );
    // The path-prefixed service, its prefix stripped: the app answers `/` (it has no
    // `/api/` route of its own).
    let api = curl("https", SHOP, port, "/api/", &shop.0, &[]);
    assert_eq!((api.status, api.version.as_str()), (200, "a1"));
    let bare = curl("https", SHOP, port, "/api", &shop.0, &[]);
    assert_eq!(bare.status, 301, "/api is sent on to /api/");
    assert_eq!(bare.location, format!("https://{SHOP}:{port}/api/"));
    // A name no service claims: the handshake is refused (curl's exit 35), nothing served.
    let other = curl("https", "other.example.com", port, "/", &shop.0, &["-k"]);
    assert_eq!(
        (other.status, other.exit),
        (0, 35),
        "an unknown name is refused"
    );
    // Plain HTTP: GET is moved permanently, POST keeps its method (308).
    let moved = curl("http", SHOP, http, "/a?b=1", &shop.0, &[]);
    assert_eq!(moved.status, 301);
    assert_eq!(moved.location, format!("https://{SHOP}:{port}/a?b=1"));
    let post = curl(
        "http",
        SHOP,
        http,
        "/",
        &shop.0,
        &["-X", "POST", "-d", "x=1"],
    );
    assert_eq!(post.status, 308);
    // A 2 MB body passes nginx's 1 MB default: max_body is 16m here.
    let body = certs.path().join("body");
    std::fs::write(&body, vec![b'x'; 2 << 20]).unwrap();
    let upload = curl(
        "https",
        SHOP,
        port,
        "/",
        &shop.0,
        &[
            "-X",
            "POST",
            "--data-binary",
            &format!("@{}", body.display()),
        ],
    );
    assert_eq!(upload.status, 200, "a 2 MB POST is not refused");

    // A deploy of the shop under curl: one keep-alive TLS connection, no retries, every
    // answer written as it completes; the blog is not touched.
    let mut load = tokio::process::Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "60",
            "--resolve",
            &format!("{SHOP}:{port}:127.0.0.1"),
        ])
        .arg("--cacert")
        .arg(&shop.0)
        .args(["-o", "/dev/null", "-w", "%{http_code} %header{x-version}\n"])
        .arg(format!("https://{SHOP}:{port}/?n=[1-50000]"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("curl starts");
    tokio::time::sleep(Duration::from_millis(500)).await;
    deploy(&sandbox, "web", "v2").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Ours to end: the transfer in progress is cut by us, and is not written.
    let _ = load.start_kill();
    let mut out = String::new();
    load.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    let _ = load.wait().await;
    // curl's output is block-buffered: the kill may cut its last line short.
    let complete = &out[..out.rfind('\n').map_or(0, |i| i + 1)];
    let answers: Vec<&str> = complete.lines().collect();
    let failed: Vec<&&str> = answers.iter().filter(|l| !l.starts_with("200 ")).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        answers.len(),
        &failed[..failed.len().min(10)]
    );
    let on = |v: &str| {
        answers
            .iter()
            .filter(|l| l.ends_with(&format!(" {v}")))
            .count()
    };
    assert!(
        on("v1") > 20 && on("v2") > 20,
        "traffic moved from v1 to v2: {} then {}",
        on("v1"),
        on("v2")
    );
    let after = curl("https", BLOG, port, "/", &blog.0, &[]);
    assert_eq!(after.version, "b1", "the blog stayed where it was");
    sandbox.shutdown().await.expect("sandbox shuts down");
}

/// `[proxy] templates`: an override is what nginx serves, and one nginx refuses changes
/// nothing: the deploy fails before traffic moves and the previous version keeps serving.
#[tokio::test]
async fn template_overrides_are_served_and_a_broken_one_changes_nothing() {
    let Some(app) = require_e2e(RuntimeChoice::Process).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let builtin = include_str!("../templates/locations.conf.tera");
    let mine = builtin.replace(
        "    proxy_pass {{ upstream }};",
        "    add_header X-Template mine always;\n    proxy_pass {{ upstream }};",
    );
    assert_ne!(mine, builtin, "the override adds a header");
    std::fs::write(dir.path().join("locations.conf.tera"), &mine).unwrap();
    let mut options = SandboxOptions::new(RuntimeChoice::Process, app);
    options.proxy_keys = format!("templates = {:?}", dir.path().display().to_string());
    let mut sandbox = Sandbox::start(&options).await.expect("sandbox starts");
    sandbox
        .deploy("v1", &Progress::new(false))
        .await
        .expect("v1 deploys");
    let out = std::process::Command::new("curl")
        .args(["-s", "-D", "-", "-o", "/dev/null", &sandbox.url()])
        .output()
        .expect("curl");
    let head = crate::support::text(&out.stdout).to_ascii_lowercase();
    assert!(head.contains("x-template: mine"), "{head}");

    // An override nginx refuses: rejected by `nginx -t` on the staged copy, never reloaded.
    std::fs::write(
        dir.path().join("locations.conf.tera"),
        builtin.replace("    proxy_http_version 1.1;", "    no_such_directive on;"),
    )
    .unwrap();
    sandbox
        .reopen()
        .await
        .expect("the config loads: the template parses");
    let err = sandbox
        .deploy("v2", &Progress::new(false))
        .await
        .expect_err("nginx refuses the override");
    assert!(err.to_string().contains("no_such_directive"), "{err}");
    let (status, _) = crate::support::get(sandbox.listen, "/").await;
    assert_eq!(status, 200, "v1 still serves");
    let out = std::process::Command::new("curl")
        .args(["-s", "-D", "-", "-o", "/dev/null", &sandbox.url()])
        .output()
        .expect("curl");
    let head = crate::support::text(&out.stdout).to_ascii_lowercase();
    assert!(head.contains("x-version: v1"), "{head}");
    sandbox.shutdown().await.expect("sandbox shuts down");
}

/// What the app is told about the client: without `trusted_proxies`, what nginx saw (a
/// client's own `X-Forwarded-*` and `Forwarded` replaced); with it, a trusted peer's chain
/// kept and the client it names as `X-Real-IP`.
#[tokio::test]
async fn forwarded_headers_name_the_client_and_trust_only_trusted_proxies() {
    let Some(app) = require_e2e(RuntimeChoice::Process).await else {
        return;
    };
    let told = |sandbox: &Sandbox, spoof: bool| {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-s", "-H", "Host: shop.example.com"]);
        if spoof {
            cmd.args([
                "-H",
                "X-Forwarded-For: 203.0.113.9",
                "-H",
                "X-Forwarded-Proto: https",
            ])
            .args(["-H", "Forwarded: for=198.51.100.1;proto=https"])
            .args(["-H", "X-Forwarded-Prefix: /evil"]);
        }
        let out = cmd
            .arg(format!("http://{}/headers", sandbox.listen))
            .output()
            .expect("curl");
        crate::support::text(&out.stdout)
    };
    for trusted in [false, true] {
        let mut options = SandboxOptions::new(RuntimeChoice::Process, app.clone());
        if trusted {
            options.service_keys = "trusted_proxies = [\"127.0.0.1\"]".into();
        }
        let sandbox = Sandbox::start(&options).await.expect("sandbox starts");
        sandbox
            .deploy("v1", &Progress::new(false))
            .await
            .expect("v1 deploys");
        let port = format!("x-forwarded-port: {}", sandbox.listen.port());
        let (client, chain, proto) = if trusted {
            ("203.0.113.9", "203.0.113.9, 127.0.0.1", "https")
        } else {
            ("127.0.0.1", "127.0.0.1", "http")
        };
        let want = [
            "host: shop.example.com".to_owned(),
            format!("x-forwarded-for: {chain}"),
            format!("x-forwarded-proto: {proto}"),
            "x-forwarded-host: shop.example.com".to_owned(),
            port.clone(),
            format!("x-real-ip: {client}"),
        ];
        let headers = told(&sandbox, true);
        assert_eq!(
            headers.lines().collect::<Vec<_>>(),
            want,
            "trusted: {trusted}"
        );
        // A trusted peer that names no client: the chain is the peer alone.
        let plain = told(&sandbox, false);
        assert!(
            plain.contains("x-forwarded-for: 127.0.0.1\n")
                && plain.contains("x-real-ip: 127.0.0.1\n"),
            "trusted: {trusted}: {plain}"
        );
        sandbox.shutdown().await.expect("sandbox shuts down");
    }
}
