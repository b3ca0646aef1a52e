//! `[service.hooks]`: commands and webhooks read with their timeouts, and each bad hook
//! located by line, column and field.

use super::*;
use crate::config::hooks::DEFAULT_HOOK_TIMEOUT;

fn with_hooks(lines: &str) -> String {
    format!("{GOOD}[service.hooks]\n{lines}")
}

#[test]
fn hooks_are_read_with_their_timeouts() {
    let text = with_hooks(
        r#"pre_deploy = { command = ["./migrate", "--up"], timeout = "5m" }
pre_traffic = { command = ["smoke"] }
post_deploy = { url = "http://127.0.0.1:9999/hook", secret_file = "/etc/switchyard/hook.key", timeout = "10s" }
"#,
    );
    let c = Config::parse(&text, Path::new("switchyard.toml")).unwrap();
    let hooks = &c.service("web").unwrap().hooks;
    let pre = hooks.pre_deploy.as_ref().unwrap();
    assert_eq!(
        pre.action,
        HookAction::Command(vec!["./migrate".into(), "--up".into()])
    );
    assert_eq!(pre.timeout, Duration::from_secs(300));
    let smoke = hooks.pre_traffic.as_ref().unwrap();
    assert_eq!(smoke.timeout, DEFAULT_HOOK_TIMEOUT);
    let post = hooks.post_deploy.as_ref().unwrap();
    assert_eq!(
        post.action,
        HookAction::Webhook {
            url: "http://127.0.0.1:9999/hook".into(),
            secret_file: Some("/etc/switchyard/hook.key".into()),
        }
    );
    assert_eq!(post.at.0, 17, "located at its secret_file's line");
    assert!(hooks.on_rollback.is_none());
    // https too: the client speaks TLS, trusting the system's roots or SSL_CERT_FILE.
    let text = with_hooks("on_rollback = { url = \"https://hooks.example/rolled\" }\n");
    let c = Config::parse(&text, Path::new("switchyard.toml")).unwrap();
    let hook = c.service("web").unwrap().hooks.on_rollback.clone().unwrap();
    assert_eq!(
        hook.action,
        HookAction::Webhook {
            url: "https://hooks.example/rolled".into(),
            secret_file: None,
        }
    );
}

#[test]
fn bad_hooks_are_each_located_by_line_and_field() {
    let text = with_hooks(
        r#"pre_deploy = { command = [] }
pre_traffic = { command = ["smoke"], url = "http://127.0.0.1:1/x" }
post_deploy = { url = "ftp://example/hook", timeout = "soon" }
on_rollback = { timeout = "1s" }
"#,
    );
    let errs = errors(&text);
    let found: Vec<(usize, &str)> = errs.iter().map(|e| (e.line, e.field.as_str())).collect();
    assert_eq!(
        found,
        [
            (15, "service.hooks.pre_deploy.command"),
            (16, "service.hooks.pre_traffic"),
            (17, "service.hooks.post_deploy.timeout"),
            (17, "service.hooks.post_deploy.url"),
            (18, "service.hooks.on_rollback"),
        ],
        "{errs:#?}"
    );
    assert!(errs[1].message.contains("not both"), "{}", errs[1]);
    assert!(errs[3].message.contains("http://"), "{}", errs[3]);
    assert!(errs[4].message.contains("`command`"), "{}", errs[4]);
    assert!(errs[0].column > 1, "the column of the value: {}", errs[0]);
}

#[test]
fn unknown_hook_points_and_fields_are_refused() {
    let errs = errors(&with_hooks("pre_flight = { command = [\"x\"] }\n"));
    assert!(errs[0].message.contains("pre_flight"), "{}", errs[0]);
    let errs = errors(&with_hooks(
        "pre_deploy = { command = [\"x\"], shell = true }\n",
    ));
    assert!(errs[0].message.contains("shell"), "{}", errs[0]);
    let errs = errors(&with_hooks(
        "pre_deploy = { command = [\"x\"], secret_file = \"k\" }\n",
    ));
    assert_eq!(errs[0].field, "service.hooks.pre_deploy.secret_file");
    let errs = errors(&with_hooks(
        "post_deploy = { url = \"ftp://127.0.0.1/hook\" }\n",
    ));
    assert!(
        errs[0].message.contains("use http:// or https://"),
        "{}",
        errs[0]
    );
    let errs = errors(&with_hooks("post_deploy = { url = \"https:///nohost\" }\n"));
    assert!(errs[0].message.contains("it has no host"), "{}", errs[0]);
    let errs = errors(&with_hooks(
        "post_deploy = { url = \"http:///nohost\", timeout = \"0s\" }\n",
    ));
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "service.hooks.post_deploy.timeout",
            "service.hooks.post_deploy.url"
        ]
    );
}
