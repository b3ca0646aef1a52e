//! Golden tests of the built-in templates (a set in, nginx text out, compared with
//! `src/golden/`) and of [`Templates::with_overrides`].
//!
//! Refresh the goldens with `UPDATE_EXPECT=1 cargo test -p switchyard-nginx`, never by hand,
//! and read the diff before committing it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use switchyard_engine::config::FrontSpec;
use switchyard_engine::{Name, UpstreamSet};

use super::*;

/// Compares `actual` with `src/golden/<name>`, or writes it there when `UPDATE_EXPECT=1`.
fn check_golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/golden")
        .join(name);
    if std::env::var_os("UPDATE_EXPECT").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "reading golden {}: {e}; create it with UPDATE_EXPECT=1",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{} differs from the rendered text; if the change is intended, refresh it with \
         UPDATE_EXPECT=1\n--- golden\n{expected}\n--- rendered\n{actual}",
        path.display()
    );
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn web_set() -> UpstreamSet {
    UpstreamSet {
        service: Name::parse("web").unwrap(),
        listen: addr("127.0.0.1:8080"),
        backends: vec![addr("127.0.0.1:9001"), addr("127.0.0.1:9002")],
        canary: None,
    }
}

const LOG: &str = "/var/log/sy/access.json.log";
const RELOAD: ControlRouting = ControlRouting::Reload {
    keepalive_min_timeout: None,
};
const PREFIX: &str = "/srv/switchyard/nginx";

#[test]
fn service_file_for_two_backends_matches_golden() {
    let text = Templates::builtin()
        .service(&web_set(), &FrontSpec::default())
        .unwrap();
    check_golden("service-web.conf", &text);
    // What the rest of the crate relies on, whatever the golden says.
    assert!(text.contains("upstream sy_web_stable {"), "{text}");
    assert!(
        text.contains("server 127.0.0.1:9001 max_fails=0;"),
        "{text}"
    );
    assert!(
        text.contains("server 127.0.0.1:9002 max_fails=0;"),
        "{text}"
    );
    // Its claim and its server are elsewhere (the router, the sites).
    assert!(!text.contains("listen"), "{text}");
}

#[test]
fn canary_service_file_with_sticky_split_and_header_route_matches_golden() {
    use switchyard_engine::{CanaryRoute, RequestKey, RouteMatch};
    let mut set = web_set();
    set.service = Name::parse("api-2").unwrap();
    set.canary = Some(CanaryRoute {
        backends: vec![addr("127.0.0.1:9101")],
        weight_bp: 525,
        sticky: Some(RequestKey::cookie("uid").unwrap()),
        route: Some(RouteMatch::new(RequestKey::header("X-Canary").unwrap(), "always").unwrap()),
    });
    let text = Templates::builtin()
        .service(&set, &FrontSpec::default())
        .unwrap();
    check_golden("service-api-2-canary.conf", &text);
    assert!(
        text.contains(
            "split_clients \"$sy_api_2_key\" $sy_api_2_split {\n    5.25% canary;\n    * stable;\n}"
        ),
        "{text}"
    );
    assert!(text.contains("map $http_x_canary $sy_api_2_track {\n    \"always\" canary;\n    default $sy_api_2_split;\n}"), "{text}");
    let locations = Templates::builtin()
        .locations(
            &set.service,
            set.listen,
            &FrontSpec::default(),
            Upstream::Split,
            Path::new(LOG),
        )
        .unwrap();
    assert!(
        locations.contains("proxy_pass http://sy_api-2_$sy_api_2_track;"),
        "{locations}"
    );
}

#[test]
fn control_file_matches_golden_and_names_its_generation() {
    let text = Templates::builtin()
        .control(addr("127.0.0.1:9900"), 7, RELOAD)
        .unwrap();
    check_golden("control.conf", &text);
    // NginxRouter::disk_generation reads this comment back.
    assert!(text.lines().any(|l| l == "# generation 7"), "{text}");
    assert!(text.contains("listen 127.0.0.1:9900;"), "{text}");
    assert!(text.contains("return 200 \"7\\n\";"), "{text}");
}

