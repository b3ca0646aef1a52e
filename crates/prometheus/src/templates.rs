//! [`QueryTemplates`]: the PromQL the canary judge runs, with `{service}`, `{track}`,
//! `{version}` and `{window}` placeholders, and [`check_window`] for the window.
//!
//! Only validated values are substituted: a service [`Name`], a [`Version`] and a
//! [`Track`] come from strict charsets, so they cannot close a label matcher or a string;
//! [`QueryTemplates::render`] still refuses any value holding `"`, `\`, `{` or `}`.

use std::time::Duration;

use switchyard_engine::judge::{Track, TrackWindow};
use switchyard_engine::{Name, Version};

/// PromQL expressions, one per measured quantity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryTemplates {
    /// Requests to the track over the window.
    pub requests: String,
    /// Requests answered 5xx over the window. Must yield 0, not an empty result, when the
    /// track had traffic and no errors.
    pub errors: String,
    /// 99th percentile latency in seconds; not queried when `None`.
    pub p99_latency: Option<String>,
}

const SELECTOR: &str = r#"service="{service}",track="{track}",version="{version}""#;

impl Default for QueryTemplates {
    /// Queries over the metrics switchyard exports: `switchyard_proxy_requests_total` and
    /// `switchyard_proxy_request_duration_seconds`.
    fn default() -> Self {
        let requests =
            format!("sum(increase(switchyard_proxy_requests_total{{{SELECTOR}}}[{{window}}]))");
        // A track that never answered 5xx has no 5xx series at all, and `sum` of nothing is
        // an empty result: that would be *no data* for every good canary. So fall back to
        // 0 errors, but only where the track's requests were scraped in the window; with no
        // data at all the result stays empty.
        let errors = format!(
            "sum(increase(switchyard_proxy_requests_total{{{SELECTOR},code=~\"5..\"}}[{{window}}])) \
             or (0 * {requests})"
        );
        let p99 = format!(
            "histogram_quantile(0.99, sum by (le) \
             (rate(switchyard_proxy_request_duration_seconds_bucket{{{SELECTOR}}}[{{window}}])))"
        );
        QueryTemplates {
            requests,
            errors,
            p99_latency: Some(p99),
        }
    }
}

impl QueryTemplates {
    /// Fills `template` in for one track of one service over a window.
    pub fn render(template: &str, query: &TrackWindow) -> Result<String, String> {
        fill(
            template,
            &[
                ("{service}", query.service.as_str()),
                ("{track}", query.track.as_str()),
                ("{version}", query.version.as_str()),
                ("{window}", &promql_duration(query.window)?),
            ],
        )
    }

    /// Checks, when the config is loaded, that every template uses only known placeholders.
    pub fn check(&self) -> Result<(), String> {
        let sample = TrackWindow {
            service: Name::parse("svc").expect("a valid name"),
            track: Track::Canary,
            version: Version::parse("v1").expect("a valid version"),
            window: Duration::from_secs(30),
        };
        let templates = [
            ("requests", Some(&self.requests)),
            ("errors", Some(&self.errors)),
        ];
        let latency = [("p99_latency", self.p99_latency.as_ref())];
        for (what, template) in templates.into_iter().chain(latency) {
            let Some(template) = template else { continue };
            let rendered = Self::render(template, &sample)?;
            if let Some(unknown) = leftover_placeholder(&rendered) {
                return Err(format!(
                    "the {what} query has an unknown placeholder {unknown}; \
                     use {{service}}, {{track}}, {{version}} and {{window}}"
                ));
            }
        }
        Ok(())
    }
}

fn fill(template: &str, values: &[(&str, &str)]) -> Result<String, String> {
    let mut out = template.to_owned();
    for (placeholder, value) in values {
        if value.is_empty() || value.contains(['"', '\\', '{', '}', '\n']) {
            return Err(format!(
                "refusing to put {value:?} into a PromQL query for {placeholder}"
            ));
        }
        out = out.replace(placeholder, value);
    }
    Ok(out)
}

/// `{word}` with nothing but lowercase letters and `_` inside: a placeholder, since a PromQL
/// label matcher always holds an operator.
fn leftover_placeholder(s: &str) -> Option<&str> {
    s.match_indices('{').find_map(|(start, _)| {
        let rest = &s[start + 1..];
        let end = rest.find('}')?;
        let inner = &rest[..end];
        (!inner.is_empty() && inner.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            .then(|| &s[start..start + end + 2])
    })
}

/// A window as a PromQL duration: `30s`, or `1500ms` when not whole seconds.
pub fn promql_duration(window: Duration) -> Result<String, String> {
    let ms = window.as_millis();
    if ms == 0 || !window.subsec_nanos().is_multiple_of(1_000_000) {
        return Err(format!(
            "window {window:?} must be a positive whole number of milliseconds"
        ));
    }
    Ok(if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    })
}

