//! References, credentials and password files, without a Docker engine.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::*;

const SECRET: &str = "s3cret-Pa55";

fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn settings(dir: &Path, registry: Option<RegistryConfig>) -> PullSettings {
    PullSettings {
        registry,
        docker_config: Some(dir.join("config.json")),
        progress: false,
    }
}

fn registry(server: &str, password_file: PathBuf) -> RegistryConfig {
    RegistryConfig {
        server: server.into(),
        username: "ci".into(),
        password_file,
    }
}

#[test]
fn references_split_as_docker_splits_them() {
    let cases = [
        (
            "127.0.0.1:5000/demo:v1",
            "127.0.0.1:5000",
            "127.0.0.1:5000/demo",
            "v1",
        ),
        (
            "localhost/shop/web",
            "localhost",
            "localhost/shop/web",
            "latest",
        ),
        ("ghcr.io/acme/web:2.1", "ghcr.io", "ghcr.io/acme/web", "2.1"),
        ("nginx", "docker.io", "nginx", "latest"),
        ("library/nginx:1.25", "docker.io", "library/nginx", "1.25"),
        (
            "registry:5000/web",
            "registry:5000",
            "registry:5000/web",
            "latest",
        ),
        (
            "ghcr.io/acme/web@sha256:abcd",
            "ghcr.io",
            "ghcr.io/acme/web",
            "sha256:abcd",
        ),
    ];
    for (reference, registry, repository, tag) in cases {
        let parsed = ImageRef::parse(reference);
        assert_eq!(
            (parsed.registry.as_str(), parsed.repository, parsed.tag),
            (registry, repository, tag),
            "{reference}"
        );
    }
}

#[test]
fn servers_named_several_ways_are_one_host() {
    for (server, host) in [
        ("https://index.docker.io/v1/", "docker.io"),
        ("127.0.0.1:5000", "127.0.0.1:5000"),
        ("http://127.0.0.1:5000/", "127.0.0.1:5000"),
        ("https://GHCR.io", "ghcr.io"),
    ] {
        assert_eq!(server_host(server), host, "{server}");
    }
}

#[test]
fn a_password_file_others_can_read_is_refused_naming_it_and_its_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "pw", &format!("{SECRET}\n"), 0o644);
    let err = read_password_file(&path).unwrap_err();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("mode 0644"), "{err}");
    assert!(!err.contains(SECRET), "{err}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert!(read_password_file(&path).unwrap_err().contains("mode 0640"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        read_password_file(&path).unwrap(),
        SECRET,
        "newline trimmed"
    );
}

#[test]
fn a_missing_or_empty_password_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = read_password_file(&missing).unwrap_err();
    assert!(err.contains(&missing.display().to_string()), "{err}");
    let empty = write(dir.path(), "empty", "\n", 0o600);
    assert!(read_password_file(&empty).unwrap_err().contains("is empty"));
}

#[test]
fn registry_config_logs_in_to_its_own_server_only() {
    let dir = tempfile::tempdir().unwrap();
    let pw = write(dir.path(), "pw", SECRET, 0o600);
    let s = settings(dir.path(), Some(registry("http://127.0.0.1:5000", pw)));
    let login = credentials_for(&s, &ImageRef::parse("127.0.0.1:5000/demo:v1"))
        .unwrap()
        .expect("a login for its server");
    assert_eq!(login.username, "ci");
    let credentials = login.docker_credentials();
    assert_eq!(credentials.password.as_deref(), Some(SECRET));
    assert_eq!(credentials.serveraddress.as_deref(), Some("127.0.0.1:5000"));
    assert!(login.source.contains("[registry]"), "{}", login.source);
    let other = credentials_for(&s, &ImageRef::parse("ghcr.io/acme/web:1")).unwrap();
    assert!(other.is_none(), "no config.json, no login for another host");
}

#[test]
fn docker_config_auths_are_used_for_their_host() {
    let dir = tempfile::tempdir().unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("bot:{SECRET}"));
    let config = format!(
        r#"{{"auths": {{"https://ghcr.io": {{"auth": "{auth}"}}, "127.0.0.1:6000": {{}}}}}}"#
    );
    write(dir.path(), "config.json", &config, 0o600);
    let s = settings(dir.path(), None);
    let login = credentials_for(&s, &ImageRef::parse("ghcr.io/acme/web:1"))
        .unwrap()
        .expect("the ghcr.io entry");
    assert_eq!(login.username, "bot");
    assert_eq!(login.docker_credentials().password.as_deref(), Some(SECRET));
    assert!(login.source.contains("config.json"), "{}", login.source);
    let empty = credentials_for(&s, &ImageRef::parse("127.0.0.1:6000/web")).unwrap();
    assert!(empty.is_none(), "an entry without auth is no login");
    assert!(credentials_for(&s, &ImageRef::parse("nginx"))
        .unwrap()
        .is_none());
}

#[test]
fn a_broken_docker_config_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "config.json", "{not json", 0o600);
    let s = settings(dir.path(), None);
    let err = credentials_for(&s, &ImageRef::parse("ghcr.io/a/b")).unwrap_err();
    assert!(err.contains("config.json is not valid JSON"), "{err}");
    write(
        dir.path(),
        "config.json",
        r#"{"auths": {"ghcr.io": {"auth": "!!"}}}"#,
        0o600,
    );
    let err = credentials_for(&s, &ImageRef::parse("ghcr.io/a/b")).unwrap_err();
    assert!(err.contains("not base64 of user:password"), "{err}");
}

#[test]
fn a_login_never_shows_its_password() {
    let login = RegistryLogin::new("127.0.0.1:5000", "ci", SECRET);
    assert!(!format!("{login:?}").contains(SECRET));
    let text = format!("denied for ci:{SECRET} at 127.0.0.1:5000");
    let redacted = redact(Some(&login), &text);
    assert!(!redacted.contains(SECRET), "{redacted}");
    assert!(redacted.contains("[redacted]"), "{redacted}");
}
