//! `[service.rolling]` and the rolling/in-place presets.

use super::*;

/// GOOD with `strategy = "in-place"` after `replicas = 2` (line 12): the table after it starts on
/// line 16, its first key on line 17.
fn in_place() -> String {
    GOOD.replace("replicas = 2", "replicas = 2\nstrategy = \"in-place\"")
}

fn with_table(base: &str, lines: &str) -> String {
    format!("{base}\n[service.rolling]\n{lines}\n")
}

fn rolling_of(text: &str) -> RollingSpec {
    Config::parse(text, Path::new("t.toml")).unwrap().services[0].rolling
}

/// (line, field) of every error, in the order reported.
fn located(text: &str) -> Vec<(usize, String)> {
    errors(text)
        .into_iter()
        .map(|e| (e.line, e.field))
        .collect()
}

const ROLLING_DEFAULTS: RollingSpec = RollingSpec {
    max_surge: 1,
    max_unavailable: 0,
    on_failure: OnFailure::Rollback,
    allow_downtime: false,
};

#[test]
fn presets_give_the_rolling_defaults() {
    let text = GOOD.replace("replicas = 2", "replicas = 2\nstrategy = \"rolling\"");
    let c = Config::parse(&text, Path::new("t.toml")).unwrap();
    let web = &c.services[0];
    assert_eq!(web.strategy, StrategyKind::Rolling);
    assert_eq!(
        web.rolling, ROLLING_DEFAULTS,
        "from strategies/rolling.toml"
    );
    assert_eq!(web.retain, 1, "from strategies/rolling.toml");
    assert_eq!(web.drain_timeout, Duration::from_secs(30));

    let c = Config::parse(&in_place(), Path::new("t.toml")).unwrap();
    let web = &c.services[0];
    assert_eq!(web.strategy, StrategyKind::InPlace);
    assert_eq!(
        web.rolling,
        RollingSpec {
            max_surge: 0,
            max_unavailable: 1,
            on_failure: OnFailure::Rollback,
            allow_downtime: false,
        },
        "from strategies/in-place.toml"
    );
    assert_eq!(web.retain, 1, "from strategies/in-place.toml");
    assert_eq!(web.drain_timeout, Duration::from_secs(30));
}

#[test]
fn blue_green_and_canary_services_get_the_rolling_preset() {
    // For `switchyard deploy --strategy rolling`.
    assert_eq!(rolling_of(GOOD), ROLLING_DEFAULTS);
    let canary = GOOD.replace("replicas = 2", "replicas = 2\nstrategy = \"canary\"");
    assert_eq!(rolling_of(&canary), ROLLING_DEFAULTS);
    // An empty table (as the sandbox writes) changes nothing.
    assert_eq!(rolling_of(&with_table(GOOD, "")), ROLLING_DEFAULTS);
}

#[test]
fn rolling_table_merges_over_the_preset() {
    let text = with_table(GOOD, "max_unavailable = 1\non_failure = \"pause\"");
    assert_eq!(
        rolling_of(&text),
        RollingSpec {
            max_surge: 1,
            max_unavailable: 1,
            on_failure: OnFailure::Pause,
            allow_downtime: false,
        },
        "max_surge from strategies/rolling.toml"
    );
    let text = with_table(&in_place(), "max_unavailable = 2");
    assert_eq!(
        rolling_of(&text),
        RollingSpec {
            max_surge: 0,
            max_unavailable: 2,
            on_failure: OnFailure::Rollback,
            allow_downtime: false,
        },
        "max_surge from strategies/in-place.toml"
    );
    // One replica in place is accepted once the gap is.
    let text = with_table(
        &in_place().replace("replicas = 2", "replicas = 1"),
        "allow_downtime = true",
    );
    assert_eq!(
        rolling_of(&text),
        RollingSpec {
            max_surge: 0,
            max_unavailable: 1,
            on_failure: OnFailure::Rollback,
            allow_downtime: true,
        }
    );
}

#[test]
fn bad_rolling_values_are_located() {
    for (line, field, message) in [
        (
            "max_surge = 0",
            "service.rolling.max_surge",
            "max_surge and max_unavailable are both 0: the rollout could never replace a replica",
        ),
        (
            "max_surge = 5",
            "service.rolling.max_surge",
            "max_surge 5 is more than replicas (2)",
        ),
        (
            "max_unavailable = 3",
            "service.rolling.max_unavailable",
            "max_unavailable 3 is more than replicas (2)",
        ),
        (
            "on_failure = \"retry\"",
            "service.rolling.on_failure",
            "unknown on_failure \"retry\": use \"rollback\"",
        ),
        ("max_sruge = 1", "max_sruge", "unknown field"),
        ("max_surge = -1", "", "invalid value"),
    ] {
        // A blue-green service's table is still checked: --strategy rolling uses it.
        let text = with_table(GOOD, line);
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{line}: {errs:?}");
        let e = &errs[0];
        assert_eq!((e.field.as_str(), e.line), (field, 16), "{line}: {e}");
        assert!(e.message.contains(message), "{line}: {e}");
    }
}

