use std::path::Path;

use super::*;
use crate::config::Config;
use crate::model::{Instance, Slot};

fn spec(strategy: &str, replicas: u16) -> ServiceSpec {
    spec_with(strategy, replicas, "")
}

/// A service with `lines` added to its `[[service]]` table.
fn spec_with(strategy: &str, replicas: u16, lines: &str) -> ServiceSpec {
    let text = format!(
        "[proxy]\nprefix = \"nginx\"\n[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:8000\"\nimage = \"demo:{{version}}\"\nreplicas = {replicas}\nstrategy = \"{strategy}\"\n{lines}\n[service.rolling]\nallow_downtime = true\n"
    );
    Config::parse(&text, Path::new("t.toml")).unwrap().services[0].clone()
}

fn live(replicas: u16) -> ServiceRecord {
    let instances = (0..replicas)
        .map(|r| Instance {
            id: format!("c{r}"),
            name: format!("sy-web-blue-d1-r{r}"),
            service: crate::names::Name::parse("web").unwrap(),
            version: Version::parse("v1").unwrap(),
            color: Color::Blue,
            deployment: 1,
            origin: 1,
            replica: r,
            host_port: 4000 + r,
        })
        .collect();
    ServiceRecord {
        active: Some(Slot {
            version: Version::parse("v1").unwrap(),
            color: Color::Blue,
            deployment: 1,
            instances,
        }),
        retained: vec![],
    }
}

#[test]
fn a_rolling_plan_has_one_step_per_batch() {
    let v2 = Version::parse("v2").unwrap();
    let plan = rolling(
        &spec("rolling", 4),
        &live(4),
        &v2,
        StrategyKind::Rolling,
        RouteBy::Reload,
    );
    let batches: Vec<&String> = plan
        .steps
        .iter()
        .filter(|s| s.starts_with("batch"))
        .collect();
    assert_eq!(batches.len(), 4, "{:#?}", plan.steps);
    assert!(
        batches[0].contains("1 new in, 1 old out (4 in the upstream)"),
        "{}",
        batches[0]
    );
    assert_eq!(plan.strategy, "rolling");
}

#[test]
fn an_in_place_plan_keeps_the_ports_and_shows_its_gap() {
    let v2 = Version::parse("v2").unwrap();
    let plan = rolling(
        &spec("in-place", 3),
        &live(3),
        &v2,
        StrategyKind::InPlace,
        RouteBy::Reload,
    );
    let ports: Vec<u16> = plan.upstream.backends.iter().map(|a| a.port()).collect();
    assert_eq!(ports, [4000, 4001, 4002]);
    assert!(
        plan.steps[0].contains("at most 3 replica(s) running"),
        "{}",
        plan.steps[0]
    );

    let one = rolling(
        &spec("in-place", 1),
        &live(1),
        &v2,
        StrategyKind::InPlace,
        RouteBy::Reload,
    );
    assert!(
        one.steps
            .iter()
            .any(|s| s.contains("requests fail until the replacement answers")),
        "{:#?}",
        one.steps
    );
}

// Regression (issue 8): `switchyard plan --strategy canary`, and a service whose strategy
// is canary, printed a blue-green plan: the CLI sent every non-rolling kind to blue_green.
#[test]
fn a_canary_is_not_planned_as_blue_green() {
    let v2 = Version::parse("v2").unwrap();
    for spec in [spec("canary", 2), spec("blue-green", 2)] {
        let plan = for_strategy(&spec, &live(2), &v2, StrategyKind::Canary, RouteBy::Reload);
        assert_eq!(plan.strategy, "canary");
        let steps: Vec<&String> = plan
            .steps
            .iter()
            .filter(|s| s.starts_with("canary step"))
            .collect();
        assert_eq!(steps.len(), 3, "{:#?}", plan.steps);
        assert!(steps[0].contains("5% to v2"), "{}", steps[0]);
        let canary = plan.upstream.canary.as_ref().expect("a split upstream");
        assert_eq!(canary.weight_bp, 500);
    }
}

#[test]
fn a_first_canary_goes_live_whole() {
    let v1 = Version::parse("v1").unwrap();
    let plan = canary(
        &spec("canary", 2),
        &ServiceRecord::default(),
        &v1,
        RouteBy::Reload,
    );
    assert!(
        plan.steps[0].contains("goes live whole"),
        "{:#?}",
        plan.steps
    );
    assert!(!plan.steps.iter().any(|s| s.starts_with("canary step")));
    assert_eq!(plan.upstream.canary, None);
}

const VOLUMES: &str =
    r#"volumes = ["/srv/shop/data:/data", "shop-cache:/cache", "/etc/shop:/etc/shop:ro"]"#;

