//! Unit tests of serve's pieces without IO: which version a track serves, rollback reasons,
//! reload durations from journal timestamps, and the proxy series' zero-first attribution.
//! The daemon itself is tested end to end in `tests/serve.rs`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use switchyard_engine::{
    Cause, Color, DeployKind, DeploymentRecord, DrainHandle, Instance, JournalEntry, Name, Outcome,
    ServedCanary, Step, Version,
};
use switchyard_nginx::tailer::{parse_line, TrafficCounters};

use super::check_listen;
use super::exposition::encode;
use super::history::{reload_durations, rollback_reason};
use super::proxy::ProxySeries;
use super::tracks::TrackState;

fn record(strategy: &str, kind: DeployKind, outcome: Outcome, message: &str) -> DeploymentRecord {
    DeploymentRecord {
        id: 7,
        service: Name::parse("web").unwrap(),
        kind,
        strategy: strategy.to_owned(),
        from_version: Some(Version::parse("v1").unwrap()),
        to_version: Version::parse("v2").unwrap(),
        color: Color::Green,
        who: "ana@build-1 (pid 100)".to_owned(),
        started_ms: 1_000,
        finished_ms: (outcome != Outcome::Running).then_some(9_000),
        outcome,
        message: message.to_owned(),
    }
}

fn journal(steps: Vec<(i64, Step)>) -> Vec<JournalEntry> {
    steps
        .into_iter()
        .enumerate()
        .map(|(seq, (at_ms, step))| JournalEntry {
            seq: seq as i64,
            at_ms,
            step,
        })
        .collect()
}

fn shift(weight_bp: u32) -> Step {
    Step::Shift {
        weight_bp,
        backends: Vec::new(),
    }
}

fn shifted(weight_bp: u32) -> Step {
    Step::Shifted {
        weight_bp,
        generation: 2,
        drain: DrainHandle::default(),
    }
}

fn serve(canary: Option<u32>) -> Step {
    Step::Serve {
        batch: 1,
        instances: vec!["c1".into()],
        backends: vec![],
        canary: canary.map(|weight_bp| ServedCanary {
            instances: vec!["c2".into()],
            backends: vec![],
            weight_bp,
        }),
    }
}

fn routed() -> Step {
    Step::Routed {
        generation: 3,
        drain: DrainHandle::default(),
    }
}

#[test]
fn a_running_canary_names_the_canary_track_and_its_last_shifted_weight() {
    let running = (
        record("canary", DeployKind::Deploy, Outcome::Running, ""),
        journal(vec![
            (1, Step::WaitHealthy),
            (2, shift(500)),
            (3, shifted(500)),
            (4, shift(2500)),
        ]),
    );
    let mut last = None;
    let state = TrackState::resolve(Some("v1".into()), Some(running), &mut last);
    assert_eq!((state.stable.as_str(), state.canary.as_str()), ("v1", "v2"));
    assert_eq!(
        state.canary_bp, 500,
        "a shift not yet confirmed moved nothing"
    );
    assert_eq!(
        (state.weight("stable"), state.weight("canary")),
        (0.95, 0.05)
    );
    assert_eq!(last.as_deref(), Some("v2"));

    // Done: the canary track keeps its last version, with no traffic.
    let after = TrackState::resolve(Some("v2".into()), None, &mut last);
    assert_eq!((after.stable.as_str(), after.canary.as_str()), ("v2", "v2"));
    assert_eq!((after.weight("stable"), after.weight("canary")), (1.0, 0.0));
}

#[test]
fn traffic_moves_to_the_new_version_at_routed_not_when_the_slot_becomes_active() {
    let flip = |steps: Vec<(i64, Step)>| {
        let mut all = vec![(0, started_v2())];
        all.extend(steps);
        let running = (
            record("blue-green", DeployKind::Deploy, Outcome::Running, ""),
            journal(all),
        );
        TrackState::resolve(Some("v1".into()), Some(running), &mut None)
    };
    let to_v2 = serve_only("v2-r0");
    assert_eq!(flip(vec![(1, to_v2.clone())]).stable, "v1");
    assert_eq!(flip(vec![(1, to_v2.clone()), (2, routed())]).stable, "v2");
    let back = vec![
        (1, to_v2),
        (2, routed()),
        (3, serve_only("v1-r0")),
        (4, routed()),
    ];
    assert_eq!(flip(back).stable, "v1");
    // A journal written before every strategy journaled `serve`: by address.
    let legacy = Step::Route {
        backends: vec![v2_addr()],
    };
    assert_eq!(flip(vec![(1, legacy), (2, routed())]).stable, "v2");
}

