//! The `[[notify]]` tables: [`NotifySpec`], a webhook told about chosen deploy events
//! ([`NotifyEvent`]) in a chosen body format ([`NotifyFormat`]), checked with the same
//! file:line:column:field errors as the rest of the config. Delivery lives in `app`.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::checker::after_http_scheme;
use super::Checker;

/// One webhook and what it is told.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifySpec {
    /// The full URL; it may carry a token, so only [`NotifySpec::host`] is ever logged.
    pub url: String,
    /// `host[:port]` of `url`: what logs and messages name.
    pub host: String,
    /// What it is told, in the order of [`NotifyEvent::ALL`]; all of them by default.
    pub events: Vec<NotifyEvent>,
    pub format: NotifyFormat,
    /// How long one delivery attempt may take (5 s by default).
    pub timeout: Duration,
}

/// A moment of a deployment worth telling someone about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NotifyEvent {
    /// A deployment (or a rollback) began.
    Started,
    /// A canary took all the traffic.
    Promoted,
    /// Traffic went back to the previous version: a canary rolled back, a failed rollout
    /// restored, or `switchyard rollback`.
    RolledBack,
    /// A deployment failed (traffic stays on the version it names).
    Failed,
    /// A deployment finished with its version live.
    Succeeded,
}

impl NotifyEvent {
    pub const ALL: [NotifyEvent; 5] = [
        NotifyEvent::Started,
        NotifyEvent::Promoted,
        NotifyEvent::RolledBack,
        NotifyEvent::Failed,
        NotifyEvent::Succeeded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::Started => "started",
            NotifyEvent::Promoted => "promoted",
            NotifyEvent::RolledBack => "rolled_back",
            NotifyEvent::Failed => "failed",
            NotifyEvent::Succeeded => "succeeded",
        }
    }

    pub fn parse(s: &str) -> Result<NotifyEvent, String> {
        NotifyEvent::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| {
                format!("unknown event {s:?}: use \"started\", \"promoted\", \"rolled_back\", \"failed\" or \"succeeded\"")
            })
    }
}

/// The body of a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyFormat {
    /// `{"event": …, "service": …, "deployment": …, "from": …, "to": …, "message": …}`.
    Json,
    /// Slack's incoming-webhook shape, `{"text": "…"}` (Mattermost and others read it too).
    Slack,
}

impl NotifyFormat {
    pub fn parse(s: &str) -> Result<NotifyFormat, String> {
        match s {
            "json" => Ok(NotifyFormat::Json),
            "slack" => Ok(NotifyFormat::Slack),
            other => Err(format!(
                "unknown format {other:?}: use \"json\" or \"slack\""
            )),
        }
    }
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    url: Spanned<String>,
    events: Option<Vec<Spanned<String>>>,
    format: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
}

impl Checker<'_> {
    /// Every `[[notify]]` table; one with an error is left out (the config is refused anyway).
    pub(super) fn notify(&mut self, raw: &[Spanned<RawNotify>]) -> Vec<NotifySpec> {
        raw.iter()
            .filter_map(|n| self.notify_one(n.get_ref()))
            .collect()
    }

    fn notify_one(&mut self, raw: &RawNotify) -> Option<NotifySpec> {
        let before = self.errors.len();
        let url = self.check(&raw.url, "notify.url", |u| parse_url(u));
        let mut events = match &raw.events {
            None => NotifyEvent::ALL.to_vec(),
            Some(list) => list
                .iter()
                .filter_map(|e| self.check(e, "notify.events", |e| NotifyEvent::parse(e)))
                .collect(),
        };
        events.sort();
        events.dedup();
        let format = match &raw.format {
            None => Some(NotifyFormat::Json),
            Some(f) => self.check(f, "notify.format", |f| NotifyFormat::parse(f)),
        };
        let timeout = match &raw.timeout {
            None => Some(DEFAULT_TIMEOUT),
            Some(t) => self.check(t, "notify.timeout", |t| {
                let d = super::parse_duration(t)?;
                match d.is_zero() {
                    true => Err("must be longer than 0s".to_owned()),
                    false => Ok(d),
                }
            }),
        };
        if self.errors.len() != before {
            return None;
        }
        let (url, host) = url?;
        Some(NotifySpec {
            url,
            host,
            events,
            format: format?,
            timeout: timeout?,
        })
    }
}

