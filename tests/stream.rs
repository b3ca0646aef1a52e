//! Long-lived requests through deploys (issue 11's front door), on real nginx and Docker
//! containers of the demo-app, under both routings: a websocket opened before a deploy keeps
//! answering from the old version until the drain ends and one opened after lands on the
//! new version; an event stream (`buffering = false`) arrives as it is sent; 10 MB uploads
//! sent while a deploy runs all arrive whole, and `max_body` is really applied. HTTP load runs
//! through every deploy and fails no request (see [`load`] for which client, per routing).
//! The clients are in `support/stream.rs`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_app::load::{Load, LoadConfig, LoadReport};
use switchyard_app::progress::Progress;
use switchyard_app::sandbox::{Sandbox, SandboxOptions};
use switchyard_docker::image::{build_scratch_image, ScratchImage};
use switchyard_docker::DockerRuntime;
use switchyard_engine::config::RuntimeChoice;

use crate::support::stream::{
    read_events, talk_until_closed, upload, upload_answer, upload_body, Websocket,
};
use crate::support::{assert_no_failures, require_dynamic, require_e2e, responses_from};

/// The service's drain timeout: how long an old version's open websocket may keep it.
const DRAIN: Duration = Duration::from_secs(3);
/// The demo-app's `SHUTDOWN_GRACE_MS`: how long it keeps a websocket open after SIGTERM.
const GRACE: Duration = Duration::from_secs(1);
const MB: usize = 1024 * 1024;

fn quiet() -> Progress {
    Progress::new(false)
}

/// The images of this module, `<IMAGE>:v1` and `:v2`: the sandbox's shared
/// `switchyard-demo:<version>` tags may be rebuilt meanwhile by another test process, from a
/// demo-app without these routes.
const IMAGE: &str = "switchyard-demo-stream";
static IMAGES_BUILT: tokio::sync::Mutex<bool> = tokio::sync::Mutex::const_new(false);

async fn build_images(app: &Path) {
    let mut built = IMAGES_BUILT.lock().await;
    if *built {
        return;
    }
    let docker = DockerRuntime::connect("stream-test").await.unwrap();
    for version in ["v1", "v2"] {
        let tag = format!("{IMAGE}:{version}");
        let image = ScratchImage {
            tag: &tag,
            binary: app,
            env: &[],
            healthcheck: None,
        };
        build_scratch_image(&docker, &image).await.unwrap();
    }
    *built = true;
}

/// A sandbox of one replica with `keys` in its `[[service]]` table; routing "auto" demands
/// the dynamic router (a loud skip, or a failure under CI, without the Lua module).
async fn sandbox(routing: &str, keys: &str) -> Option<Sandbox> {
    let app = require_e2e(RuntimeChoice::Docker).await?;
    build_images(&app).await;
    let mut options = SandboxOptions::new(RuntimeChoice::Docker, app)
        .routing(routing)
        .drain_timeout(&format!("{}s", DRAIN.as_secs()))
        .env("LATENCY_MS", "5")
        .env("SHUTDOWN_GRACE_MS", &GRACE.as_millis().to_string())
        .service_keys(keys);
    options.image = Some(format!("{IMAGE}:{{version}}"));
    let sandbox = Sandbox::start(&options).await.expect("sandbox starts");
    if routing == "auto" && !require_dynamic(&sandbox.live().router) {
        return None;
    }
    Some(sandbox)
}

/// Background GETs through every deploy. Under dynamic routing from a client that never
/// re-sends; under reload routing from one that re-sends a GET cut by the reload closing its
/// idle keep-alive connection, as browsers do: nginx 1.22 has no `keepalive_min_timeout`, so
/// a client that never re-sends loses a few requests per reload (ARCHITECTURE.md, "Decisions
/// worth knowing"). The long-lived requests under test never re-send, under either routing.
fn load(sandbox: &Sandbox, routing: &str) -> Load {
    let mut config = LoadConfig::new(sandbox.url());
    config.connections = 8;
    config.max_duration = Duration::from_secs(60);
    config.resend = routing == "reload";
    Load::start(config)
}

/// No failed request in the background load; none re-sent either, but under reload routing.
fn assert_load_ok(report: &LoadReport, routing: &str) {
    if routing == "reload" {
        assert_eq!(report.failed, 0, "failed requests:\n{report}");
        assert!(report.ok > 50, "the load ran: {report}");
    } else {
        assert_no_failures(report);
    }
}

/// When traffic moved to `version`: no request sent before it was answered by it.
fn cutover(load: &Load, version: &str) -> Instant {
    load.snapshot().by_version[version].first
}

