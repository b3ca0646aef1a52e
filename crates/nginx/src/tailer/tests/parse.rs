//! [`parse_line`] on lines rendered from [`LOG_FORMAT`](crate::tailer::LOG_FORMAT).

use super::{render, Vars, OK};
use crate::tailer::{log_format_directive, parse_line, Attempt, ParseError, ProxyRecord};

fn attempt(addr: &str, status: Option<u16>, response_time: Option<f64>) -> Attempt {
    Attempt {
        addr: addr.to_owned(),
        status,
        response_time,
    }
}

fn attempts(vars: Vars) -> Vec<Attempt> {
    parse_line(&render(vars)).unwrap().attempts
}

fn malformed(line: &str) -> String {
    match parse_line(line) {
        Err(ParseError::Malformed(reason)) => reason,
        other => panic!("expected malformed for {line:?}, got {other:?}"),
    }
}

#[test]
fn a_normal_line() {
    assert_eq!(
        parse_line(&render(OK)).unwrap(),
        ProxyRecord {
            time: 1700000000.123,
            service: "web".into(),
            track: Some("canary".into()),
            status: 200,
            request_time: 0.005,
            attempts: vec![attempt("127.0.0.1:9101", Some(200), Some(0.004))],
        }
    );
}

#[test]
fn service_names_keep_hyphens_and_a_bare_upstream_has_no_track() {
    let r = parse_line(&render(Vars {
        proxy_host: "sy_api-2_stable",
        ..OK
    }))
    .unwrap();
    assert_eq!(
        (r.service.as_str(), r.track.as_deref()),
        ("api-2", Some("stable"))
    );
    let r = parse_line(&render(Vars {
        proxy_host: "sy_web",
        ..OK
    }))
    .unwrap();
    assert_eq!((r.service.as_str(), r.track), ("web", None));
}

#[test]
fn retried_attempts_are_one_entry_each() {
    let got = attempts(Vars {
        upstream_addr: "127.0.0.1:1, 127.0.0.1:2",
        upstream_status: "502, 200",
        upstream_response_time: "0.001, 0.020",
        ..OK
    });
    assert_eq!(
        got,
        [
            attempt("127.0.0.1:1", Some(502), Some(0.001)),
            attempt("127.0.0.1:2", Some(200), Some(0.020)),
        ]
    );
    assert!(got[0].is_error() && !got[1].is_error());
}

#[test]
fn a_dash_is_no_status_and_counts_as_a_502() {
    let got = attempts(Vars {
        upstream_addr: "127.0.0.1:1, 127.0.0.1:2",
        upstream_status: "-, 200",
        upstream_response_time: "-, 0.002",
        ..OK
    });
    assert_eq!(got[0], attempt("127.0.0.1:1", None, None));
    assert_eq!((got[0].code(), got[0].is_error()), (502, true));
    assert_eq!(got[1], attempt("127.0.0.1:2", Some(200), Some(0.002)));
}

#[test]
fn a_group_separator_splits_attempts_too() {
    let got = attempts(Vars {
        upstream_addr: "127.0.0.1:1, 127.0.0.1:2 : [::1]:3",
        upstream_status: "502, 404 : 200",
        upstream_response_time: "0.001, 0.002 : 0.003",
        ..OK
    });
    assert_eq!(
        got,
        [
            attempt("127.0.0.1:1", Some(502), Some(0.001)),
            attempt("127.0.0.1:2", Some(404), Some(0.002)),
            attempt("[::1]:3", Some(200), Some(0.003)),
        ]
    );
}

#[test]
fn a_trailing_group_separator_is_not_an_attempt() {
    // nginx prints " : " for a redirect that then reached no upstream.
    let got = attempts(Vars {
        upstream_addr: "127.0.0.1:1 : ",
        upstream_status: "404 : ",
        upstream_response_time: "0.001 : ",
        ..OK
    });
    assert_eq!(got, [attempt("127.0.0.1:1", Some(404), Some(0.001))]);
}

#[test]
fn no_upstream_reached_is_no_attempts() {
    // escape=json prints unset variables as empty strings.
    let got = attempts(Vars {
        upstream_addr: "",
        upstream_status: "",
        upstream_response_time: "",
        status: "499",
        ..OK
    });
    assert_eq!(got, []);
}

#[test]
fn escaped_json_is_decoded() {
    let line = render(Vars {
        upstream_addr: "unix:/run/a \"quoted\"\\path\n.sock",
        ..OK
    });
    assert!(line.contains(r#"a \"quoted\"\\path\u000a.sock"#), "{line}");
    assert_eq!(
        parse_line(&line).unwrap().attempts[0].addr,
        "unix:/run/a \"quoted\"\\path\n.sock"
    );
    // An escape inside the upstream name still yields the track.
    let line = render(OK).replace("sy_web_canary", r"sy_web_can\u0061ry");
    assert_eq!(parse_line(&line).unwrap().track.as_deref(), Some("canary"));
}

#[test]
fn lines_of_other_servers_are_not_ours() {
    for host in ["", "backend", "web_canary", "SY_web"] {
        let line = render(Vars {
            proxy_host: host,
            ..OK
        });
        assert_eq!(parse_line(&line), Err(ParseError::NotOurs), "{host:?}");
    }
}

#[test]
fn malformed_lines_say_what_is_wrong() {
    assert!(malformed("not json").contains("expected"));
    assert!(malformed(r#"{"msec":1.0}"#).contains("missing field"));
    assert!(malformed(&render(OK)[..40]).contains("EOF"));
    let reason = malformed(&render(Vars {
        upstream_addr: "127.0.0.1:1, 127.0.0.1:2",
        ..OK
    }));
    assert!(reason.contains("do not line up"), "{reason}");
    let reason = malformed(&render(Vars {
        upstream_status: "2x0",
        ..OK
    }));
    assert!(
        reason.contains(r#"upstream_status entry "2x0""#),
        "{reason}"
    );
    for host in ["sy_", "sy__canary", "sy_web_"] {
        let reason = malformed(&render(Vars {
            proxy_host: host,
            ..OK
        }));
        assert!(reason.contains("neither sy_<service>"), "{reason}");
    }
}

#[test]
fn the_directive_quotes_the_format_whole() {
    let directive = log_format_directive();
    assert!(directive.starts_with("log_format switchyard_json escape=json '{"));
    assert!(directive.ends_with("}';"));
    assert_eq!(directive.matches('\'').count(), 2, "{directive}");
    for var in [
        "$msec",
        "$proxy_host",
        "$upstream_addr",
        "$upstream_status",
        "$upstream_response_time",
        "$status",
        "$request_time",
    ] {
        assert!(directive.contains(var), "{var} missing from {directive}");
    }
}

#[test]
fn a_client_that_went_away_is_not_an_upstream_error() {
    // Review finding: a 499 logs `-` for the waiting attempt, which counted as a 502 and could
    // fail a slow but correct canary.
    let gone = attempts(Vars {
        upstream_status: "-",
        upstream_response_time: "-",
        status: "499",
        ..OK
    });
    assert_eq!(gone[0].status, Some(499));
    assert!(!gone[0].is_error());
    // A real upstream failure with `-` still counts as one.
    let failed = attempts(Vars {
        upstream_status: "-",
        upstream_response_time: "-",
        status: "502",
        ..OK
    });
    assert!(failed[0].is_error());
}