#[test]
fn reload_control_file_sets_keepalive_min_timeout_where_nginx_has_it() {
    let routing = ControlRouting::Reload {
        keepalive_min_timeout: Some(Duration::from_secs(2)),
    };
    let text = Templates::builtin()
        .control(addr("127.0.0.1:9900"), 7, routing)
        .unwrap();
    assert!(text.contains("\nkeepalive_min_timeout 2000ms;\n"), "{text}");
    let without = Templates::builtin()
        .control(addr("127.0.0.1:9900"), 7, RELOAD)
        .unwrap();
    assert!(!without.contains("keepalive_min_timeout"), "{without}");
}

#[test]
fn main_conf_matches_golden_and_includes_conf_dir_relatively() {
    let text = Templates::builtin()
        .main_conf(Path::new(PREFIX), Duration::from_secs(30), false)
        .unwrap();
    check_golden("nginx.conf", &text);
    // stage::validate copies the tree and relies on the include being relative.
    assert!(text.contains("include switchyard/*.conf;"), "{text}");
    assert!(text.contains("worker_shutdown_timeout 30000ms;"), "{text}");
    assert!(text.contains(PREFIX), "{text}");
}

#[test]
fn dynamic_service_file_matches_golden_and_takes_its_peers_from_the_balancer() {
    let text = Templates::builtin()
        .dynamic_service(&Name::parse("api-2").unwrap(), &FrontSpec::default())
        .unwrap();
    check_golden("service-api-2-dynamic.conf", &text);
    for track in ["stable", "canary"] {
        assert!(
            text.contains(&format!("upstream sy_api-2_{track} {{")),
            "{text}"
        );
    }
    // No backend address is in the file: a route change does not touch it.
    assert!(!text.contains("9001"), "{text}");
    assert!(text.contains("keepalive 32;"), "{text}");
    let locations = Templates::builtin()
        .locations(
            &Name::parse("api-2").unwrap(),
            addr("127.0.0.1:8080"),
            &FrontSpec::default(),
            Upstream::Dynamic,
            Path::new(LOG),
        )
        .unwrap();
    assert!(locations.contains("access(\"api-2\")"), "{locations}");
    assert!(
        locations.contains("proxy_pass http://sy_api-2_$sy_track;"),
        "{locations}"
    );
}

#[test]
fn default_locations_match_golden_pass_websockets_and_name_the_client() {
    let text = Templates::builtin()
        .locations(
            &Name::parse("web").unwrap(),
            addr("127.0.0.1:8080"),
            &FrontSpec::default(),
            Upstream::Stable,
            Path::new(LOG),
        )
        .unwrap();
    check_golden("locations-web.conf", &text);
    assert!(text.starts_with("# Generated"), "{text}");
    assert!(text.contains("location / {"), "{text}");
    assert!(text.contains("proxy_pass http://sy_web_stable;"), "{text}");
    for header in [
        "Upgrade $http_upgrade",
        "Connection $sy_connection",
        "X-Forwarded-For $remote_addr",
        "X-Forwarded-Proto $scheme",
        "X-Forwarded-Host $host",
        "X-Real-IP $remote_addr",
    ] {
        assert!(
            text.contains(&format!("proxy_set_header {header};")),
            "{header}: {text}"
        );
    }
    assert!(text.contains("client_max_body_size 104857600;"), "{text}");
    assert!(!text.contains("proxy_buffering"), "{text}");
}

