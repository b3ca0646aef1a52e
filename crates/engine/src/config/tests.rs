//! Config parsing and validation: every error names the file, line, column and field.

use super::presets::{
    preset, Preset, BLUE_GREEN_PRESET, CANARY_PRESET, IN_PLACE_PRESET, ROLLING_PRESET,
};
use super::*;

mod front;
mod hooks;
mod rolling;
mod serve;

const GOOD: &str = r#"
[proxy]
prefix = "nginx"
control = "127.0.0.1:18099"

[[service]]
name = "web"
listen = "127.0.0.1:8000"
image = "demo-app:{version}"
port = 8080
replicas = 2
health = { path = "/health", interval = "100ms", healthy_after = 3 }
env = { LATENCY_MS = "20" }
"#;

fn errors(text: &str) -> Vec<ConfigError> {
    Config::parse(text, Path::new("switchyard.toml"))
        .expect_err("config should be rejected")
        .0
}

#[test]
fn good_config_fills_preset_defaults() {
    let c = Config::parse(GOOD, Path::new("switchyard.toml")).unwrap();
    let web = c.service("web").unwrap();
    assert_eq!(web.replicas, 2);
    assert_eq!(web.health.healthy_after, 3);
    assert_eq!(web.health.interval, Duration::from_millis(100));
    assert_eq!(
        web.drain_timeout,
        Duration::from_secs(30),
        "from strategies/blue-green.toml"
    );
    assert_eq!(web.retain, 1, "from strategies/blue-green.toml");
    assert_eq!(
        web.source_for(&Version::parse("v2").unwrap()),
        Source::Image("demo-app:v2".into())
    );
    assert_eq!(
        c.proxy.mode,
        ProxyMode::Managed {
            prefix: "nginx".into()
        }
    );
}

#[test]
fn bad_service_name_is_located_by_line_and_field() {
    let text = GOOD.replace("name = \"web\"", "name = \"web;evil\"");
    let e = &errors(&text)[0];
    assert_eq!((e.line, e.field.as_str()), (7, "service.name"));
    assert!(
        e.to_string()
            .starts_with("switchyard.toml:7:8: service.name: invalid name"),
        "{e}"
    );
}

#[test]
fn unknown_field_is_located() {
    let text = GOOD.replace("port = 8080", "prot = 8080");
    let e = &errors(&text)[0];
    assert_eq!(e.line, 10, "{e}");
    assert!(e.message.contains("unknown field"), "{e}");
    assert_eq!(e.field, "prot");
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = GOOD
        .replace("\"127.0.0.1:8000\"", "\"localhost\"")
        .replace("\"100ms\"", "\"fast\"")
        .replace("LATENCY_MS", "latency");
    let fields: Vec<String> = errors(&text).into_iter().map(|e| e.field).collect();
    assert_eq!(
        fields,
        ["service.listen", "service.env", "service.health.interval"]
    );
}

#[test]
fn unknown_strategy_and_missing_image_are_rejected() {
    let text = GOOD.replace("replicas = 2", "replicas = 2\nstrategy = \"linear\"");
    let e = &errors(&text)[0];
    assert_eq!((e.line, e.field.as_str()), (12, "service.strategy"));
    assert!(e.message.contains("\"rolling\" or \"in-place\""), "{e}");
    let text = GOOD.replace("image = \"demo-app:{version}\"", "");
    assert_eq!(errors(&text)[0].field, "service.image");
}

#[test]
fn duplicate_services_and_listeners_are_rejected() {
    let svc = GOOD.split("[[service]]").nth(1).unwrap();
    let text = format!("{GOOD}\n[[service]]{svc}");
    let errors = errors(&text);
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    // One listen may serve several services, but not both for any host under one path.
    assert_eq!(fields, ["service.name", "service.hosts"]);
    assert!(
        errors[1]
            .message
            .contains("services web and web both claim requests for any host"),
        "{}",
        errors[1]
    );
}

#[test]
fn control_address_must_be_loopback() {
    let text = GOOD.replace("127.0.0.1:18099", "0.0.0.0:18099");
    assert_eq!(errors(&text)[0].field, "proxy.control");
}

#[test]
fn routing_defaults_to_auto_and_takes_each_choice() {
    let c = Config::parse(GOOD, Path::new("switchyard.toml")).unwrap();
    assert_eq!(c.proxy.routing, RoutingChoice::Auto);
    for (word, choice) in [
        ("auto", RoutingChoice::Auto),
        ("dynamic", RoutingChoice::Dynamic),
        ("reload", RoutingChoice::Reload),
    ] {
        let text = GOOD.replace(
            "control = \"127.0.0.1:18099\"",
            &format!("control = \"127.0.0.1:18099\"\nrouting = \"{word}\""),
        );
        let c = Config::parse(&text, Path::new("switchyard.toml")).unwrap();
        assert_eq!(c.proxy.routing, choice, "{word}");
    }
}

