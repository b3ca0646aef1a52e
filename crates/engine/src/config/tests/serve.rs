//! `[serve]`: the API token file, and the TLS pair a listen off loopback needs.

use super::*;

fn with_serve(lines: &str) -> String {
    format!("{GOOD}\n[serve]\n{lines}\n")
}

#[test]
fn token_file_and_tls_pair_are_read() {
    let text = with_serve(
        "listen = \"0.0.0.0:9100\"\ntoken_file = \"api.token\"\ncert = \"c.pem\"\nkey = \"k.pem\"",
    );
    let c = Config::parse(&text, Path::new("switchyard.toml")).unwrap();
    assert_eq!(c.serve.token_file, Some(PathBuf::from("api.token")));
    let tls = c.serve.tls.unwrap();
    assert_eq!((tls.cert, tls.key), ("c.pem".into(), "k.pem".into()));
    let plain = Config::parse(GOOD, Path::new("switchyard.toml")).unwrap();
    assert_eq!(plain.serve, ServeConfig::default());
}

#[test]
fn a_remote_listen_without_tls_is_located_at_the_listen() {
    let text = with_serve("token_file = \"api.token\"\nlisten = \"0.0.0.0:9100\"");
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    let e = &errs[0];
    assert_eq!(e.field, "serve.listen");
    let line = text
        .lines()
        .position(|l| l.starts_with("listen = \"0.0.0.0"))
        .unwrap()
        + 1;
    assert_eq!((e.line, e.column), (line, 10), "{e}");
    assert!(e.message.contains("[serve] cert and key"), "{e}");
}

#[test]
fn a_cert_without_its_key_is_refused() {
    let errs = errors(&with_serve("cert = \"c.pem\""));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].field, "serve.cert");
    assert!(errs[0].message.contains("serve.key"), "{}", errs[0]);
    let errs = errors(&with_serve("token_file = \"\""));
    assert_eq!(errs[0].field, "serve.token_file");
}
