//! One access-log line in, one [`ProxyRecord`] out: [`parse_line`], the [`LOG_FORMAT`] nginx
//! writes, and [`ParseError`].
//!
//! Service and track come from the upstream group's name (`$proxy_host`): `sy_<service>` or
//! `sy_<service>_<track>`. Service names never hold `_`, so the first `_` after `sy_` ends the
//! service. After retries nginx lists one entry per attempt in `$upstream_addr`,
//! `$upstream_status` and `$upstream_response_time`: `, ` between attempts, ` : ` where a
//! request moved to another upstream group (internal redirect), `-` for a missing value.
//! All three lists come from the same per-attempt array, so they always line up.

use std::borrow::Cow;

use serde::Deserialize;

/// The name the access log's `log_format` directive gives [`LOG_FORMAT`].
pub const LOG_FORMAT_NAME: &str = "switchyard_json";

/// The access-log line, for `log_format switchyard_json escape=json '…';`: one JSON object per
/// request. `$msec`, `$status` and `$request_time` are always set and so unquoted; with
/// `escape=json` an unset variable is an empty string.
pub const LOG_FORMAT: &str = concat!(
    r#"{"msec":$msec,"#,
    r#""proxy_host":"$proxy_host","#,
    r#""upstream_addr":"$upstream_addr","#,
    r#""upstream_status":"$upstream_status","#,
    r#""upstream_response_time":"$upstream_response_time","#,
    r#""status":$status,"#,
    r#""request_time":$request_time}"#,
);

/// The whole directive, for an `http {}` block: `log_format switchyard_json escape=json '…';`.
pub fn log_format_directive() -> String {
    format!("log_format {LOG_FORMAT_NAME} escape=json '{LOG_FORMAT}';")
}

/// The upstream-group prefix of every upstream switchyard renders.
const OURS: &str = "sy_";
/// The status counted for an attempt that got no response (`-`): nginx answers those 502.
pub const NO_RESPONSE_CODE: u16 = 502;

/// One proxied request, as nginx logged it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyRecord {
    /// Unix time in seconds (`$msec`: when the log line was written).
    pub time: f64,
    pub service: String,
    /// `None` for an upstream named `sy_<service>`.
    pub track: Option<String>,
    /// What the client got.
    pub status: u16,
    /// Seconds from the first byte read from the client to the log write.
    pub request_time: f64,
    /// Every upstream attempt, in order; empty when nginx reached no upstream server.
    pub attempts: Vec<Attempt>,
}

/// One try at one upstream server.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// `ip:port`, `unix:/path`, or the group's name when no server could be chosen.
    pub addr: String,
    /// `None` for `-`: no response (connect failure, timeout).
    pub status: Option<u16>,
    /// Seconds; `None` for `-`.
    pub response_time: Option<f64>,
}

impl Attempt {
    /// The status code this attempt counts under: its own, or 502 for no response.
    pub fn code(&self) -> u16 {
        self.status.unwrap_or(NO_RESPONSE_CODE)
    }

    /// Whether this attempt failed on the upstream's side: a 5xx or no response at all.
    pub fn is_error(&self) -> bool {
        self.code() >= 500
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A request switchyard did not route (no `sy_` upstream): skipped and counted.
    #[error("not a switchyard upstream")]
    NotOurs,
    #[error("malformed access-log line: {0}")]
    Malformed(String),
}

/// The fields of [`LOG_FORMAT`]; strings borrow from the line unless they hold escapes.
#[derive(Deserialize)]
struct RawLine<'a> {
    msec: f64,
    #[serde(borrow)]
    proxy_host: Cow<'a, str>,
    #[serde(borrow)]
    upstream_addr: Cow<'a, str>,
    #[serde(borrow)]
    upstream_status: Cow<'a, str>,
    #[serde(borrow)]
    upstream_response_time: Cow<'a, str>,
    status: u16,
    request_time: f64,
}

/// nginx's status for a request the client closed before the response.
const CLIENT_CLOSED: u16 = 499;

/// Parses one line written with [`LOG_FORMAT`] (without its newline).
pub fn parse_line(line: &str) -> Result<ProxyRecord, ParseError> {
    let raw: RawLine =
        serde_json::from_str(line).map_err(|e| ParseError::Malformed(e.to_string()))?;
    let (service, track) = upstream_group(&raw.proxy_host)?;
    let mut attempts = attempts(
        &raw.upstream_addr,
        &raw.upstream_status,
        &raw.upstream_response_time,
    )?;
    // 499: the client went away while the last attempt was still waiting. That attempt logs
    // `-`, which would otherwise count as a 502 against the upstream.
    if raw.status == CLIENT_CLOSED {
        if let Some(last) = attempts.last_mut().filter(|a| a.status.is_none()) {
            last.status = Some(CLIENT_CLOSED);
        }
    }
    Ok(ProxyRecord {
        time: raw.msec,
        service: service.to_owned(),
        track: track.map(str::to_owned),
        status: raw.status,
        request_time: raw.request_time,
        attempts,
    })
}

/// `sy_web_canary` → (`web`, `canary`); `sy_web` → (`web`, none).
fn upstream_group(host: &str) -> Result<(&str, Option<&str>), ParseError> {
    let Some(name) = host.strip_prefix(OURS) else {
        return Err(ParseError::NotOurs);
    };
    // `proxy_pass http://sy_web:8080` would log the port too.
    let name = name.split_once(':').map_or(name, |(name, _port)| name);
    let (service, track) = match name.split_once('_') {
        Some((service, track)) => (service, Some(track)),
        None => (name, None),
    };
    if service.is_empty() || track == Some("") {
        return Err(ParseError::Malformed(format!(
            "upstream {host:?} is neither sy_<service> nor sy_<service>_<track>"
        )));
    }
    Ok((service, track))
}

/// Pairs up the per-attempt lists. An entry empty in all three lists is not an attempt: it is
/// what a trailing group separator (a redirect that reached no upstream) leaves.
fn attempts(addrs: &str, statuses: &str, times: &str) -> Result<Vec<Attempt>, ParseError> {
    let mut status_entries = entries(statuses);
    let mut time_entries = entries(times);
    let mut out = Vec::with_capacity(1);
    for addr in entries(addrs) {
        let (Some(status), Some(time)) = (status_entries.next(), time_entries.next()) else {
            return Err(mismatch(addrs, statuses, times));
        };
        if addr.is_empty() && status.is_empty() && time.is_empty() {
            continue;
        }
        out.push(Attempt {
            addr: addr.to_owned(),
            status: dash_or(status, "upstream_status")?,
            response_time: dash_or(time, "upstream_response_time")?,
        });
    }
    if status_entries.next().is_some() || time_entries.next().is_some() {
        return Err(mismatch(addrs, statuses, times));
    }
    Ok(out)
}

/// The entries of one list: `, ` between attempts, ` : ` between upstream groups.
fn entries(list: &str) -> impl Iterator<Item = &str> {
    list.split(" : ").flat_map(|group| group.split(", "))
}

fn dash_or<T: std::str::FromStr>(entry: &str, field: &str) -> Result<Option<T>, ParseError> {
    if entry == "-" {
        return Ok(None);
    }
    entry
        .parse()
        .map(Some)
        .map_err(|_| ParseError::Malformed(format!("{field} entry {entry:?} is not a number")))
}

fn mismatch(addrs: &str, statuses: &str, times: &str) -> ParseError {
    ParseError::Malformed(format!(
        "upstream lists do not line up: upstream_addr {addrs:?}, upstream_status {statuses:?}, \
         upstream_response_time {times:?}"
    ))
}