/// An `http(s)://host[:port]/path` URL and its `host[:port]`. The URL itself never appears
/// in an error: it may carry a token.
fn parse_url(url: &str) -> Result<(String, String), String> {
    let Some(rest) = after_http_scheme(url) else {
        return Err("not an http:// or https:// URL".to_owned());
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or("");
    if host.is_empty() || url.contains(char::is_whitespace) || url.contains(char::is_control) {
        return Err("not an http(s):// URL with a host".to_owned());
    }
    if let Some((_, port)) = host.rsplit_once(':').filter(|_| !host.ends_with(']')) {
        if port.parse::<u16>().is_err() {
            return Err(format!("{host:?} has no valid port"));
        }
    }
    Ok((url.to_owned(), host.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::super::Config;
    use super::{NotifyEvent, NotifyFormat};

    const BASE: &str = "[proxy]\nprefix = \"nginx\"\n[[service]]\nname = \"web\"\n\
                        listen = \"127.0.0.1:8000\"\nimage = \"demo-app:{version}\"\nport = 8080\n";

    fn parse(notify: &str) -> Result<Config, super::super::ConfigErrors> {
        Config::parse(&format!("{BASE}{notify}"), Path::new("switchyard.toml"))
    }

    #[test]
    fn notify_defaults_to_every_event_as_json_within_5s() {
        let c = parse("[[notify]]\nurl = \"http://hooks.example:8080/T0KEN?x=1\"\n").unwrap();
        let n = &c.notify[0];
        assert_eq!(n.host, "hooks.example:8080");
        let c = parse("[[notify]]\nurl = \"https://hooks.slack.com/services/T0KEN\"\n").unwrap();
        assert_eq!(c.notify[0].host, "hooks.slack.com");
        assert_eq!(c.notify[0].url, "https://hooks.slack.com/services/T0KEN");
        assert_eq!(n.events, NotifyEvent::ALL.to_vec());
        assert_eq!(n.format, NotifyFormat::Json);
        assert_eq!(n.timeout, Duration::from_secs(5));
        let c = parse(
            "[[notify]]\nurl = \"http://a/\"\nevents = [\"failed\", \"started\", \"failed\"]\n\
             format = \"slack\"\ntimeout = \"300ms\"\n[[notify]]\nurl = \"http://b/x\"\n",
        )
        .unwrap();
        assert_eq!(c.notify.len(), 2);
        assert_eq!(
            c.notify[0].events,
            [NotifyEvent::Started, NotifyEvent::Failed]
        );
        assert_eq!(c.notify[0].format, NotifyFormat::Slack);
        assert_eq!(c.notify[0].timeout, Duration::from_millis(300));
        assert!(parse("").unwrap().notify.is_empty());
    }

    #[test]
    fn bad_notify_values_are_located_by_line_column_and_field_without_the_url() {
        let cases = [
            ("url = \"ftp://x/SECRET\"", "notify.url", 7),
            ("url = \"http:///SECRET\"", "notify.url", 7),
            ("url = \"https:///SECRET\"", "notify.url", 7),
            ("url = \"http://h:99999/SECRET\"", "notify.url", 7),
            (
                "url = \"http://h/SECRET\"\nevents = [\"deployed\"]",
                "notify.events",
                11,
            ),
            (
                "url = \"http://h/SECRET\"\nformat = \"xml\"",
                "notify.format",
                10,
            ),
            (
                "url = \"http://h/SECRET\"\ntimeout = \"soon\"",
                "notify.timeout",
                11,
            ),
            (
                "url = \"http://h/SECRET\"\ntimeout = \"0s\"",
                "notify.timeout",
                11,
            ),
        ];
        for (table, field, column) in cases {
            let errors = parse(&format!("[[notify]]\n{table}\n")).expect_err(table).0;
            assert_eq!(errors.len(), 1, "{table}: {errors:?}");
            let e = &errors[0];
            let line = 9 + table.lines().count() - 1;
            assert_eq!(
                (e.line, e.column, e.field.as_str()),
                (line, column, field),
                "{table}: {e}"
            );
            assert!(e.to_string().starts_with("switchyard.toml:"), "{e}");
            assert!(!e.to_string().contains("SECRET"), "{e}");
        }
        let unknown = parse("[[notify]]\nurl = \"http://h/\"\nchannel = \"#ops\"\n")
            .expect_err("unknown key")
            .0;
        assert_eq!(unknown[0].field, "channel", "{unknown:?}");
    }
}