#[test]
fn both_zero_points_at_the_field_the_service_set() {
    let text = with_table(GOOD, "max_surge = 0\nmax_unavailable = 0");
    assert_eq!(located(&text), [(16, "service.rolling.max_surge".into())]);
    // In place, max_surge must be 0: max_unavailable is the one to raise.
    let text = with_table(&in_place(), "max_unavailable = 0");
    assert_eq!(
        located(&text),
        [(17, "service.rolling.max_unavailable".into())]
    );
    let text = with_table(&in_place(), "max_surge = 0\nmax_unavailable = 0");
    assert_eq!(
        located(&text),
        [(18, "service.rolling.max_unavailable".into())]
    );
}

#[test]
fn in_place_must_not_surge() {
    let text = with_table(&in_place(), "max_surge = 1");
    let e = &errors(&text)[0];
    assert_eq!(
        (e.line, e.field.as_str()),
        (17, "service.rolling.max_surge")
    );
    assert_eq!(
        e.to_string(),
        "switchyard.toml:17:13: service.rolling.max_surge: in-place runs with no extra capacity: \
         max_surge must be 0 (use strategy = \"rolling\" to surge)"
    );
    // The same value is fine for a rolling service.
    let rolling = with_table(
        &GOOD.replace("replicas = 2", "replicas = 2\nstrategy = \"rolling\""),
        "max_surge = 1",
    );
    assert_eq!(rolling_of(&rolling).max_surge, 1);
}

#[test]
fn in_place_with_one_replica_needs_allow_downtime() {
    let one = in_place().replace("replicas = 2", "replicas = 1");
    let e = &errors(&one)[0];
    assert_eq!((e.line, e.field.as_str()), (11, "service.replicas"), "{e}");
    assert!(
        e.message.starts_with(
            "in-place with 1 replica stops it before its replacement is up, so requests fail for the gap: set allow_downtime = true"
        ),
        "{e}"
    );
    // Set false explicitly: point at it.
    let text = with_table(&one, "allow_downtime = false");
    assert_eq!(
        located(&text),
        [(17, "service.rolling.allow_downtime".into())]
    );
    // Without `replicas` (1 by default): point at the strategy.
    let text = in_place().replace("replicas = 2\n", "");
    assert_eq!(located(&text), [(11, "service.strategy".into())]);
    // A blue-green service with one replica is fine (--strategy in-place is refused by the
    // deploy, not by the config).
    rolling_of(&GOOD.replace("replicas = 2", "replicas = 1"));
}

#[test]
fn invalid_replicas_skips_the_comparisons() {
    let text = with_table(
        &GOOD.replace("replicas = 2", "replicas = 0"),
        "max_surge = 5",
    );
    assert_eq!(located(&text), [(11, "service.replicas".into())]);
    let text = with_table(&in_place().replace("replicas = 2", "replicas = 99"), "");
    assert_eq!(located(&text), [(11, "service.replicas".into())]);
}

#[test]
fn every_rolling_problem_is_reported_at_once() {
    let text = with_table(
        &in_place().replace("name = \"web\"", "name = \"web;evil\""),
        "max_surge = 2\nmax_unavailable = 3\non_failure = \"retry\"",
    );
    assert_eq!(
        located(&text),
        [
            (7, "service.name".into()),
            (17, "service.rolling.max_surge".into()),
            (18, "service.rolling.max_unavailable".into()),
            (19, "service.rolling.on_failure".into()),
        ]
    );
}

#[test]
fn for_kind_in_place_never_surges() {
    let in_place = RollingSpec::default().for_kind(StrategyKind::InPlace);
    assert_eq!((in_place.max_surge, in_place.max_unavailable), (0, 1));
    let wide = RollingSpec {
        max_surge: 3,
        max_unavailable: 2,
        ..RollingSpec::default()
    };
    let in_place = wide.for_kind(StrategyKind::InPlace);
    assert_eq!((in_place.max_surge, in_place.max_unavailable), (0, 2));
    assert_eq!(wide.for_kind(StrategyKind::Rolling), wide);
    assert_eq!(wide.for_kind(StrategyKind::BlueGreen), wide);
}