fn v2_addr() -> SocketAddr {
    "127.0.0.1:4100".parse().unwrap()
}

fn started_v2() -> Step {
    Step::InstanceStarted {
        instance: Instance {
            id: "v2-r0".into(),
            name: "sy-web-green-d7-r0".into(),
            service: Name::parse("web").unwrap(),
            version: Version::parse("v2").unwrap(),
            color: Color::Green,
            deployment: 7,
            origin: 7,
            replica: 0,
            host_port: v2_addr().port(),
        },
    }
}

fn serve_only(id: &str) -> Step {
    Step::Serve {
        batch: 1,
        instances: vec![id.into()],
        backends: vec![],
        canary: None,
    }
}

fn instance(id: &str, version: &str) -> switchyard_engine::Instance {
    switchyard_engine::Instance {
        id: id.to_owned(),
        name: format!("sy-web-{id}"),
        service: Name::parse("web").unwrap(),
        version: Version::parse(version).unwrap(),
        color: Color::Green,
        deployment: 7,
        origin: 7,
        replica: 0,
        host_port: 4000,
    }
}

fn serve_batch(batch: u32, ids: &[&str]) -> Step {
    Step::Serve {
        batch,
        instances: ids.iter().map(|&i| i.to_owned()).collect(),
        backends: Vec::new(),
        canary: None,
    }
}

// Regression (issue 8): the traffic-weight gauge gave v2 all of the stable track's traffic
// after the first batch of a rolling deploy: `routed` moved the stable track whole.
#[test]
fn mid_rollout_the_stable_track_is_split_by_replicas_on_each_version() {
    let started = |id| Step::InstanceStarted {
        instance: instance(id, "v2"),
    };
    let rolling = |steps| {
        let running = (
            record("rolling", DeployKind::Deploy, Outcome::Running, ""),
            journal(steps),
        );
        TrackState::resolve(Some("v1".into()), Some(running), &mut None)
    };
    // Three v1 replicas (o1..o3), max_surge 1: one v2 replica in per batch.
    let mut steps = vec![(1, started("n1")), (2, serve_batch(1, &["o2", "o3", "n1"]))];
    let intended = rolling(steps.clone());
    assert_eq!(
        intended.stable_weights(),
        [("v1", 1.0)],
        "not confirmed yet"
    );

    steps.push((3, routed()));
    let one_batch = rolling(steps.clone());
    assert_eq!(
        one_batch.stable_weights(),
        [("v1", 2.0 / 3.0), ("v2", 1.0 / 3.0)]
    );
    assert_eq!(one_batch.weight("canary"), 0.0);
    let scraped = encode(vec![super::weights(&BTreeMap::from([(
        "web".to_owned(),
        one_batch,
    )]))]);
    for series in [
        "switchyard_traffic_weight{service=\"web\",track=\"stable\",version=\"v1\"} 0.666",
        "switchyard_traffic_weight{service=\"web\",track=\"stable\",version=\"v2\"} 0.333",
    ] {
        assert!(scraped.contains(series), "no {series} in\n{scraped}");
    }

    steps.extend([
        (4, started("n2")),
        (5, serve_batch(2, &["o3", "n1", "n2"])),
        (6, routed()),
        (7, started("n3")),
        (8, serve_batch(3, &["n1", "n2", "n3"])),
        (9, routed()),
    ]);
    assert_eq!(rolling(steps).stable_weights(), [("v2", 1.0)]);

    // A restore restarts the replaced v1 replicas: they count as v1 again.
    let restored = rolling(vec![
        (1, started("n1")),
        (2, serve_batch(1, &["o2", "o3", "n1"])),
        (3, routed()),
        (
            4,
            Step::RestartInstance {
                instance: instance("o1", "v1"),
            },
        ),
        (5, serve_batch(2, &["o1", "o2", "o3"])),
        (6, routed()),
    ]);
    assert_eq!(restored.stable_weights(), [("v1", 1.0)]);
}