/// `rate()` and `increase()` need two samples inside the window, and a scrape can fail or
/// arrive late: the window must span at least four scrape intervals.
pub fn check_window(window: Duration, scrape_interval: Duration) -> Result<(), String> {
    promql_duration(window)?;
    if scrape_interval.is_zero() {
        return Err("the scrape interval must be positive".into());
    }
    if window < scrape_interval * 4 {
        return Err(format!(
            "window {window:?} is shorter than 4 × the scrape interval {scrape_interval:?}: \
             use at least {:?}",
            scrape_interval * 4
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary(window: Duration) -> TrackWindow {
        TrackWindow {
            service: Name::parse("web").unwrap(),
            track: Track::Canary,
            version: Version::parse("v2.1-rc_1").unwrap(),
            window,
        }
    }

    #[test]
    fn defaults_render_to_the_documented_queries() {
        let t = QueryTemplates::default();
        let w = canary(Duration::from_secs(30));
        assert_eq!(
            QueryTemplates::render(&t.requests, &w).unwrap(),
            r#"sum(increase(switchyard_proxy_requests_total{service="web",track="canary",version="v2.1-rc_1"}[30s]))"#
        );
        assert_eq!(
            QueryTemplates::render(&t.errors, &w).unwrap(),
            r#"sum(increase(switchyard_proxy_requests_total{service="web",track="canary",version="v2.1-rc_1",code=~"5.."}[30s])) or (0 * sum(increase(switchyard_proxy_requests_total{service="web",track="canary",version="v2.1-rc_1"}[30s])))"#
        );
        assert_eq!(
            QueryTemplates::render(t.p99_latency.as_deref().unwrap(), &w).unwrap(),
            r#"histogram_quantile(0.99, sum by (le) (rate(switchyard_proxy_request_duration_seconds_bucket{service="web",track="canary",version="v2.1-rc_1"}[30s])))"#
        );
        t.check().unwrap();
    }

    #[test]
    fn every_placeholder_is_substituted_everywhere() {
        let w = TrackWindow {
            track: Track::Stable,
            ..canary(Duration::from_millis(4500))
        };
        assert_eq!(
            QueryTemplates::render("{service}/{track}/{version}/{window}/{service}", &w).unwrap(),
            "web/stable/v2.1-rc_1/4500ms/web"
        );
    }

    #[test]
    fn values_that_could_escape_a_label_matcher_are_refused() {
        for bad in ["a\"} or vector(1) or {x=\"", "a}", "a\\", ""] {
            assert!(
                fill("{service}", &[("{service}", bad)]).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn unknown_placeholders_are_caught_when_the_config_is_checked() {
        let t = QueryTemplates {
            requests: r#"sum(rate(x{svc="{servce}"}[{window}]))"#.into(),
            ..QueryTemplates::default()
        };
        let err = t.check().unwrap_err();
        assert!(
            err.contains("requests query") && err.contains("{servce}"),
            "{err}"
        );
        // A label matcher is not a placeholder.
        assert_eq!(leftover_placeholder(r#"x{code=~"5.."}"#), None);
    }

    #[test]
    fn windows_must_span_four_scrapes() {
        let s = Duration::from_secs;
        assert!(check_window(s(4), s(1)).is_ok());
        assert!(check_window(s(60), s(15)).is_ok());
        let err = check_window(s(30), s(15)).unwrap_err();
        assert_eq!(
            err,
            "window 30s is shorter than 4 × the scrape interval 15s: use at least 60s"
        );
        assert!(check_window(Duration::ZERO, s(1)).is_err());
        assert!(check_window(s(10), Duration::ZERO).is_err());
        assert!(check_window(Duration::from_micros(4_000_500), s(1)).is_err());
    }

    #[test]
    fn durations_use_seconds_or_milliseconds() {
        assert_eq!(promql_duration(Duration::from_secs(30)).unwrap(), "30s");
        assert_eq!(
            promql_duration(Duration::from_millis(1500)).unwrap(),
            "1500ms"
        );
    }
}
