//! The API's pure parts: query strings, deploy bodies, the schema on every answer.

use serde_json::json;

use super::*;

#[test]
fn history_takes_a_service_and_a_bounded_limit() {
    assert_eq!(history_query(None).unwrap(), (None, 20));
    let (service, limit) = history_query(Some("service=web&limit=5")).unwrap();
    assert_eq!((service.unwrap().as_str(), limit), ("web", 5));
    for bad in ["limit=0", "limit=1001", "limit=x", "service=a;b", "since=1"] {
        assert!(history_query(Some(bad)).is_err(), "{bad}");
    }
}

#[test]
fn a_deploy_body_names_a_valid_version_and_maybe_a_strategy() {
    match deploy_action(br#"{"version": "v2", "strategy": "canary"}"#).unwrap() {
        run::Action::Deploy { version, strategy } => {
            assert_eq!(version.as_str(), "v2");
            assert_eq!(strategy, Some(StrategyKind::Canary));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        deploy_action(br#"{"version": "v2"}"#).unwrap(),
        run::Action::Deploy { strategy: None, .. }
    ));
    for bad in [
        &br#"{"version": "v2;rm"}"#[..],
        br#"{"version": "v2", "strategy": "yolo"}"#,
        br#"{"version": "v2", "force": true}"#,
        br#"{}"#,
        b"v2",
    ] {
        let err = deploy_action(bad).unwrap_err();
        assert!(!err.is_empty(), "{}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn every_answer_carries_the_schema() {
    assert_eq!(with_schema(json!({"a": 1})), json!({"a": 1, "schema": 1}));
    assert_eq!(with_schema(json!([1])), json!({"schema": 1, "value": [1]}));
}