async fn websocket_through_a_deploy(routing: &str) {
    let Some(sandbox) = sandbox(routing, "").await else {
        return;
    };
    sandbox.deploy("v1", &quiet()).await.expect("v1 deploys");
    let mut old = Websocket::open(sandbox.listen)
        .await
        .expect("a websocket opens through nginx");
    assert_eq!(old.exchange("hello").await.as_deref(), Ok("v1 hello"));
    let load = load(&sandbox, routing);
    responses_from(&load, "v1", 100).await;
    let talk = tokio::spawn(talk_until_closed(
        old,
        Duration::from_millis(100),
        Duration::from_secs(30),
    ));
    sandbox.deploy("v2", &quiet()).await.expect("v2 deploys");
    let deployed = Instant::now();
    responses_from(&load, "v2", 100).await;
    let cutover = cutover(&load, "v2");

    let mut new = Websocket::open(sandbox.listen)
        .await
        .expect("a websocket opens after the cutover");
    for i in 0..5 {
        let text = format!("after {i}");
        assert_eq!(new.exchange(&text).await, Ok(format!("v2 {text}")));
    }
    new.close().await;

    let talk = talk.await.unwrap();
    let stray: Vec<&str> = (talk.replies.iter().map(|(_, r)| r.as_str()))
        .filter(|r| !r.starts_with("v1 "))
        .collect();
    assert!(stray.is_empty(), "the old socket stays on v1: {stray:?}");
    let (ended, why) = talk
        .ended
        .clone()
        .expect("the old socket closed when v1 was retired");
    let last = talk.last_reply().expect("the old socket answered");
    eprintln!(
        "old websocket: last reply {:?} and end {:?} after the cutover ({why}), deploy done {:?} \
         after it",
        last.saturating_duration_since(cutover),
        ended.saturating_duration_since(cutover),
        deployed.saturating_duration_since(cutover)
    );
    // Cut at the start of the drain, the socket would have stopped answering at the cutover
    // (kamal-proxy's behaviour); it answers until the drain timeout has passed.
    // Cut when the drain began, it would stop at once, or GRACE later if the drain did not
    // count it; a second of slack covers how late the first v2 answer marks the cutover.
    assert!(
        last + Duration::from_secs(1) >= cutover + DRAIN,
        "the old socket answered until the drain ended: last reply {:?} after the cutover \
         (drain timeout {DRAIN:?}); it ended with {why}",
        last.saturating_duration_since(cutover)
    );
    let limit = DRAIN + GRACE + Duration::from_secs(2);
    assert!(
        ended <= cutover + limit,
        "the old socket closed within the drain timeout and the app's grace: it ended {:?} \
         after the cutover ({why})",
        ended.saturating_duration_since(cutover)
    );
    assert!(
        ended <= deployed + Duration::from_secs(1),
        "the deploy returned only after v1, and its socket, were gone"
    );
    assert_load_ok(&load.stop().await, routing);
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_websocket_open_through_a_deploy_stays_on_the_old_version_until_the_drain_ends() {
    websocket_through_a_deploy("auto").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_websocket_open_through_a_deploy_stays_on_the_old_version_until_the_drain_ends() {
    websocket_through_a_deploy("reload").await;
}

async fn events_through_a_deploy(routing: &str) {
    let Some(sandbox) = sandbox(routing, "buffering = false").await else {
        return;
    };
    sandbox.deploy("v1", &quiet()).await.expect("v1 deploys");
    // nginx 1.22 passes events this far apart on at once even while buffering (it flushes
    // whenever the app has nothing more to read), so the timing below cannot tell whether
    // the key was applied: the file nginx runs says.
    let conf_dir = &sandbox.live().router.layout.conf_dir;
    let locations = std::fs::read_to_string(conf_dir.join("web.locations")).unwrap();
    assert!(locations.contains("proxy_buffering off;"), "{locations}");
    let load = load(&sandbox, routing);
    responses_from(&load, "v1", 100).await;
    // 20 events 100 ms apart: the stream outlasts the start of v2 and ends within the drain.
    let (count, gap) = (20u32, Duration::from_millis(100));
    let asked = Instant::now();
    let path = format!("/events?n={count}&ms={}", gap.as_millis());
    let addr = sandbox.listen;
    let stream = tokio::spawn(async move { read_events(addr, &path).await });
    sandbox.deploy("v2", &quiet()).await.expect("v2 deploys");
    let events = stream.await.unwrap().expect("the event stream is read");
    assert_eq!(events.status, 200);
    let data: Vec<&str> = events.events.iter().map(|(_, d)| d.as_str()).collect();
    let sent: Vec<String> = (1..=count).map(|i| format!("v1 {i}")).collect();
    assert_eq!(
        data, sent,
        "every event of the stream opened on v1, in order"
    );
    // Event i is sent (i - 1) gaps after the request. Buffered by nginx, they would all
    // arrive together at the end; unbuffered, each arrives about when it was sent.
    let late = Duration::from_millis(800);
    let offsets: Vec<u128> = (events.events.iter())
        .map(|(at, _)| (*at - asked).as_millis())
        .collect();
    eprintln!("events arrived (ms after the request): {offsets:?}");
    for (i, (at, data)) in events.events.iter().enumerate() {
        let since = *at - asked;
        let sent_at = gap * i as u32;
        assert!(
            since <= sent_at + late,
            "event {data:?}, sent {sent_at:?} after the request, arrived {since:?} after it"
        );
    }
    let (first, last) = (events.events[0].0, events.events[count as usize - 1].0);
    assert!(
        last - first >= gap * (count - 1) - late,
        "the events arrived spread out as sent, first to last {:?}",
        last - first
    );

    responses_from(&load, "v2", 100).await;
    let after = read_events(sandbox.listen, "/events?n=3&ms=10")
        .await
        .expect("a stream opened after the deploy");
    let data: Vec<&str> = after.events.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(data, ["v2 1", "v2 2", "v2 3"]);
    assert_load_ok(&load.stop().await, routing);
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_event_stream_arrives_unbuffered_through_a_deploy() {
    events_through_a_deploy("auto").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_event_stream_arrives_unbuffered_through_a_deploy() {
    events_through_a_deploy("reload").await;
}

/// Uploads `body` one after another, 50 ms apart, until `done` (at most 100).
fn upload_until(
    sandbox: &Sandbox,
    body: Arc<Vec<u8>>,
    done: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Result<(u16, String), String>>> {
    let addr = sandbox.listen;
    tokio::spawn(async move {
        let mut results = Vec::new();
        for _ in 0..100 {
            if done.load(Ordering::SeqCst) {
                break;
            }
            results.push(upload(addr, &body).await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        results
    })
}

async fn uploads_through_a_deploy(routing: &str) {
    let Some(sandbox) = sandbox(routing, "").await else {
        return;
    };
    sandbox.deploy("v1", &quiet()).await.expect("v1 deploys");
    let load = load(&sandbox, routing);
    responses_from(&load, "v1", 100).await;
    let body = Arc::new(upload_body(10 * MB));
    let answer = upload_answer(&body);
    let done = Arc::new(AtomicBool::new(false));
    let mut loops = Vec::new();
    for _ in 0..2 {
        loops.push(upload_until(&sandbox, Arc::clone(&body), Arc::clone(&done)));
    }
    sandbox.deploy("v2", &quiet()).await.expect("v2 deploys");
    done.store(true, Ordering::SeqCst);
    let mut results = Vec::new();
    for uploads in loops {
        results.extend(uploads.await.unwrap());
    }
    assert!(
        results.len() >= 4,
        "uploads ran through the deploy: {results:?}"
    );
    for result in &results {
        let (status, text) = result.as_ref().expect("every upload got an answer");
        assert_eq!(*status, 200, "{text}");
        let (version, rest) = text.split_once(' ').unwrap_or_default();
        assert!(["v1", "v2"].contains(&version), "{text}");
        assert_eq!(rest, answer, "the upload arrived whole at {version}");
    }

    responses_from(&load, "v2", 100).await;
    let after = upload(sandbox.listen, &body).await;
    assert_eq!(after, Ok((200, format!("v2 {answer}"))));
    // 2 MB: over nginx's own 1 MB default, under switchyard's.
    let small = upload_body(2 * MB);
    let after = upload(sandbox.listen, &small).await;
    assert_eq!(after, Ok((200, format!("v2 {}", upload_answer(&small)))));
    assert_load_ok(&load.stop().await, routing);
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_ten_megabyte_uploads_through_a_deploy_all_arrive_whole() {
    uploads_through_a_deploy("auto").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_ten_megabyte_uploads_through_a_deploy_all_arrive_whole() {
    uploads_through_a_deploy("reload").await;
}

async fn max_body_is_applied(routing: &str) {
    let Some(sandbox) = sandbox(routing, r#"max_body = "1m""#).await else {
        return;
    };
    sandbox.deploy("v1", &quiet()).await.expect("v1 deploys");
    let under = upload_body(MB / 2);
    let answer = upload(sandbox.listen, &under).await;
    assert_eq!(answer, Ok((200, format!("v1 {}", upload_answer(&under)))));
    let (status, text) = upload(sandbox.listen, &upload_body(2 * MB))
        .await
        .expect("nginx answers an upload over max_body");
    assert_eq!(status, 413, "2 MB over max_body = \"1m\": {text}");
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_upload_over_max_body_gets_413() {
    max_body_is_applied("auto").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_upload_over_max_body_gets_413() {
    max_body_is_applied("reload").await;
}
