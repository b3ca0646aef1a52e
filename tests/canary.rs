//! Canary deploys end to end: real nginx, real containers of the demo-app, the embedded judge
//! reading nginx's access log, and a load through every step. The cutover machinery fails
//! no request; a bad canary's own failures stay bounded and never touch the stable track.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switchyard_app::load::{FailureKind, Load};
use switchyard_app::progress::Progress;
use switchyard_app::sandbox::{Sandbox, SERVICE};
use switchyard_engine::config::RuntimeChoice;
use switchyard_engine::{Control, Name, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{assert_no_failures, responses_from};

/// Short holds so a whole canary takes seconds: the judge needs 20 requests in a 3 s window.
pub(crate) const FAST: &str = r#"steps = [20, 50, 100]
hold = "2s"
interval = "1s"
window = "3s"
min_requests = 20
inconclusive_limit = 10"#;

async fn sandbox(runtime: RuntimeChoice, canary: &str, env: &[(&str, &str)]) -> Option<Sandbox> {
    crate::e2e::sandbox(runtime, |mut o| {
        o.canary = canary.to_owned();
        env.iter().fold(o, |o, (k, v)| o.env(k, v))
    })
    .await
}

fn load(sandbox: &Sandbox, connections: usize) -> Load {
    crate::support::load(sandbox.url(), connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_canary_is_promoted_with_zero_failed_requests() {
    let Some(sandbox) = sandbox(RuntimeChoice::Docker, FAST, &[]).await else {
        return;
    };
    sandbox
        .deploy("v1", &Progress::new(false))
        .await
        .expect("v1 deploys");
    let load = load(&sandbox, 32);
    responses_from(&load, "v1", 200).await;
    let report = sandbox
        .deploy_canary("v2", &Progress::new(false))
        .await
        .expect("v2 is promoted");
    let promoted = Instant::now();
    responses_from(&load, "v2", 500).await;
    let traffic = load.stop().await;
    assert_no_failures(&traffic);
    assert!(
        traffic.by_version["v1"].last <= promoted,
        "v1 answered nothing after the promotion"
    );
    let (_, journal) = sandbox
        .live()
        .store
        .deployment(report.deployment)
        .unwrap()
        .unwrap();
    let passes = journal.iter().filter(|e| matches!(&e.step, switchyard_engine::Step::Analysis { verdict, .. } if verdict == "pass")).count();
    assert!(
        passes >= 2,
        "each step was judged on real traffic: {journal:#?}"
    );
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_canary_is_rolled_back_and_the_stable_track_never_fails() {
    let env = [("FAIL_RATE", "0.3"), ("FAILING_VERSIONS", "v2")];
    let Some(sandbox) = sandbox(RuntimeChoice::Docker, FAST, &env).await else {
        return;
    };
    sandbox
        .deploy("v1", &Progress::new(false))
        .await
        .expect("v1 deploys");
    let load = load(&sandbox, 32);
    responses_from(&load, "v1", 200).await;
    let started = Instant::now();
    let err = sandbox
        .deploy_canary("v2", &Progress::new(false))
        .await
        .expect_err("the canary fails its checks");
    let rolled_back = Instant::now();
    assert_eq!(err.code, 1, "{err}");
    assert!(err.message.contains("at 20%: error rate"), "{err}");
    assert!(err.message.contains("exceeds the maximum 1.00%"), "{err}");
    assert!(
        rolled_back - started < Duration::from_secs(20),
        "detected and rolled back promptly"
    );
    responses_from(&load, "v1", load.snapshot().by_version["v1"].count + 300).await;
    let traffic = load.stop().await;
    assert!(
        traffic.failed > 0,
        "the canary really failed requests: {traffic}"
    );
    assert_eq!(traffic.retried, 0, "nothing was re-sent: {traffic}");
    for failure in &traffic.failures {
        match &failure.kind {
            FailureKind::Status {
                code: 500,
                version: Some(v),
            } if v == "v2" => {}
            other => panic!("only the canary's own 500s may fail, not {other:?}:\n{traffic}"),
        }
    }
    let last_v2 = traffic.by_version.get("v2").map(|v| v.last);
    assert!(
        last_v2.is_none_or(|t| t <= rolled_back),
        "nothing reached v2 after the rollback"
    );
    sandbox.shutdown().await.unwrap();
}

/// GET / on a fresh connection with extra headers; returns the answering version.
async fn version_for(addr: SocketAddr, headers: &[(&str, &str)]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    stream
        .write_all(format!("GET / HTTP/1.0\r\nHost: t\r\n{extra}\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let header = response.lines().find_map(|l| l.strip_prefix("x-version: "));
    header
        .unwrap_or_else(|| panic!("no x-version in {response}"))
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_canary_keeps_sticky_users_and_routes_testers_by_header() {
    let canary = format!("{FAST}\nsticky = {{ cookie = \"uid\" }}\nroute = {{ header = \"X-Canary\", value = \"always\" }}\npause = [20]");
    let Some(sandbox) = sandbox(RuntimeChoice::Process, &canary, &[]).await else {
        return;
    };
    sandbox
        .deploy("v1", &Progress::new(false))
        .await
        .expect("v1 deploys");
    let load = load(&sandbox, 16);
    let name = Name::parse(SERVICE).unwrap();
    let quiet = Progress::new(false);
    let deploy = sandbox.deploy_canary("v2", &quiet);
    let checks = async {
        let store = &sandbox.live().store;
        crate::support::until_paused(store, &name, "20%").await;
        for _ in 0..10 {
            assert_eq!(
                version_for(sandbox.listen, &[("X-Canary", "always")]).await,
                "v2",
                "testers reach the canary"
            );
        }
        let mut on_canary = 0;
        for i in 0..60 {
            let cookie = format!("uid=user{i}");
            let first = version_for(sandbox.listen, &[("Cookie", &cookie)]).await;
            for _ in 0..3 {
                assert_eq!(
                    version_for(sandbox.listen, &[("Cookie", &cookie)]).await,
                    first,
                    "user{i} stays on one side"
                );
            }
            on_canary += usize::from(first == "v2");
        }
        assert!(
            (2..=25).contains(&on_canary),
            "{on_canary} of 60 users on the canary at 20%"
        );
        let (deployment, _) = store.unfinished(&name).unwrap().unwrap();
        store
            .put_control(deployment.id, Control::Promote, 0)
            .unwrap();
    };
    let (result, ()) = tokio::join!(deploy, checks);
    result.expect("promoted after the operator's promote");
    let traffic = load.stop().await;
    assert_no_failures(&traffic);
    sandbox.shutdown().await.unwrap();
}
