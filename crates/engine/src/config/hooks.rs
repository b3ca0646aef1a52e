//! The `[service.hooks]` table: [`HooksSpec`], one optional [`HookSpec`] per point of a deploy
//! (`pre_deploy`, `pre_traffic`, `post_deploy`, `on_rollback`), each a command (argv, never a
//! shell string) or a webhook (a URL, optionally signed with the key in `secret_file`), with a
//! timeout. Checked without IO; `app` resolves relative paths against the config's directory
//! and checks that the programs and secret files exist (the latter 0600).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::checker::after_http_scheme;
use super::{parse_duration, Checker};
use crate::model::HookPoint;

/// What a hook runs when no `timeout` is given.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// A service's hooks; each point is optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HooksSpec {
    pub pre_deploy: Option<HookSpec>,
    pub pre_traffic: Option<HookSpec>,
    pub post_deploy: Option<HookSpec>,
    pub on_rollback: Option<HookSpec>,
}

impl HooksSpec {
    /// The hook configured at `point`, if any.
    pub fn at(&self, point: HookPoint) -> Option<&HookSpec> {
        match point {
            HookPoint::PreDeploy => self.pre_deploy.as_ref(),
            HookPoint::PreTraffic => self.pre_traffic.as_ref(),
            HookPoint::PostDeploy => self.post_deploy.as_ref(),
            HookPoint::OnRollback => self.on_rollback.as_ref(),
        }
    }

    /// Every configured hook with its point, for `app`'s checks.
    pub fn all_mut(&mut self) -> impl Iterator<Item = (HookPoint, &mut HookSpec)> {
        [
            (HookPoint::PreDeploy, self.pre_deploy.as_mut()),
            (HookPoint::PreTraffic, self.pre_traffic.as_mut()),
            (HookPoint::PostDeploy, self.post_deploy.as_mut()),
            (HookPoint::OnRollback, self.on_rollback.as_mut()),
        ]
        .into_iter()
        .filter_map(|(p, h)| h.map(|h| (p, h)))
    }
}

/// One hook: what it runs, and for how long at most.
#[derive(Debug, Clone, PartialEq)]
pub struct HookSpec {
    pub action: HookAction,
    pub timeout: Duration,
    /// Line and column of the value `app` checks on disk (the program, or `secret_file`).
    pub at: (usize, usize),
}

#[derive(Debug, Clone, PartialEq)]
pub enum HookAction {
    /// argv; the program is found on PATH when it names no directory.
    Command(Vec<String>),
    /// POST the deployment as JSON; signed when `secret_file` is set.
    Webhook {
        url: String,
        secret_file: Option<PathBuf>,
    },
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHooks {
    pre_deploy: Option<Spanned<RawHook>>,
    pre_traffic: Option<Spanned<RawHook>>,
    post_deploy: Option<Spanned<RawHook>>,
    on_rollback: Option<Spanned<RawHook>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHook {
    command: Option<Spanned<Vec<String>>>,
    url: Option<Spanned<String>>,
    secret_file: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
}

impl Checker<'_> {
    /// `[service.hooks]`, every hook checked.
    pub(super) fn hooks(&mut self, raw: &RawHooks) -> HooksSpec {
        let mut one = |raw: &Option<Spanned<RawHook>>, point: HookPoint| {
            raw.as_ref().and_then(|h| self.hook(h, point))
        };
        HooksSpec {
            pre_deploy: one(&raw.pre_deploy, HookPoint::PreDeploy),
            pre_traffic: one(&raw.pre_traffic, HookPoint::PreTraffic),
            post_deploy: one(&raw.post_deploy, HookPoint::PostDeploy),
            on_rollback: one(&raw.on_rollback, HookPoint::OnRollback),
        }
    }

    fn hook(&mut self, raw: &Spanned<RawHook>, point: HookPoint) -> Option<HookSpec> {
        let field = format!("service.hooks.{}", point.as_str());
        let h = raw.get_ref();
        let timeout = match &h.timeout {
            None => Some(DEFAULT_HOOK_TIMEOUT),
            Some(t) => self.check(t, &format!("{field}.timeout"), |t| {
                match parse_duration(t)? {
                    d if d.is_zero() => Err("must be longer than 0s".to_owned()),
                    d => Ok(d),
                }
            }),
        };
        let action = match (&h.command, &h.url) {
            (Some(_), Some(url)) => {
                let message = "give either `command` or `url`, not both".to_owned();
                self.push(Some(url.span()), &field, message);
                None
            }
            (None, None) => {
                let message = "needs `command` (argv) or `url` (a webhook)".to_owned();
                self.push(Some(raw.span()), &field, message);
                None
            }
            (Some(command), None) => self.hook_command(command, h, &field),
            (None, Some(url)) => self.hook_url(url, h, &field),
        };
        let (action, at) = action?;
        Some(HookSpec {
            action,
            timeout: timeout?,
            at,
        })
    }

    fn hook_command(
        &mut self,
        command: &Spanned<Vec<String>>,
        h: &RawHook,
        field: &str,
    ) -> Option<(HookAction, (usize, usize))> {
        if let Some(secret) = &h.secret_file {
            let message = "`secret_file` signs webhooks: a command hook has no `url`".to_owned();
            self.push(
                Some(secret.span()),
                &format!("{field}.secret_file"),
                message,
            );
        }
        let argv = self.check(command, &format!("{field}.command"), |argv| {
            match argv.first() {
                Some(program) if !program.trim().is_empty() => Ok(argv.clone()),
                _ => Err(
                    "command must name a program (argv, e.g. [\"./migrate\", \"--up\"])".to_owned(),
                ),
            }
        })?;
        Some((HookAction::Command(argv), self.locate(Some(command.span()))))
    }

    fn hook_url(
        &mut self,
        url: &Spanned<String>,
        h: &RawHook,
        field: &str,
    ) -> Option<(HookAction, (usize, usize))> {
        let checked = self.check(url, &format!("{field}.url"), |u| check_url(u));
        let secret_file = match &h.secret_file {
            None => Some(None),
            Some(f) => self.check(f, &format!("{field}.secret_file"), |f| match f.is_empty() {
                true => Err("is empty: name the file holding the signing key".to_owned()),
                false => Ok(Some(PathBuf::from(f))),
            }),
        };
        let at = match &h.secret_file {
            Some(f) => self.locate(Some(f.span())),
            None => self.locate(Some(url.span())),
        };
        let action = HookAction::Webhook {
            url: checked?,
            secret_file: secret_file?,
        };
        Some((action, at))
    }
}

/// An `http://` or `https://` URL with a host and no whitespace.
fn check_url(url: &str) -> Result<String, String> {
    let bad = |why: &str| {
        Err(format!(
            "invalid URL {url:?}: {why} (e.g. \"https://hooks.example/deploy\")"
        ))
    };
    match after_http_scheme(url) {
        None => bad("use http:// or https://"),
        Some(_) if url.chars().any(char::is_whitespace) => bad("it contains whitespace"),
        Some(rest) if rest.split(['/', '?', '#']).next().unwrap_or("").is_empty() => {
            bad("it has no host")
        }
        Some(_) => Ok(url.to_owned()),
    }
}
