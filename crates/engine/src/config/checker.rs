//! [`Checker`]: the validation state every config check writes to (the source text, for line
//! and column numbers, and every error found so far), with the primitives the checks share:
//! locate an error, check a spanned value, parse a duration or an address.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::{parse_duration, ConfigError, ConfigErrors};

/// Validation state: the source text (for line numbers) and the errors found so far.
pub(super) struct Checker<'a> {
    pub(super) text: &'a str,
    pub(super) file: &'a Path,
    pub(super) errors: Vec<ConfigError>,
}

impl Checker<'_> {
    /// The line and column (from 1) where `span` starts.
    pub(super) fn locate(&self, span: Option<Range<usize>>) -> (usize, usize) {
        let offset = span.map_or(0, |s| s.start).min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = offset - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        (line, column)
    }

    pub(super) fn push(&mut self, span: Option<Range<usize>>, field: &str, message: String) {
        let (line, column) = self.locate(span);
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            field: field.to_owned(),
            message,
        });
    }

    pub(super) fn finish(self) -> ConfigErrors {
        ConfigErrors(self.errors)
    }

    /// Records an error for a spanned value that failed `check`, returning the checked value.
    pub(super) fn check<T, U>(
        &mut self,
        v: &Spanned<T>,
        field: &str,
        check: impl FnOnce(&T) -> Result<U, String>,
    ) -> Option<U> {
        match check(v.get_ref()) {
            Ok(u) => Some(u),
            Err(msg) => {
                self.push(Some(v.span()), field, msg);
                None
            }
        }
    }

    pub(super) fn duration(
        &mut self,
        v: &Option<Spanned<String>>,
        field: &str,
        default: Duration,
    ) -> Duration {
        match v {
            None => default,
            Some(v) => self
                .check(v, field, |s| parse_duration(s))
                .unwrap_or(default),
        }
    }
}

pub(super) fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("invalid address {s:?}: use IP:PORT, e.g. \"127.0.0.1:8000\""))
}

/// What follows `http://` or `https://` in a webhook's URL (switchyard's HTTP client speaks
/// both), or None for any other scheme.
pub(super) fn after_http_scheme(url: &str) -> Option<&str> {
    url.strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
}
