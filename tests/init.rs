//! `switchyard init` through the binary: the starter config validates as written (for the
//! nginx switchyard runs itself and for the system nginx), nothing is overwritten without
//! `--force`, and the system nginx's snippet includes switchyard's directory, as a real
//! `nginx -t` of a minimal nginx.conf beside it shows.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::{assert_exit, free_port, require_demo_app, require_nginx, text};

fn switchyard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .output()
        .unwrap()
}

fn validate(config: &Path) -> Output {
    switchyard(&["--config", config.to_str().unwrap(), "validate"])
}

#[test]
fn init_writes_a_commented_config_that_validates() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchyard.toml");
    let out = switchyard(&["init", "--path", config.to_str().unwrap()]);
    assert_exit(&out, 0);
    let said = text(&out.stdout);
    assert!(
        said.contains(&format!("wrote {}", config.display())),
        "{said}"
    );
    assert!(
        said.contains("validate") && said.contains("deploy web"),
        "{said}"
    );
    let out = validate(&config);
    assert_exit(&out, 0);
    assert!(text(&out.stdout).contains("1 service(s): web"));
    let written = std::fs::read_to_string(&config).unwrap();
    for key in [
        "prefix = \"nginx\"",
        "[state]",
        "image = \"demo-app:{version}\"",
        "health = {",
        "strategy = ",
    ] {
        assert!(written.contains(key), "{key} is set:\n{written}");
    }
    // What a user reaches for next is there, commented out.
    for key in [
        "# replicas = ",
        "# env = ",
        "# secrets = ",
        "# env_file = ",
        "# volumes = ",
        "# networks = ",
        "# [service.canary]",
        "# [service.rolling]",
        "# hosts = [\"shop.example.com\"]",
        "# path = \"/\"",
        "# strip_path = ",
        "# tls = { cert = ",
        "# redirect_http = \"0.0.0.0:80\"",
        "# buffering = false",
        "# max_body = \"64m\"",
        "# timeouts = { connect = \"5s\", read = \"60s\", send = \"60s\" }",
        "# trusted_proxies = [\"10.0.0.0/8\"]",
    ] {
        assert!(written.contains(key), "{key} is shown:\n{written}");
    }
}

#[test]
fn init_defaults_to_the_config_path() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sub/my.toml");
    let out = switchyard(&["--config", config.to_str().unwrap(), "init"]);
    assert_exit(&out, 0);
    assert_exit(&validate(&config), 0);
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchyard.toml");
    std::fs::write(&config, "# mine\n").unwrap();
    let out = switchyard(&["init", "--path", config.to_str().unwrap()]);
    assert_exit(&out, 2);
    let err = text(&out.stderr);
    assert!(
        err.contains(&config.display().to_string()) && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "# mine\n");

    let out = switchyard(&["init", "--force", "--path", config.to_str().unwrap()]);
    assert_exit(&out, 0);
    assert_exit(&validate(&config), 0);
}

#[test]
fn system_nginx_init_refuses_before_writing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let nginx_dir = dir.path().join("nginx");
    let snippet = nginx_dir.join("conf.d/switchyard.conf");
    std::fs::create_dir_all(snippet.parent().unwrap()).unwrap();
    std::fs::write(&snippet, "include elsewhere/*.conf;\n").unwrap();
    let config = dir.path().join("switchyard.toml");
    let out = switchyard(&[
        "init",
        "--system-nginx",
        "--nginx-dir",
        nginx_dir.to_str().unwrap(),
        "--path",
        config.to_str().unwrap(),
    ]);
    assert_exit(&out, 2);
    assert!(text(&out.stderr).contains("switchyard.conf exists"));
    assert!(!config.exists(), "the config was not written either");
    assert!(!nginx_dir.join("switchyard").exists());
    assert_eq!(
        std::fs::read_to_string(&snippet).unwrap(),
        "include elsewhere/*.conf;\n"
    );
}