#[test]
fn unknown_routing_is_located_by_line_and_field() {
    let text = GOOD.replace(
        "control = \"127.0.0.1:18099\"",
        "control = \"127.0.0.1:18099\"\nrouting = \"lua\"",
    );
    let errors = errors(&text);
    assert_eq!(errors[0].field, "proxy.routing");
    assert_eq!(errors[0].line, 5);
    assert!(errors[0].message.contains("\"dynamic\""), "{}", errors[0]);
}

#[test]
fn process_runtime_needs_a_command() {
    let text = format!("[runtime]\nkind = \"process\"\n{GOOD}");
    assert_eq!(errors(&text)[0].field, "service.command");
    let text = text.replace("image =", "command = [\"./demo-app\"]\n#");
    let c = Config::parse(&text, Path::new("x.toml")).unwrap();
    assert_eq!(c.runtime, RuntimeChoice::Process);
}

#[test]
fn compiled_in_presets_parse() {
    let kinds = [
        StrategyKind::BlueGreen,
        StrategyKind::Canary,
        StrategyKind::Rolling,
        StrategyKind::InPlace,
    ];
    for kind in kinds {
        let p = preset(kind);
        assert_eq!(p.kind, kind.as_str(), "the preset for {kind:?}");
        parse_duration(&p.drain_timeout).unwrap();
        // Each preset's own values pass validation.
        let text = GOOD.replace(
            "replicas = 2",
            &format!("replicas = 2\nstrategy = {:?}", kind.as_str()),
        );
        let c =
            Config::parse(&text, Path::new("t.toml")).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        assert_eq!(c.services[0].strategy, kind);
    }
    // Every file in strategies/ is one of them, compiled in.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../strategies");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let p: Preset = toml::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let kind = StrategyKind::parse(&p.kind).unwrap();
        assert_eq!(
            path.file_name().unwrap().to_str().unwrap(),
            format!("{}.toml", kind.as_str())
        );
        let compiled = match kind {
            StrategyKind::BlueGreen => BLUE_GREEN_PRESET,
            StrategyKind::Canary => CANARY_PRESET,
            StrategyKind::Rolling => ROLLING_PRESET,
            StrategyKind::InPlace => IN_PLACE_PRESET,
        };
        assert_eq!(text, compiled, "{path:?}");
        seen.push(kind);
    }
    assert_eq!(seen.len(), kinds.len(), "{seen:?}");
}

#[test]
fn canary_table_merges_over_the_preset() {
    let text = format!("{GOOD}\n[service.canary]\nsteps = [10, 50, 100]\nhold = \"10s\"\nsticky = {{ cookie = \"uid\" }}\nroute = {{ header = \"X-Canary\", value = \"always\" }}\npause = [50]\n");
    let c = Config::parse(&text, Path::new("t.toml")).unwrap();
    let canary = &c.services[0].canary;
    assert_eq!(canary.steps, [1000, 5000, 10_000]);
    assert_eq!(canary.hold, Duration::from_secs(10));
    assert_eq!(
        canary.interval,
        Duration::from_secs(2),
        "from strategies/canary.toml"
    );
    assert_eq!(
        canary.policy.max_error_rate, 0.01,
        "from strategies/canary.toml"
    );
    assert_eq!(canary.sticky, Some(crate::RequestKey::Cookie("uid".into())));
    assert_eq!(canary.route.as_ref().unwrap().value, "always");
    assert_eq!(canary.pause_after, [5000]);
    let plain = Config::parse(GOOD, Path::new("t.toml")).unwrap();
    assert_eq!(
        plain.services[0].canary.steps,
        [500, 2500, 5000, 10_000],
        "preset steps"
    );
}

#[test]
fn bad_canary_values_are_located() {
    for (line, field) in [
        ("steps = [5, 50, 25, 100]", "service.canary.steps"),
        ("steps = [5, 50]", "service.canary.steps"),
        ("max_error_rate = 2.0", "service.canary.max_error_rate"),
        (
            "sticky = { header = \"x\", cookie = \"y\" }",
            "service.canary.sticky",
        ),
        (
            "route = { cookie = \"user-id\", value = \"a\" }",
            "service.canary.route",
        ),
        ("pause = [30]", "service.canary.pause"),
        ("pause = [100]", "service.canary.pause"),
        ("steps = [100]", "service.canary.steps"),
        ("interval = \"0s\"", "service.canary.interval"),
        (
            "route = { header = \"x\", value = \"default\" }",
            "service.canary.route",
        ),
        ("hold = \"soon\"", "service.canary.hold"),
    ] {
        let text = format!("{GOOD}\n[service.canary]\n{line}\n");
        let e = &errors(&text)[0];
        assert_eq!((e.field.as_str(), e.line), (field, 16), "{line}: {e}");
    }
}