#[test]
fn a_blue_green_flip_moves_the_stable_track_whole() {
    let running = (
        record("blue-green", DeployKind::Deploy, Outcome::Running, ""),
        journal(vec![
            (0, started_v2()),
            (1, serve_only("v2-r0")),
            (2, routed()),
        ]),
    );
    let state = TrackState::resolve(Some("v1".into()), Some(running), &mut None);
    assert_eq!(state.stable_weights(), [("v2", 1.0)]);
}

#[test]
fn nothing_deployed_is_version_none_with_no_weight() {
    let state = TrackState::resolve(None, None, &mut None);
    assert_eq!(
        (state.stable.as_str(), state.canary.as_str()),
        ("none", "none")
    );
    assert_eq!((state.weight("stable"), state.weight("canary")), (0.0, 0.0));
    assert_eq!(state.version("other"), None);
}

#[test]
fn rollback_reasons_come_from_the_kind_and_the_journaled_cause() {
    // Regression: the reason was once read from the wording of the message.
    let failed = |strategy: &str, steps: Vec<(i64, Step)>| {
        let d = record(
            strategy,
            DeployKind::Deploy,
            Outcome::Failed,
            "reworded at will",
        );
        rollback_reason(&d, &journal(steps))
    };
    let failing = |cause| Step::Failing {
        cause,
        reason: "why".into(),
    };
    for cause in Cause::ALL {
        let steps = vec![(1, shift(500)), (2, shifted(500)), (3, failing(cause))];
        assert_eq!(failed("canary", steps), Some(cause.as_str()), "{cause:?}");
    }
    // A canary counts even when it failed before its first step.
    let unhealthy = vec![(1, Step::WaitHealthy), (2, failing(Cause::Unhealthy))];
    assert_eq!(failed("canary", unhealthy), Some("unhealthy"));
    // A rolling deploy whose second batch failed had moved traffic: restored, a rollback.
    let batch_2 = vec![(1, routed()), (2, failing(Cause::Unhealthy)), (3, routed())];
    assert_eq!(failed("rolling", batch_2), Some("unhealthy"));
    // A failed blue-green deploy never moved traffic.
    let never = vec![(1, Step::WaitHealthy), (2, failing(Cause::Unhealthy))];
    assert_eq!(failed("blue-green", never), None);
    // A journal written before causes were recorded.
    assert_eq!(failed("canary", vec![(1, shifted(500))]), Some("other"));
    let manual = record(
        "blue-green",
        DeployKind::Rollback,
        Outcome::Succeeded,
        "deployed",
    );
    assert_eq!(rollback_reason(&manual, &[]), Some("manual"));
    let good = record(
        "canary",
        DeployKind::Deploy,
        Outcome::Succeeded,
        "canary promoted",
    );
    assert_eq!(
        rollback_reason(&good, &journal(vec![(1, shifted(500))])),
        None
    );
}

#[test]
fn reload_durations_pair_each_intent_with_its_confirmation() {
    let steps = journal(vec![
        (1_000, shift(500)),
        (1_150, shifted(500)),
        (5_000, shift(2500)),
        // nginx refused this one: no `shifted`, no duration.
        (6_000, Step::Route { backends: vec![] }),
        (6_090, routed()),
        // What every strategy journals now: a rolling batch, then a canary step.
        (7_000, serve(None)),
        (7_020, routed()),
        (8_000, serve(Some(2500))),
        (8_040, routed()),
    ]);
    assert_eq!(
        reload_durations(&steps),
        [
            ("shift", 0.15),
            ("route", 0.09),
            ("route", 0.02),
            ("shift", 0.04)
        ]
    );
}

fn line(track: &str, status: u16, seconds: f64) -> String {
    format!(
        r#"{{"msec":1700000000.5,"proxy_host":"sy_web_{track}","upstream_addr":"127.0.0.1:9","upstream_status":"{status}","upstream_response_time":"{seconds}","status":{status},"request_time":{seconds}}}"#
    )
}

fn record_lines(counters: &mut TrafficCounters, lines: &[String]) {
    for l in lines {
        counters.record(&parse_line(l).unwrap());
    }
}

/// The value of the exposition line that starts with `series ` (name and labels).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn tracks(stable: &str) -> BTreeMap<String, TrackState> {
    let state = TrackState::resolve(Some(stable.to_owned()), None, &mut None);
    BTreeMap::from([("web".to_owned(), state)])
}