#[test]
fn system_nginx_init_writes_a_snippet_that_nginx_includes() {
    let dir = tempfile::tempdir().unwrap();
    let nginx_dir = dir.path().join("nginx");
    let config = dir.path().join("switchyard.toml");
    let out = switchyard(&[
        "init",
        "--system-nginx",
        "--nginx-dir",
        nginx_dir.to_str().unwrap(),
        "--path",
        config.to_str().unwrap(),
    ]);
    assert_exit(&out, 0);
    let said = text(&out.stdout);
    let snippet = nginx_dir.join("conf.d/switchyard.conf");
    assert!(
        said.contains(&format!("wrote {}", snippet.display())),
        "{said}"
    );
    assert!(nginx_dir.join("switchyard").is_dir(), "{said}");
    let include = std::fs::read_to_string(&snippet).unwrap();
    assert!(
        include
            .lines()
            .any(|l| l.trim() == "include switchyard/*.conf;"),
        "{include}"
    );
    let written = std::fs::read_to_string(&config).unwrap();
    let expect_main = format!("main_conf = \"{}\"", nginx_dir.join("nginx.conf").display());
    let expect_dir = format!("conf_dir = \"{}\"", nginx_dir.join("switchyard").display());
    assert!(written.contains(&expect_main), "{written}");
    assert!(written.contains(&expect_dir), "{written}");
    assert!(
        written.contains("pid_file = \"/run/nginx.pid\""),
        "{written}"
    );
    assert!(written.contains("access_log = "), "{written}");
    assert_exit(&validate(&config), 0);

    let Some(nginx) = require_nginx() else {
        return;
    };
    // Debian's shape: nginx.conf includes conf.d/*.conf inside http {}.
    std::fs::write(
        nginx_dir.join("nginx.conf"),
        format!(
            "pid {dir}/nginx.pid;\nerror_log {dir}/error.log;\nevents {{}}\nhttp {{\n    include conf.d/*.conf;\n}}\n",
            dir = nginx_dir.display()
        ),
    )
    .unwrap();
    let test = || {
        Command::new(&nginx)
            .arg("-t")
            .arg("-p")
            .arg(&nginx_dir)
            .arg("-e")
            .arg(nginx_dir.join("error.log"))
            .arg("-c")
            .arg(nginx_dir.join("nginx.conf"))
            .output()
            .unwrap()
    };
    let out = test();
    assert!(out.status.success(), "nginx -t: {}", text(&out.stderr));
    // The snippet really pulls in switchyard's directory: a broken file there breaks it.
    std::fs::write(
        nginx_dir.join("switchyard/web.conf"),
        "not_a_directive on;\n",
    )
    .unwrap();
    let out = test();
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not_a_directive") && err.contains("web.conf"),
        "nginx -t read switchyard/web.conf: {err}"
    );
}

/// Stops the nginx the CLI started under `dir/nginx` and removes the service's processes.
struct Started {
    dir: tempfile::TempDir,
}

impl Drop for Started {
    fn drop(&mut self) {
        let config = self.dir.path().join("switchyard.toml");
        crate::support::clean_up(config, &self.dir.path().join("nginx/logs/nginx.pid"));
    }
}

/// Regression: the starter's relative `prefix = "nginx"`, read through the default
/// `--config switchyard.toml` from the config's own directory, was resolved to
/// `./nginx`, and nginx (which resolves `-c` against `-p`) looked for
/// `./nginx/./nginx/conf/nginx.conf`: the first deploy failed to start nginx.
#[test]
fn the_starter_deploys_from_its_own_directory_with_relative_paths() {
    let Some(_) = require_nginx() else {
        return;
    };
    let Some(app) = require_demo_app() else {
        return;
    };
    let started = Started {
        dir: tempfile::tempdir().unwrap(),
    };
    let dir = started.dir.path();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .current_dir(dir)
            .env_remove("SWITCHYARD_CONFIG")
            .args(args)
            .output()
            .unwrap()
    };
    assert_exit(&run(&["init"]), 0);
    // The starter as a user on a host without Docker would edit it: the service as a local
    // process, on ports free here.
    let listen = format!("127.0.0.1:{}", free_port());
    let starter = std::fs::read_to_string(dir.join("switchyard.toml")).unwrap();
    let edited = starter
        .replace("127.0.0.1:8000", &listen)
        .replace("127.0.0.1:8099", &format!("127.0.0.1:{}", free_port()))
        .replace(
            "# [runtime]\n# kind = \"docker\"",
            "[runtime]\nkind = \"process\"",
        )
        .replace(
            "image = \"demo-app:{version}\"",
            &format!("command = [{:?}]", app.display().to_string()),
        );
    assert_ne!(starter, edited);
    std::fs::write(dir.join("switchyard.toml"), edited).unwrap();
    assert_exit(&run(&["validate"]), 0);
    let out = run(&["deploy", "web", "--version", "v1"]);
    assert_exit(&out, 0);
    let (status, body) = get(&listen);
    assert_eq!(
        (status.as_str(), body.trim()),
        ("200", r#"{"version":"v1"}"#)
    );
}

/// A GET of `/` on a fresh connection: (status code, body).
fn get(addr: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split(' ').nth(1).unwrap_or("").to_owned();
    (status, body.to_owned())
}
