//! Hook commands and webhooks run for real (no nginx): the environment, a timeout that kills
//! the whole process group, the output tail, a non-2xx webhook, the signature; and the load
//! checks of `[service.hooks]`, located by file, line, column and field.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use switchyard_engine::HookPoint;

use super::*;

fn call(hook: HookPoint) -> HookCall {
    HookCall {
        hook,
        service: "web".into(),
        version: "v2".into(),
        previous: None,
        deployment: 7,
        strategy: "rolling".into(),
        replicas: vec![
            "127.0.0.1:4001".parse().unwrap(),
            "127.0.0.1:4002".parse().unwrap(),
        ],
    }
}

fn command(argv: &[&str], timeout: Duration) -> HookSpec {
    HookSpec {
        action: HookAction::Command(argv.iter().map(|a| a.to_string()).collect()),
        timeout,
        at: (1, 1),
    }
}

async fn run(argv: &[&str], timeout: Duration) -> HookRun {
    let spec = command(argv, timeout);
    let call = call(HookPoint::PreTraffic);
    HookRunner::default().run(&spec, &call).await
}

#[tokio::test]
async fn a_command_gets_the_deployment_in_its_environment_and_its_output_kept() {
    let script = r#"echo "$SWITCHYARD_HOOK $SWITCHYARD_SERVICE $SWITCHYARD_VERSION [$SWITCHYARD_PREVIOUS] $SWITCHYARD_DEPLOYMENT $SWITCHYARD_STRATEGY $SWITCHYARD_REPLICAS"; echo oops >&2; exit 4"#;
    let run = run(&["/bin/sh", "-c", script], Duration::from_secs(10)).await;
    assert!(!run.ok);
    assert_eq!(run.summary, "exit 4");
    assert_eq!(
        run.output, "pre_traffic web v2 [] 7 rolling 127.0.0.1:4001,127.0.0.1:4002\noops\n",
        "stdout and stderr, in order"
    );
    let ok = super::run_command(
        &["/bin/true".into()],
        Duration::from_secs(5),
        &call(HookPoint::PreDeploy),
    )
    .await;
    assert_eq!((ok.ok, ok.summary.as_str()), (true, "exit 0"));
}

#[tokio::test]
async fn a_command_past_its_timeout_is_killed_with_its_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("child.pid");
    // The hook starts a child that would outlive it, then hangs.
    let script = format!(
        "sleep 60 & echo $! > {}; echo started; sleep 60",
        pid_file.display()
    );
    let started = Instant::now();
    // Long enough for a loaded machine to start both; short enough for a quick test.
    let run = run(&["/bin/sh", "-c", &script], Duration::from_secs(2)).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(!run.ok);
    assert!(
        run.summary.starts_with("timed out after 2s"),
        "{}",
        run.summary
    );
    assert_eq!(run.output, "started\n");
    let child: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Reaped by init once killed; give it a moment.
    let mut alive = true;
    for _ in 0..50 {
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        alive = !stat.is_empty() && !stat.contains(") Z ");
        if !alive {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!alive, "the hook's child {child} was killed too");
}

#[tokio::test]
async fn output_beyond_the_cap_keeps_its_tail() {
    let script = "i=0; while [ $i -lt 3000 ]; do echo \"line $i of forty bytes...........\"; i=$((i+1)); done";
    let run = run(&["/bin/sh", "-c", script], Duration::from_secs(20)).await;
    assert!(run.ok, "{}", run.summary);
    assert!(run.output.starts_with('['), "{}", &run.output[..80]);
    assert!(run.output.contains("earlier bytes cut]"));
    assert!(run
        .output
        .ends_with("line 2999 of forty bytes...........\n"));
    assert!(run.output.len() <= OUTPUT_CAP + 40);
    // The tail starts at a whole line: a cut line could hold a secret's end.
    let first = run.output.lines().nth(1).unwrap();
    assert!(first.starts_with("line "), "{first}");
}

#[test]
fn a_secret_inside_another_leaves_nothing_of_the_longer_one() {
    let text = "token abcd and abcdef";
    assert_eq!(
        crate::secrets::redact(text, &["abcd", "abcdef"]),
        "token [redacted] and [redacted]"
    );
}

#[tokio::test]
async fn a_missing_program_fails_the_hook_naming_it() {
    let run = run(&["/nonexistent/migrate"], Duration::from_secs(5)).await;
    assert!(!run.ok);
    assert!(
        run.summary
            .starts_with("could not run /nonexistent/migrate:"),
        "{}",
        run.summary
    );
}