const V1_2XX: &str =
    r#"switchyard_proxy_requests_total{service="web",track="stable",version="v1",code="2xx"}"#;
const V2_2XX: &str =
    r#"switchyard_proxy_requests_total{service="web",track="stable",version="v2",code="2xx"}"#;

#[test]
fn a_new_series_is_shown_at_zero_before_it_counts() {
    let mut counters = TrafficCounters::new();
    let mut proxy = ProxySeries::default();
    record_lines(&mut counters, &[line("stable", 200, 0.004)]);
    proxy.attribute(&counters, &tracks("v1"));
    let first = encode(proxy.expose());
    assert_eq!(value(&first, V1_2XX), Some(0.0), "{first}");
    assert_eq!(
        value(
            &first,
            r#"switchyard_proxy_requests_total{service="web",track="canary",version="none",code="5xx"}"#
        ),
        Some(0.0)
    );

    proxy.attribute(&counters, &tracks("v1"));
    let second = encode(proxy.expose());
    assert_eq!(value(&second, V1_2XX), Some(1.0), "{second}");
    let count = r#"switchyard_proxy_request_duration_seconds_bucket{service="web",track="stable",version="v1",le="0.005"}"#;
    assert_eq!(value(&second, count), Some(1.0), "{second}");

    // A 503 is a class this track has not shown yet: the series comes first, at 0.
    record_lines(&mut counters, &[line("stable", 503, 0.002)]);
    let v1_5xx =
        r#"switchyard_proxy_requests_total{service="web",track="stable",version="v1",code="5xx"}"#;
    proxy.attribute(&counters, &tracks("v1"));
    let third = encode(proxy.expose());
    assert_eq!(
        value(&third, v1_5xx),
        Some(1.0),
        "declared at 0 before, so it counts"
    );
}

#[test]
fn a_new_version_starts_at_zero_and_the_old_one_keeps_its_count() {
    let mut counters = TrafficCounters::new();
    let mut proxy = ProxySeries::default();
    proxy.attribute(&counters, &tracks("v1"));
    proxy.expose();
    record_lines(
        &mut counters,
        &[line("stable", 200, 0.004), line("stable", 200, 0.004)],
    );
    proxy.attribute(&counters, &tracks("v1"));

    // The flip: v2's series are held at 0 until a scrape shows them.
    record_lines(&mut counters, &[line("stable", 200, 0.004)]);
    proxy.attribute(&counters, &tracks("v2"));
    let shown = encode(proxy.expose());
    assert_eq!(value(&shown, V1_2XX), Some(2.0), "{shown}");
    assert_eq!(value(&shown, V2_2XX), Some(0.0), "{shown}");
    proxy.attribute(&counters, &tracks("v2"));
    let counted = encode(proxy.expose());
    assert_eq!(value(&counted, V1_2XX), Some(2.0), "{counted}");
    assert_eq!(value(&counted, V2_2XX), Some(1.0), "{counted}");
}

#[test]
fn lines_of_unknown_services_and_tracks_are_not_exported() {
    let mut counters = TrafficCounters::new();
    record_lines(
        &mut counters,
        &[line("stable", 200, 0.001).replace("sy_web_", "sy_api_")],
    );
    let mut proxy = ProxySeries::default();
    proxy.attribute(&counters, &tracks("v1"));
    proxy.expose();
    proxy.attribute(&counters, &tracks("v1"));
    let text = encode(proxy.expose());
    assert!(!text.contains("api"), "{text}");
}

#[test]
fn a_listen_off_loopback_needs_tls() {
    let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
    assert!(check_listen(addr("127.0.0.1:9100"), false).is_ok());
    assert!(check_listen(addr("[::1]:9100"), false).is_ok());
    for remote in ["0.0.0.0:9100", "192.0.2.7:9100", "[::]:9100"] {
        let err = check_listen(addr(remote), false).unwrap_err();
        assert_eq!(err.code, 2);
        assert!(
            err.message.contains("[serve] cert and key"),
            "{}",
            err.message
        );
        // With TLS the token crosses encrypted: allowed.
        assert!(check_listen(addr(remote), true).is_ok(), "{remote}");
    }
}
