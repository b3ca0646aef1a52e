//! The dashboard in a real browser: headless Chromium (Debian's `chromium`) driven over the
//! DevTools protocol ([`browser`]). The page signs in with the token, shows the live version
//! and weights of a paused canary, its latest steps and thresholds, and its promote button
//! finishes it; a failed deployment picked in the history shows its hooks, steps, disruption
//! and evidence as text; every request the page makes stays on serve's own 127.0.0.1 origin.
//! Screenshots are kept in `target/test-artifacts/dashboard*.png`.

mod browser;

use std::path::PathBuf;

use serde_json::json;
use switchyard_app::live::Live;
use switchyard_app::progress::Progress;
use switchyard_app::sandbox::SERVICE;
use switchyard_app::serve::{self, ServeOptions};
use switchyard_app::settings;
use switchyard_engine::config::RuntimeChoice;
use switchyard_engine::{Name, Store};

use crate::support::assert_no_failures;
pub(crate) use browser::{require_chromium, Browser};

const TOKEN: &str = "dashboard-test-token-0123456789";

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

/// The binary's `deploy` on the sandbox's config, which keeps evidence (the sandbox's own
/// deploys keep none); its stderr, after checking it exited 1.
fn failing_deploy(sandbox: &switchyard_app::sandbox::Sandbox, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--config")
        .arg(&sandbox.config_path)
        .args(["deploy", SERVICE])
        .args(args)
        .output()
        .unwrap();
    crate::support::assert_exit(&out, 1);
    crate::support::text(&out.stderr)
}

/// `#detail [data-evidence=NAME]`'s text, '' if there is none.
fn section(name: &str) -> String {
    format!("(document.querySelector('#detail [data-evidence={name}]')?.innerText || '')")
}

impl Browser {
    /// Picks deployment `id` in the history and waits until its `section` shows `showing`;
    /// then checks each section's text holds each of its needles.
    async fn details(&mut self, id: i64, showing: (&str, &str), expected: &[(&str, &[&str])]) {
        let row = format!(
            "[...document.querySelectorAll('#history tr.pick')].find((r) => r.cells[0].textContent === '{id}')"
        );
        self.until(
            &format!("deployment #{id} in the history"),
            &format!("!!{row}"),
        )
        .await;
        self.eval(&format!("{row}.click(), true")).await;
        let (name, text) = showing;
        let shows = format!("{}.includes({text:?})", section(name));
        self.until(&format!("{text:?} in #{id}'s {name}"), &shows)
            .await;
        let detail = self
            .eval("document.getElementById('detail').innerText")
            .await;
        let detail = detail.as_str().unwrap().to_owned();
        // Text, not a JSON document: no element holds the API's body as written.
        let raw = self
            .eval(
                "[...document.querySelectorAll('#detail *')].some((e) => /^\\s*[{\\[]\\s*\"/.test(e.textContent)) \
                 || document.getElementById('detail').innerText.includes('\"summary\":')",
            )
            .await;
        assert_eq!(
            raw,
            json!(false),
            "#{id}'s details show raw JSON:\n{detail}"
        );
        for (name, needles) in expected {
            let shown = self.eval(&section(name)).await;
            let shown = shown.as_str().unwrap();
            for needle in *needles {
                assert!(
                    shown.contains(needle),
                    "{needle:?} in #{id}'s {name} section; the details show:\n{detail}"
                );
            }
        }
    }
}

/// Regression: a deployment's details were one raw JSON `<pre>`. A v2 whose `pre_traffic`
/// smoke test fails, and a v3 canary over its p99 threshold (under a load that never
/// re-sends: 0 failed), are shown, once picked in the history, as sections of text: the hook
/// with its output, the steps, what failed at the proxy per track, the cause, the new
/// replicas, the judge's checks against their thresholds; no JSON document anywhere.
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
        // Every replica answers in about 5 ms: over a 1 ms p99, without a failed request.
        o.canary = format!("{}\nmax_p99_latency = \"1ms\"", crate::canary::FAST);
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
    let said = failing_deploy(&sandbox, &["--version", "v2"]);
    assert!(said.contains("pre_traffic hook failed"), "{said}");
    let said = failing_deploy(&sandbox, &["--version", "v3", "--strategy", "canary"]);
    assert!(said.contains("p99"), "{said}");
    crate::support::responses_from(&load, "v1", load.snapshot().by_version["v1"].count + 50).await;
    assert_no_failures(&load.stop().await);
    let newest = sandbox.live().store.history(None, 2).unwrap();
    let (canary, hooked) = (newest[0].id, newest[1].id);

    let server = serve_for(&sandbox).await;
    let origin = format!("http://{}", server.addr());
    let mut browser = Browser::launch().await;
    browser.navigate(&format!("{origin}/#token={TOKEN}")).await;
    let hook_failed: [(&str, &[&str]); 5] = [
        (
            "hooks",
            &["pre_traffic: FAILED: exit 1", "smoke test failed on v2"],
        ),
        ("steps", &["hook_ran", "failing", "remove_new"]),
        (
            "cause",
            &["cause: hook: ", "pre_traffic hook failed: exit 1"],
        ),
        ("disruption", &["0 of ", "stable"]),
        (
            "replicas",
            &[" v2 127.0.0.1:", "exit code ", "log tail", "listening"],
        ),
    ];
    let output = ("hooks", "smoke test failed on v2");
    browser.details(hooked, output, &hook_failed).await;
    let canary_failed: [(&str, &[&str]); 4] = [
        (
            "checks",
            &[
                "thresholds: error rate at most 1.00%, at least 20 requests, p99 at most 1 ms",
                "p99 (max 1 ms)",
            ],
        ),
        ("cause", &["cause: threshold: "]),
        ("hooks", &["pre_traffic: ok: exit 0", "smoke test passed"]),
        ("disruption", &["canary"]),
    ];
    browser
        .details(canary, ("checks", "fail"), &canary_failed)
        .await;
    let png = browser.screenshot().await;
    std::fs::write(artifact("dashboard-evidence.png"), &png).unwrap();
    browser.assert_stayed_on(&origin);
    drop(browser);
    server.shutdown().await.unwrap();
    sandbox.shutdown().await.unwrap();
}