#[test]
fn prometheus_needs_an_http_url_and_a_window_of_four_scrapes() {
    let text = format!(
        "{GOOD}\n[metrics]\nprometheus = \"http://127.0.0.1:9090/\"\nscrape_interval = \"5s\"\n"
    );
    let c = Config::parse(&text, Path::new("t.toml")).unwrap();
    assert_eq!(
        c.metrics.prometheus.as_deref(),
        Some("http://127.0.0.1:9090")
    );
    let text = format!("{GOOD}\n[metrics]\nprometheus = \"127.0.0.1:9090\"\n");
    assert_eq!(errors(&text)[0].field, "metrics.prometheus");
    let text = format!(
        "{GOOD}\n[metrics]\nprometheus = \"http://127.0.0.1:9090\"\nscrape_interval = \"15s\"\n"
    );
    let e = &errors(&text)[0];
    assert!(
        e.message
            .contains("canary window 30s is shorter than 4 scrape intervals (60s)"),
        "{e}"
    );
}

#[test]
fn container_options_are_read_and_each_bad_one_is_located() {
    let text = GOOD.replace(
        "env = { LATENCY_MS = \"20\" }",
        r#"env = { LATENCY_MS = "20" }
pull = "always"
command = ["serve", "--port", "8080"]
user = "1000:1000"
memory = "512m"
cpus = 0.5
labels = { team = "shop" }
log = { driver = "json-file", options = { max-size = "10m" } }
extra_hosts = ["db:10.0.0.5"]
stop_signal = "SIGINT"
restart = "on-failure:3"
volumes = ["/srv/shop/data:/data", "shop-cache:/cache:ro"]
networks = [{ name = "shop-net", aliases = ["shop"] }]"#,
    );
    let c = Config::parse(&text, Path::new("switchyard.toml")).unwrap();
    let container = &c.service("web").unwrap().container;
    assert_eq!(container.pull, container::Pull::Always);
    assert_eq!(container.memory, Some(512 << 20));
    assert_eq!(container.cpus, Some(0.5));
    assert_eq!(container.volumes.len(), 2);
    assert_eq!(container.networks[0].aliases, ["shop"]);
    assert_eq!(
        container.command.as_deref(),
        Some(&["serve".to_owned(), "--port".into(), "8080".into()][..])
    );
    for (bad, field) in [
        ("pull = \"sometimes\"", "service.pull"),
        ("memory = \"lots\"", "service.memory"),
        ("cpus = 0.0", "service.cpus"),
        ("restart = \"maybe\"", "service.restart"),
        ("volumes = [\"./data:/data\"]", "service.volumes"),
        ("networks = [{ name = \"bad net\" }]", "service.networks"),
        (
            "labels = { \"switchyard.service\" = \"x\" }",
            "service.labels",
        ),
        ("user = \"root:\"", "service.user"),
        ("extra_hosts = [\"db\"]", "service.extra_hosts"),
        ("stop_signal = \"TERM\"", "service.stop_signal"),
    ] {
        let text = GOOD.replace("port = 8080", &format!("port = 8080\n{bad}"));
        let errors = errors(&text);
        assert_eq!(errors[0].field, field, "{bad}: {errors:?}");
        assert_eq!(errors[0].line, 11, "{bad}: {}", errors[0]);
    }
}

#[test]
fn container_options_a_process_cannot_honour_are_refused() {
    let text = format!("[runtime]\nkind = \"process\"\n{GOOD}")
        .replace("image =", "command = [\"./demo-app\"]\n#")
        .replace("port = 8080", "port = 8080\nmemory = \"64m\"");
    let errors = errors(&text);
    assert_eq!(errors[0].field, "service.memory");
    assert!(
        errors[0].message.contains("docker runtime"),
        "{}",
        errors[0]
    );
}

#[test]
fn a_registry_needs_every_field() {
    let text = format!(
        "{GOOD}\n[registry]\nserver = \"127.0.0.1:5000\"\nusername = \"ci\"\npassword_file = \"/etc/switchyard/registry.pw\"\n"
    );
    let c = Config::parse(&text, Path::new("switchyard.toml")).unwrap();
    assert_eq!(c.registry.unwrap().username, "ci");
    let text = text.replace("username = \"ci\"", "username = \"\"");
    assert_eq!(errors(&text)[0].field, "registry");
}

#[test]
fn watch_is_read_and_a_watch_no_check_fits_in_is_located() {
    let c = Config::parse(
        &format!("{GOOD}watch = \"2m\"\n"),
        Path::new("switchyard.toml"),
    )
    .unwrap();
    assert_eq!(c.service("web").unwrap().watch, Duration::from_secs(120));
    let c = Config::parse(GOOD, Path::new("switchyard.toml")).unwrap();
    assert_eq!(
        c.service("web").unwrap().watch,
        Duration::ZERO,
        "no watch unless asked"
    );

    let text = format!("{GOOD}watch = \"5s\"\ncanary = {{ interval = \"10s\" }}\n");
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(
        (errs[0].line, errs[0].field.as_str()),
        (14, "service.watch")
    );
    assert!(
        errs[0]
            .message
            .contains("shorter than [service.canary] interval (10s)"),
        "{}",
        errs[0]
    );
    let errs = errors(&format!("{GOOD}watch = \"soon\"\n"));
    assert_eq!(errs[0].field, "service.watch", "{}", errs[0]);
}
