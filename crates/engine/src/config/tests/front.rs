//! The front-door keys: hosts, path, TLS, redirects, limits, timeouts, trusted proxies, and
//! the checks across the services sharing a listen.

use super::*;

/// Two services on one TLS listen, and a third under a path of the first's host.
const SHARED: &str = r#"
[proxy]
prefix = "nginx"

[[service]]
name = "shop"
listen = "127.0.0.1:8443"
image = "demo-app:{version}"
hosts = ["shop.example.com", "WWW.Shop.Example.com"]
tls = { cert = "/etc/ssl/shop.pem", key = "/etc/ssl/shop.key" }
redirect_http = "127.0.0.1:8080"

[[service]]
name = "blog"
listen = "127.0.0.1:8443"
image = "demo-app:{version}"
hosts = ["blog.example.com"]
tls = { cert = "/etc/ssl/blog.pem", key = "/etc/ssl/blog.key" }

[[service]]
name = "api"
listen = "127.0.0.1:8443"
image = "demo-app:{version}"
hosts = ["shop.example.com"]
path = "/api"
strip_path = true
tls = { cert = "/etc/ssl/shop.pem", key = "/etc/ssl/shop.key" }
buffering = false
max_body = "64m"
timeouts = { connect = "2s", read = "1h" }
trusted_proxies = ["10.0.0.0/8", "192.168.1.7", "fd00::/8"]
"#;

fn parse(text: &str) -> Config {
    Config::parse(text, Path::new("switchyard.toml")).unwrap()
}

#[test]
fn services_share_a_listen_by_host_and_path() {
    let c = parse(SHARED);
    let shop = &c.service("shop").unwrap().front;
    assert_eq!(shop.hosts, ["shop.example.com", "www.shop.example.com"]);
    assert_eq!(shop.path, "/");
    assert_eq!(shop.redirect_http, Some("127.0.0.1:8080".parse().unwrap()));
    assert_eq!(
        shop.tls.as_ref().unwrap().cert,
        PathBuf::from("/etc/ssl/shop.pem")
    );
    assert!(shop.buffering);
    assert_eq!(shop.max_body, super::super::front::DEFAULT_MAX_BODY);
    let api = &c.service("api").unwrap().front;
    assert_eq!(api.path, "/api/", "a prefix always ends in '/'");
    assert!(api.strip_path && !api.buffering);
    assert_eq!(api.max_body, 64 << 20);
    assert_eq!(api.timeouts.connect, Duration::from_secs(2));
    assert_eq!(api.timeouts.read, Duration::from_secs(3600));
    assert_eq!(api.timeouts.send, ProxyTimeouts::default().send);
    assert_eq!(api.trusted_proxies.len(), 3);
}