#[test]
fn a_full_front_renders_its_path_limits_timeouts_and_trusted_proxies() {
    let front = FrontSpec {
        hosts: vec!["shop.example.com".into()],
        path: "/v1.2/".into(),
        strip_path: true,
        buffering: false,
        max_body: 64 << 20,
        timeouts: switchyard_engine::config::ProxyTimeouts {
            connect: Duration::from_millis(1500),
            read: Duration::from_secs(3600),
            send: Duration::from_secs(30),
        },
        trusted_proxies: vec!["10.0.0.0/8".into(), "192.168.1.7".into()],
        ..FrontSpec::default()
    };
    let name = Name::parse("shop").unwrap();
    let text = Templates::builtin()
        .locations(
            &name,
            addr("127.0.0.1:8443"),
            &front,
            Upstream::Stable,
            Path::new(LOG),
        )
        .unwrap();
    check_golden("locations-full.conf", &text);
    assert!(text.contains("location /v1.2/ {"), "{text}");
    assert!(text.contains("rewrite ^/v1\\.2/(.*)$ /$1 break;"), "{text}");
    assert!(text.contains("proxy_buffering off;"), "{text}");
    assert!(text.contains("client_max_body_size 67108864;"), "{text}");
    assert!(text.contains("proxy_connect_timeout 1500ms;"), "{text}");
    assert!(text.contains("proxy_read_timeout 3600000ms;"), "{text}");
    assert!(text.contains("set_real_ip_from 10.0.0.0/8;"), "{text}");
    assert!(
        text.contains("proxy_set_header X-Forwarded-For $sy_shop_forwarded_for;"),
        "{text}"
    );
    let upstreams = Templates::builtin().service(&web_set(), &front).unwrap();
    assert!(
        upstreams.contains("geo $realip_remote_addr $sy_web_trusted {"),
        "{upstreams}"
    );
    assert!(upstreams.contains("    192.168.1.7 1;"), "{upstreams}");
}

#[test]
fn sites_match_golden_for_tls_redirect_and_reject() {
    use crate::sites::{Site, SiteKind, SiteTls};
    let tls = Some(SiteTls {
        cert: "/etc/ssl/shop.pem".into(),
        key: "/etc/ssl/shop.key".into(),
    });
    let serve = Site {
        kind: SiteKind::Serve,
        listen: "127.0.0.1:8443".into(),
        host: Some("shop.example.com".into()),
        default_server: false,
        tls,
        includes: vec![
            "switchyard/api.locations".into(),
            "switchyard/shop.locations".into(),
        ],
        https_port: String::new(),
    };
    let t = Templates::builtin();
    let text = t.site(&serve, false).unwrap();
    check_golden("site-tls.conf", &text);
    assert!(text.contains("listen 127.0.0.1:8443 ssl http2;"), "{text}");
    assert!(text.contains("server_name shop.example.com;"), "{text}");
    assert!(
        text.contains("ssl_certificate /etc/ssl/shop.pem;"),
        "{text}"
    );
    assert!(text.contains("include switchyard/api.locations;"), "{text}");
    // nginx 1.25.1 and later: the directive, not the listen parameter.
    let newer = t.site(&serve, true).unwrap();
    assert!(
        newer.contains(
            "listen 127.0.0.1:8443 ssl;
    http2 on;"
        ),
        "{newer}"
    );

    let redirect = Site {
        kind: SiteKind::Redirect,
        listen: "127.0.0.1:8080".into(),
        tls: None,
        includes: vec![],
        https_port: ":8443".into(),
        ..serve.clone()
    };
    let text = t.site(&redirect, false).unwrap();
    check_golden("site-redirect.conf", &text);
    assert!(
        text.contains("return 301 https://$host:8443$request_uri;"),
        "{text}"
    );
    assert!(
        text.contains("return 308 https://$host:8443$request_uri;"),
        "{text}"
    );

    let reject = Site {
        kind: SiteKind::Reject,
        host: None,
        default_server: true,
        includes: vec![],
        ..serve
    };
    let text = t.site(&reject, false).unwrap();
    assert!(
        text.contains("listen 127.0.0.1:8443 ssl http2 default_server;"),
        "{text}"
    );
    assert!(text.contains("ssl_reject_handshake on;"), "{text}");
    assert!(!text.contains("ssl_certificate"), "{text}");
}