#[test]
fn two_versions_at_once_on_a_writable_volume_are_warned_of() {
    let v2 = Version::parse("v2").unwrap();
    for kind in [StrategyKind::BlueGreen, StrategyKind::Canary] {
        let plan = for_strategy(
            &spec_with(kind.as_str(), 2, VOLUMES),
            &live(2),
            &v2,
            kind,
            RouteBy::Dynamic,
        );
        assert_eq!(plan.warnings.len(), 2, "{kind:?}: {:#?}", plan.warnings);
        assert!(
            plan.warnings[0].starts_with(
                "bind /srv/shop/data (at /data) is writable and shared: v1 and v2 both run"
            ),
            "{}",
            plan.warnings[0]
        );
        assert!(plan.warnings[1].starts_with("volume shop-cache (at /cache)"));
        assert!(
            !plan.warnings.iter().any(|w| w.contains("/etc/shop")),
            "read-only is fine"
        );
    }
}

#[test]
fn no_shared_volume_warning_when_the_versions_never_run_together() {
    let v2 = Version::parse("v2").unwrap();
    // In place with one replica: the old one stops before the new one starts.
    let one = spec_with("in-place", 1, VOLUMES);
    let plan = for_strategy(&one, &live(1), &v2, StrategyKind::InPlace, RouteBy::Dynamic);
    assert_eq!(plan.warnings, Vec::<String>::new());
    // Nothing live yet.
    let bg = spec_with("blue-green", 2, VOLUMES);
    let plan = for_strategy(
        &bg,
        &ServiceRecord::default(),
        &v2,
        StrategyKind::BlueGreen,
        RouteBy::Dynamic,
    );
    assert_eq!(plan.warnings, Vec::<String>::new());
}

#[test]
fn in_place_batches_that_overlap_are_warned_of_too() {
    // Three replicas in place: a v2 replica starts while two v1 replicas still serve.
    let v2 = Version::parse("v2").unwrap();
    let three = spec_with("in-place", 3, VOLUMES);
    let plan = for_strategy(
        &three,
        &live(3),
        &v2,
        StrategyKind::InPlace,
        RouteBy::Dynamic,
    );
    assert_eq!(plan.warnings.len(), 2, "{:#?}", plan.warnings);
    assert!(plan.warnings[0].contains("during this in-place deploy"));
}

/// Every `golden/<case>.toml` (a config with one service, `web`) planned from v1 live to v2
/// and from nothing live to v1, compared with `golden/<case>.plan`. Refresh the goldens
/// with `UPDATE_EXPECT=1 cargo test -p switchyard-engine plan`, never by hand, and read the
/// diff before committing it.
#[test]
fn plans_match_golden() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/plan/golden");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    cases.sort();
    let names: Vec<String> = cases
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    for preset in ["blue-green", "canary", "rolling", "in-place"] {
        assert!(names.iter().any(|n| n == preset), "no golden case {preset}");
    }
    for case in &cases {
        let text = std::fs::read_to_string(case).unwrap();
        let config =
            Config::parse(&text, case).unwrap_or_else(|e| panic!("{}: {e}", case.display()));
        let spec = &config.services[0];
        let (v1, v2) = (Version::parse("v1").unwrap(), Version::parse("v2").unwrap());
        for (by, extension) in [
            (RouteBy::Reload, "plan"),
            (RouteBy::Dynamic, "dynamic.plan"),
        ] {
            let mut out = render(&for_strategy(
                spec,
                &live(spec.replicas),
                &v2,
                spec.strategy,
                by,
            ));
            out.push('\n');
            out.push_str(&render(&for_strategy(
                spec,
                &ServiceRecord::default(),
                &v1,
                spec.strategy,
                by,
            )));
            check_golden(&case.with_extension(extension), &out);
        }
    }
}

/// The plan as `switchyard plan` prints it, and the upstream it previews.
fn render(plan: &Plan) -> String {
    let from = plan.from.as_deref().unwrap_or("nothing");
    let mut out = format!(
        "plan: {} {from} -> {} ({}, {} slot)\n",
        plan.service,
        plan.to,
        plan.strategy,
        plan.color.as_str()
    );
    for (i, step) in plan.steps.iter().enumerate() {
        out.push_str(&format!("  {}. {step}\n", i + 1));
    }
    for warning in &plan.warnings {
        out.push_str(&format!("warning: {warning}\n"));
    }
    let addrs = |a: &[SocketAddr]| {
        a.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    out.push_str(&format!("upstream: {}\n", addrs(&plan.upstream.backends)));
    if let Some(c) = &plan.upstream.canary {
        out.push_str(&format!(
            "canary upstream at {} bp: {} (sticky {:?}, route {:?})\n",
            c.weight_bp,
            addrs(&c.backends),
            c.sticky,
            c.route
        ));
    }
    out
}

/// Compares `actual` with the file at `path`, or writes it there when `UPDATE_EXPECT=1`.
fn check_golden(path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_EXPECT").is_some_and(|v| v == "1") {
        std::fs::write(path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "reading golden {}: {e}; create it with UPDATE_EXPECT=1",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{} differs from the planned steps; if the change is intended, refresh it with \
         UPDATE_EXPECT=1\n--- golden\n{expected}\n--- planned\n{actual}",
        path.display()
    );
}
