//! Tests of the access-log tailer, one module per part: [`parse`] (lines in, records out),
//! [`follow`] (the [`Tailer`](super::Tailer) on real files in tempdirs), [`counters`]
//! (the [`TrafficCounters`](super::TrafficCounters)), and [`real_nginx`] (a real nginx writing
//! [`LOG_FORMAT`]). Lines are rendered from [`LOG_FORMAT`] itself, as nginx would.

mod counters;
mod follow;
mod parse;
mod real_nginx;

use super::LOG_FORMAT;

/// The values of one line's variables, as nginx prints them (before JSON escaping).
#[derive(Clone, Copy)]
struct Vars<'a> {
    msec: &'a str,
    proxy_host: &'a str,
    upstream_addr: &'a str,
    upstream_status: &'a str,
    upstream_response_time: &'a str,
    status: &'a str,
    request_time: &'a str,
}

const OK: Vars = Vars {
    msec: "1700000000.123",
    proxy_host: "sy_web_canary",
    upstream_addr: "127.0.0.1:9101",
    upstream_status: "200",
    upstream_response_time: "0.004",
    status: "200",
    request_time: "0.005",
};

/// [`LOG_FORMAT`] with `vars` substituted and escaped as `escape=json` does.
fn render(vars: Vars) -> String {
    [
        ("$msec", vars.msec),
        ("$proxy_host", vars.proxy_host),
        ("$upstream_addr", vars.upstream_addr),
        ("$upstream_status", vars.upstream_status),
        ("$upstream_response_time", vars.upstream_response_time),
        ("$status", vars.status),
        ("$request_time", vars.request_time),
    ]
    .iter()
    .fold(LOG_FORMAT.to_owned(), |line, (name, value)| {
        line.replace(name, &json_escape(value))
    })
}

fn json_escape(value: &str) -> String {
    let mut out = String::new();
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// A good canary line told apart by its time, `1000 + n`, with a newline.
fn numbered(n: u32) -> String {
    let msec = format!("{}.000", 1000 + n);
    render(Vars { msec: &msec, ..OK }) + "\n"
}