/// A server on 127.0.0.1:0 that answers every request with `status` and `body`.
async fn answering(status: u16, body: &'static str) -> String {
    let app = axum::Router::new()
        .fallback(move || async move { (axum::http::StatusCode::from_u16(status).unwrap(), body) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn webhook(url: &str, secret_file: Option<&Path>) -> HookSpec {
    HookSpec {
        action: HookAction::Webhook {
            url: url.into(),
            secret_file: secret_file.map(Path::to_owned),
        },
        timeout: Duration::from_secs(5),
        at: (1, 1),
    }
}

#[tokio::test]
async fn a_webhook_answering_outside_2xx_fails_with_its_answer() {
    let url = answering(500, "migrations locked").await;
    let call = call(HookPoint::PostDeploy);
    let run = HookRunner::default().run(&webhook(&url, None), &call).await;
    assert_eq!(
        (run.ok, run.summary.as_str(), run.output.as_str()),
        (false, "HTTP 500", "migrations locked")
    );
    let url = answering(302, "elsewhere").await;
    let run = HookRunner::default().run(&webhook(&url, None), &call).await;
    assert_eq!(
        (run.ok, run.summary.as_str()),
        (false, "HTTP 302"),
        "not followed"
    );
    let url = answering(204, "").await;
    let run = HookRunner::default().run(&webhook(&url, None), &call).await;
    assert_eq!((run.ok, run.summary.as_str()), (true, "HTTP 204"));
    // A port just bound and released: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let refused = format!("http://127.0.0.1:{port}/hook");
    let run = HookRunner::default()
        .run(&webhook(&refused, None), &call)
        .await;
    assert!(!run.ok);
    assert!(
        run.summary.starts_with("POST http://127.0.0.1:"),
        "{}",
        run.summary
    );
}

#[test]
fn the_signature_is_hmac_sha256_of_the_body_in_hex() {
    // RFC 4231, test case 2.
    assert_eq!(
        signature(b"Jefe", b"what do ya want for nothing?"),
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

const CONFIG: &str = r#"[proxy]
prefix = "nginx"
[runtime]
kind = "process"
[[service]]
name = "web"
listen = "127.0.0.1:8000"
command = ["./app"]
[service.hooks]
pre_deploy = { command = ["bin/migrate", "--up"] }
pre_traffic = { command = ["smoke-on-path"] }
post_deploy = { url = "http://127.0.0.1:9/hook", secret_file = "hook.key" }
"#;

#[test]
fn hook_paths_are_resolved_against_the_config_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, CONFIG).unwrap();
    let err = crate::settings::load(&path).unwrap_err();
    assert_eq!(err.code, 2, "{err}");
    let lines: Vec<&str> = err.message.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with(&format!(
            "{}:10:26: service.hooks.pre_deploy.command: service web: {}",
            path.display(),
            dir.path().join("bin/migrate").display()
        )),
        "{err}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "{}:12:64: service.hooks.post_deploy.secret_file: service web: {}",
            path.display(),
            dir.path().join("hook.key").display()
        )),
        "{err}"
    );
    std::fs::create_dir(dir.path().join("bin")).unwrap();
    std::fs::write(dir.path().join("bin/migrate"), "#!/bin/sh\n").unwrap();
    let key = dir.path().join("hook.key");
    std::fs::write(&key, "k\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = crate::settings::load(&path).unwrap_err();
    assert!(
        err.message
            .contains("service.hooks.post_deploy.secret_file")
            && err
                .message
                .contains("readable by group or others (mode 644)")
            && !err.message.contains("k\n"),
        "{err}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = crate::settings::load(&path).unwrap();
    let hooks = &config.services[0].hooks;
    assert_eq!(
        hooks.pre_deploy.as_ref().unwrap().action,
        HookAction::Command(vec![
            dir.path().join("bin/migrate").display().to_string(),
            "--up".into()
        ])
    );
    assert_eq!(
        hooks.pre_traffic.as_ref().unwrap().action,
        HookAction::Command(vec!["smoke-on-path".into()]),
        "a bare name is left for PATH"
    );
    assert_eq!(
        hooks.post_deploy.as_ref().unwrap().action,
        HookAction::Webhook {
            url: "http://127.0.0.1:9/hook".into(),
            secret_file: Some(key),
        }
    );
}

/// Regression: what a hook printed was journaled (and shown, and sent on) as printed, so a
/// hook that read the service's secrets, or a receiver that printed its key, put them in the
/// state database.
#[tokio::test]
async fn what_a_hook_prints_or_answers_keeps_no_secret_value() {
    let mut config = Config::parse(CONFIG, Path::new("switchyard.toml")).unwrap();
    let values = [
        ("DATABASE_URL", "postgres://app:hunter2-pw@db"),
        ("SHORT", "ab"),
    ];
    config.services[0].secrets = switchyard_engine::Secrets::new(
        values
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    let runner = HookRunner::redacting(&config);
    let script = "echo \"migrating postgres://app:hunter2-pw@db as ab\" >&2; exit 1";
    let spec = command(&["/bin/sh", "-c", script], Duration::from_secs(10));
    let run = runner.run(&spec, &call(HookPoint::PreDeploy)).await;
    assert_eq!(
        (run.ok, run.output.as_str()),
        (false, "migrating [redacted] as ab\n"),
        "values too short to search for are left"
    );
    // Another service's hooks are not searched for web's values.
    let mut other = call(HookPoint::PreDeploy);
    other.service = "api".into();
    let run = runner.run(&spec, &other).await;
    assert!(run.output.contains("hunter2-pw"), "{}", run.output);

    // A webhook's key, in its answer.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("hook.key");
    std::fs::write(&key, "k3y-s3cr3t-value\n").unwrap();
    let url = answering(
        500,
        "configured with k3y-s3cr3t-value, db postgres://app:hunter2-pw@db",
    )
    .await;
    let run = runner
        .run(
            &webhook(&url, Some(key.as_path())),
            &call(HookPoint::PostDeploy),
        )
        .await;
    assert_eq!(
        (run.summary.as_str(), run.output.as_str()),
        ("HTTP 500", "configured with [redacted], db [redacted]")
    );
}