#[test]
fn dynamic_control_file_matches_golden_and_holds_the_routing_code() {
    let state = Path::new("/srv/switchyard/nginx/conf/switchyard/routing.json");
    let text = Templates::builtin()
        .control(
            addr("127.0.0.1:9900"),
            7,
            ControlRouting::Dynamic { state_file: state },
        )
        .unwrap();
    check_golden("control-dynamic.conf", &text);
    assert!(text.lines().any(|l| l == "# generation 7"), "{text}");
    assert!(text.contains("lua_shared_dict switchyard_routes"), "{text}");
    assert!(text.contains("location = /routes {"), "{text}");
    assert!(text.contains("location = /inflight {"), "{text}");
    assert!(
        text.contains(&format!("local STATE_FILE = \"{}\"", state.display())),
        "{text}"
    );
}

#[test]
fn a_state_file_path_that_could_break_out_of_its_lua_string_is_refused() {
    for bad in ["/srv/a\"b.json", "/srv/a\\b.json", "/srv/a\nb.json"] {
        let err = Templates::builtin()
            .control(
                addr("127.0.0.1:9900"),
                1,
                ControlRouting::Dynamic {
                    state_file: Path::new(bad),
                },
            )
            .unwrap_err();
        assert!(err.contains("routing state file"), "{bad:?}: {err}");
    }
}

#[test]
fn main_conf_with_lua_loads_the_modules_first() {
    let text = Templates::builtin()
        .main_conf(Path::new(PREFIX), Duration::from_secs(30), true)
        .unwrap();
    check_golden("nginx-lua.conf", &text);
    let first = text.lines().find(|l| !l.starts_with('#')).unwrap();
    assert_eq!(first, format!("load_module {};", LUA_MODULES[0]));
}

#[test]
fn nginx_time_keeps_milliseconds() {
    assert_eq!(nginx_time(Duration::from_millis(1500)), "1500ms");
    assert_eq!(nginx_time(Duration::ZERO), "0ms");
}

fn override_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

#[test]
fn an_override_replaces_only_the_template_it_names() {
    let dir = override_dir(&[(SERVICE, "custom {{ service }} as {{ var }}\n")]);
    let templates = Templates::with_overrides(dir.path()).unwrap();
    let builtin = Templates::builtin();

    assert_eq!(
        templates
            .service(&web_set(), &FrontSpec::default())
            .unwrap(),
        "custom web as web\n"
    );
    let control = addr("127.0.0.1:9900");
    assert_eq!(
        templates.control(control, 3, RELOAD).unwrap(),
        builtin.control(control, 3, RELOAD).unwrap()
    );
    let timeout = Duration::from_secs(5);
    assert_eq!(
        templates
            .main_conf(Path::new(PREFIX), timeout, false)
            .unwrap(),
        builtin
            .main_conf(Path::new(PREFIX), timeout, false)
            .unwrap()
    );
}

#[test]
fn an_empty_override_dir_changes_nothing() {
    let dir = override_dir(&[("unrelated.tera", "{{ nonsense")]);
    let templates = Templates::with_overrides(dir.path()).unwrap();
    assert_eq!(
        templates
            .service(&web_set(), &FrontSpec::default())
            .unwrap(),
        Templates::builtin()
            .service(&web_set(), &FrontSpec::default())
            .unwrap()
    );
}

#[test]
fn a_broken_override_is_an_error_naming_the_file() {
    let dir = override_dir(&[(CONTROL, "{% for x in xs %}never closed\n")]);
    let err = match Templates::with_overrides(dir.path()) {
        Ok(_) => panic!("a template with an unclosed for loop was accepted"),
        Err(err) => err,
    };
    let path: PathBuf = dir.path().join(CONTROL);
    assert!(
        err.contains(&path.display().to_string()),
        "error does not name {}: {err}",
        path.display()
    );
}

#[test]
fn an_override_that_fails_to_render_is_an_error_naming_the_template() {
    let dir = override_dir(&[(SERVICE, "listen {{ no_such_variable }};\n")]);
    let templates = Templates::with_overrides(dir.path()).unwrap();
    let err = templates
        .service(&web_set(), &FrontSpec::default())
        .unwrap_err();
    assert!(
        err.contains(SERVICE),
        "error does not name {SERVICE}: {err}"
    );
    assert!(err.contains("no_such_variable"), "{err}");
}