#[test]
fn a_host_and_path_claimed_twice_is_an_error_naming_both_services() {
    let text = SHARED.replace("path = \"/api\"\nstrip_path = true\n", "");
    let errors = errors(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert_eq!(
        (e.line, e.column, e.field.as_str()),
        (24, 10, "service.hosts")
    );
    assert!(
        e.message.contains("services shop and api both claim host \"shop.example.com\" under path \"/\" on 127.0.0.1:8443"),
        "{e}"
    );
}

#[test]
fn tls_on_some_services_of_a_listen_only_is_an_error() {
    let text = SHARED.replace(
        "hosts = [\"blog.example.com\"]\ntls = { cert = \"/etc/ssl/blog.pem\", key = \"/etc/ssl/blog.key\" }\n",
        "hosts = [\"blog.example.com\"]\n",
    );
    let e = &errors(&text)[0];
    assert_eq!(e.field, "service.tls");
    assert!(
        e.message
            .contains("services shop and blog share 127.0.0.1:8443"),
        "{e}"
    );
}

#[test]
fn each_bad_front_value_is_located_by_line_and_field() {
    let cases = [
        (
            "\"blog.example.com\"",
            "\"https://blog.example.com/\"",
            "service.hosts",
            "not a host name",
        ),
        (
            "path = \"/api\"",
            "path = \"api\"",
            "service.path",
            "must start with '/'",
        ),
        (
            "path = \"/api\"",
            "path = \"/a/../b\"",
            "service.path",
            "'..'",
        ),
        (
            "max_body = \"64m\"",
            "max_body = \"lots\"",
            "service.max_body",
            "not a size",
        ),
        (
            "connect = \"2s\"",
            "connect = \"0s\"",
            "service.timeouts.connect",
            "above zero",
        ),
        (
            "read = \"1h\"",
            "read = \"soon\"",
            "service.timeouts.read",
            "invalid duration",
        ),
        (
            "\"192.168.1.7\"",
            "\"192.168.1.7/40\"",
            "service.trusted_proxies",
            "CIDR",
        ),
        (
            "cert = \"/etc/ssl/blog.pem\"",
            "cert = \"blog.pem\"",
            "service.tls.cert",
            "absolute",
        ),
        (
            "redirect_http = \"127.0.0.1:8080\"",
            "redirect_http = \"127.0.0.1:8443\"",
            "service.redirect_http",
            "listen of service shop",
        ),
        (
            "redirect_http = \"127.0.0.1:8080\"",
            "redirect_http = \"port 80\"",
            "service.redirect_http",
            "invalid address",
        ),
    ];
    for (from, to, field, says) in cases {
        assert!(SHARED.contains(from), "{from}");
        let text = SHARED.replacen(from, to, 1);
        let line = text[..text.find(to).unwrap()].matches('\n').count() + 1;
        let errors = errors(&text);
        let e = errors
            .iter()
            .find(|e| e.field == field)
            .unwrap_or_else(|| panic!("{to}: no {field} error in {errors:?}"));
        assert_eq!(e.line, line, "{to}: {e}");
        assert!(e.message.contains(says), "{to}: {e}");
    }
}

#[test]
fn a_redirect_needs_tls_and_strip_path_needs_a_path() {
    let text = GOOD.replace(
        "replicas = 2",
        "replicas = 2\nredirect_http = \"127.0.0.1:8081\"",
    );
    let e = &errors(&text)[0];
    assert_eq!(e.field, "service.redirect_http");
    assert!(e.message.contains("needs `tls`"), "{e}");
    let text = GOOD.replace(
        "replicas = 2",
        "replicas = 2\npath = \"/\"\nstrip_path = true",
    );
    assert_eq!(errors(&text)[0].field, "service.strip_path");
}

#[test]
fn a_service_without_front_keys_gets_the_defaults() {
    let c = parse(GOOD);
    assert_eq!(c.services[0].front, FrontSpec::default());
    assert_eq!(c.proxy.templates, None);
    let c = parse(&GOOD.replace(
        "prefix = \"nginx\"",
        "prefix = \"nginx\"\ntemplates = \"mine\"",
    ));
    assert_eq!(c.proxy.templates, Some(PathBuf::from("mine")));
}

#[test]
fn one_host_on_one_listen_has_one_certificate() {
    let text = SHARED.replacen(
        "hosts = [\"shop.example.com\"]\npath = \"/api\"\nstrip_path = true\ntls = { cert = \"/etc/ssl/shop.pem\"",
        "hosts = [\"shop.example.com\"]\npath = \"/api\"\nstrip_path = true\ntls = { cert = \"/etc/ssl/other.pem\"",
        1,
    );
    assert_ne!(text, SHARED);
    let e = &errors(&text)[0];
    assert_eq!((e.line, e.field.as_str()), (27, "service.tls"));
    assert!(
        e.message.contains("services shop and api both answer \"shop.example.com\" on 127.0.0.1:8443 with different certificates"),
        "{e}"
    );
}

#[test]
fn a_redirect_may_not_take_switchyards_own_addresses_or_send_one_host_two_ways() {
    let text = SHARED.replace(
        "redirect_http = \"127.0.0.1:8080\"",
        "redirect_http = \"127.0.0.1:8099\"",
    );
    let e = &errors(&text)[0];
    assert_eq!(e.field, "service.redirect_http");
    assert!(e.message.contains("switchyard's own"), "{e}");
    // A second TLS listen redirecting the shop's name from the same address elsewhere.
    let text = format!(
        "{SHARED}\n[[service]]\nname = \"shop2\"\nlisten = \"127.0.0.1:9443\"\nimage = \"demo-app:{{version}}\"\nhosts = [\"shop.example.com\"]\ntls = {{ cert = \"/etc/ssl/shop.pem\", key = \"/etc/ssl/shop.key\" }}\nredirect_http = \"127.0.0.1:8080\"\n"
    );
    let e = &errors(&text)[0];
    assert_eq!(e.field, "service.redirect_http");
    assert!(
        e.message
            .contains("services shop and shop2 both redirect the same host from 127.0.0.1:8080"),
        "{e}"
    );
}

#[test]
fn tls_files_remember_where_they_are_written() {
    let c = parse(SHARED);
    let tls = c.service("blog").unwrap().front.tls.clone().unwrap();
    assert_eq!(tls.cert_at, (18, 16));
    assert_eq!(tls.key_at, (18, 43));
    let e = &errors(&SHARED.replace("/etc/ssl/blog.key", "/etc/ssl/$blog.key"))[0];
    assert_eq!(
        (e.line, e.column, e.field.as_str()),
        (18, 43, "service.tls.key")
    );
}
