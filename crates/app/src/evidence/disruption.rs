//! What a deploy cost at the proxy, read from nginx's JSON access log: a [`Disruption`] holds,
//! per track, the requests of one service that failed at the proxy ([`failed_at_proxy`]: a
//! 5xx, an upstream attempt without a response or with a 5xx, a 499) during the deploy window,
//! next to the same counts over the window just before it (as long, at most [`BEFORE_MAX`]).
//! [`count`] is the pure part, on parsed records; [`measure`] reads the log (and the file it
//! was last rotated to) for [`count`], from a line found by bisecting the file on the lines'
//! times, so a long log costs a few seeks rather than a read of all of it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_nginx::tailer::{parse_line, rotated_path, ProxyRecord, NO_TRACK};

/// The format of the document kept in the store.
pub const SCHEMA: u32 = 1;
/// The longest window before a deploy that it is compared with.
pub const BEFORE_MAX: Duration = Duration::from_secs(60);
/// At most this much of each log file is read, from where the windows begin.
pub const READ_MAX: u64 = 256 * 1024 * 1024;
/// Lines are written when requests end, so a slow request's line comes after quicker ones:
/// the bisection stops this long before the windows begin.
const SLACK_S: f64 = 120.0;
/// The bisection reads to the first complete line within this much of an offset.
const PROBE: usize = 64 * 1024;
/// How long after a deploy ends its measurement waits for the lines of requests still in
/// flight then (retried on another replica, or answered by a draining one).
pub const LATE_LINES: Duration = Duration::from_millis(500);
/// What a request of an upstream without a track (`sy_<service>`) counts under.
const NO_TRACK_NAME: &str = "default";

/// Requests and those among them that failed at the proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub requests: u64,
    pub failed: u64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.requests += other.requests;
        self.failed += other.failed;
    }

    /// `0 of 5,123`.
    pub fn text(&self) -> String {
        format!("{} of {}", thousands(self.failed), thousands(self.requests))
    }
}

/// One window: `[from_ms, to_ms]`, with its counts per track.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub from_ms: i64,
    pub to_ms: i64,
    pub tracks: BTreeMap<String, Counts>,
}

impl Window {
    fn new(from_ms: i64, to_ms: i64) -> Window {
        Window {
            from_ms,
            to_ms,
            tracks: BTreeMap::new(),
        }
    }

    pub fn total(&self) -> Counts {
        let mut total = Counts::default();
        self.tracks.values().for_each(|c| total.add(*c));
        total
    }

    fn holds(&self, time_s: f64) -> bool {
        let ms = (time_s * 1000.0).round() as i64;
        (self.from_ms..=self.to_ms).contains(&ms)
    }

    /// Whether a request that ran from `began_s` to `ended_s` was in flight in the window.
    fn overlaps(&self, began_s: f64, ended_s: f64) -> bool {
        let ms = |t: f64| (t * 1000.0).round() as i64;
        ms(began_s) <= self.to_ms && ms(ended_s) >= self.from_ms
    }
}

/// What one deployment cost at the proxy, and the window before it to compare with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disruption {
    pub schema: u32,
    pub service: String,
    pub during: Window,
    pub before: Window,
    /// False when a log file was longer than [`READ_MAX`] and its start was not read, so the
    /// earliest part of the windows may be missing.
    pub complete: bool,
}

impl Disruption {
    /// The windows of a deploy from `from_ms` to `to_ms`, before anything is counted.
    pub fn empty(service: &str, from_ms: i64, to_ms: i64) -> Disruption {
        let to_ms = to_ms.max(from_ms);
        let before_ms = (to_ms - from_ms).clamp(1, BEFORE_MAX.as_millis() as i64);
        Disruption {
            schema: SCHEMA,
            service: service.to_owned(),
            during: Window::new(from_ms, to_ms),
            before: Window::new(from_ms - before_ms, from_ms - 1),
            complete: true,
        }
    }

    /// `0 of 5,123 (before 0 of 4,980)`.
    pub fn summary(&self) -> String {
        format!(
            "{} (before {})",
            self.during.total().text(),
            self.before.total().text()
        )
    }
}

/// Whether a request failed at the proxy: the client got a 5xx or nginx's 499 (it went away
/// while waiting), or some upstream attempt got no response or a 5xx, even if a retry then
/// answered.
pub fn failed_at_proxy(r: &ProxyRecord) -> bool {
    r.status >= 500 || r.status == 499 || r.attempts.iter().any(|a| a.is_error())
}

/// Counts `records` of `d.service` into `d`'s windows: a request in flight at any moment of
/// the deploy counts for it (its line is written when it ends, so one sent during the deploy
/// and answered, or failed, just after it is the deploy's, and so is one begun before it and
/// cut by it); any other, into the window before by when it began.
pub fn count<'r>(d: &mut Disruption, records: impl IntoIterator<Item = &'r ProxyRecord>) {
    for r in records {
        if r.service != d.service {
            continue;
        }
        let began = r.time - r.request_time.max(0.0);
        let window = if d.during.overlaps(began, r.time) {
            &mut d.during
        } else if d.before.holds(began) {
            &mut d.before
        } else {
            continue;
        };
        let track = match r.track.as_deref() {
            None | Some(NO_TRACK) => NO_TRACK_NAME,
            Some(track) => track,
        };
        let counts = window.tracks.entry(track.to_owned()).or_default();
        counts.requests += 1;
        counts.failed += u64::from(failed_at_proxy(r));
    }
}

/// Counts what `access_log` (and `<access_log>.1`, where it was last rotated to) holds for
/// `service` between `from_ms` and `to_ms`, and in the window before. A missing file holds
/// nothing; malformed lines and other services' are skipped.
pub fn measure(
    access_log: &Path,
    service: &str,
    from_ms: i64,
    to_ms: i64,
) -> io::Result<Disruption> {
    let mut d = Disruption::empty(service, from_ms, to_ms);
    for path in [rotated_path(access_log), access_log.to_owned()] {
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let since_s = d.before.from_ms as f64 / 1000.0 - SLACK_S;
        let complete = read_records(file, since_s, &mut |r| count(&mut d, [&r]))?;
        d.complete &= complete;
    }
    Ok(d)
}

/// Feeds every parsable line of `file` from about `since_s` (unix seconds) on to `each`, at
/// most [`READ_MAX`] bytes of them; returns whether nothing after that point was left out.
fn read_records(
    mut file: File,
    since_s: f64,
    each: &mut dyn FnMut(ProxyRecord),
) -> io::Result<bool> {
    let len = file.metadata()?.len();
    let start = start_offset(&mut file, len, since_s)?;
    file.seek(SeekFrom::Start(start))?;
    let mut reader = BufReader::new(file).take(READ_MAX);
    let mut line = Vec::new();
    if start > 0 {
        // The first line read is a partial one.
        reader.read_until(b'\n', &mut line)?;
    }
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let Ok(text) = std::str::from_utf8(&line) else {
            continue;
        };
        if let Ok(record) = parse_line(text.trim_end()) {
            each(record);
        }
    }
    Ok(len - start <= READ_MAX)
}

/// An offset at or before the first line of `file` (`len` bytes) written at `since_s` or
/// later: bisects on the time of the first complete line after each probe.
fn start_offset(file: &mut File, len: u64, since_s: f64) -> io::Result<u64> {
    let (mut lo, mut hi) = (0, len);
    while hi - lo > PROBE as u64 {
        let mid = lo + (hi - lo) / 2;
        match time_after(file, mid)? {
            Some(t) if t < since_s => lo = mid,
            _ => hi = mid,
        }
    }
    Ok(lo)
}

/// The time of the first parsable complete line after `offset`, if one starts within
/// [`PROBE`] bytes.
fn time_after(file: &mut File, offset: u64) -> io::Result<Option<f64>> {
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0; PROBE];
    let mut filled = 0;
    while filled < buf.len() {
        let n = file.read(&mut buf[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    let text = String::from_utf8_lossy(&buf[..filled]);
    // Skip the partial line the offset fell in; the last line may be partial too.
    let mut lines = text.split('\n').skip(1).collect::<Vec<_>>();
    lines.pop();
    Ok(lines
        .iter()
        .find_map(|l| parse_line(l).ok().map(|r| r.time)))
}

/// `5123` as `5,123`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An access-log line as nginx writes it with the tailer's `LOG_FORMAT`.
    fn line(msec: f64, host: &str, addr: &str, upstream: &str, status: u16) -> String {
        let times = upstream
            .split(", ")
            .map(|s| if s == "-" { "-" } else { "0.005" })
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            r#"{{"msec":{msec:.3},"proxy_host":"{host}","upstream_addr":"{addr}","upstream_status":"{upstream}","upstream_response_time":"{times}","status":{status},"request_time":0.006}}"#
        )
    }

    fn records(lines: &[String]) -> Vec<ProxyRecord> {
        lines.iter().map(|l| parse_line(l).unwrap()).collect()
    }

    const A: &str = "127.0.0.1:4001";
    const AB: &str = "127.0.0.1:4001, 127.0.0.1:4002";

    #[test]
    fn failed_requests_are_counted_per_track_in_the_deploy_window_and_the_one_before() {
        // A deploy from t=100 s to t=110 s: the window before is 90 s to 100 s.
        let mut d = Disruption::empty("web", 100_000, 110_000);
        let lines = [
            line(89.5, "sy_web_stable", A, "500", 500), // before the window before
            line(91.0, "sy_web_stable", A, "200", 200),
            line(92.0, "sy_web_stable", A, "502", 502),
            line(100.01, "sy_web_stable", A, "200", 200), // begun in the deploy's first 10 ms
            line(101.0, "sy_web_stable", A, "-", 502),    // no response
            line(102.0, "sy_web_stable", AB, "-, 200", 200), // reset, then a retry answered
            line(103.0, "sy_web_canary", A, "200", 200),
            line(104.0, "sy_web_canary", A, "-", 499), // the client went away
            line(105.0, "sy_api_stable", A, "500", 500), // another service
            line(110.0, "sy_web_stable", A, "200", 200),
            line(110.5, "sy_web_stable", A, "500", 500), // after
        ];
        count(&mut d, &records(&lines));
        assert_eq!(
            d.during.tracks["stable"],
            Counts {
                requests: 4,
                failed: 2
            }
        );
        assert_eq!(
            d.during.tracks["canary"],
            Counts {
                requests: 2,
                failed: 1
            }
        );
        assert_eq!(
            d.before.tracks["stable"],
            Counts {
                requests: 2,
                failed: 1
            }
        );
        assert!(!d.before.tracks.contains_key("canary"));
        assert_eq!(d.summary(), "3 of 6 (before 1 of 2)");
    }

    #[test]
    fn a_request_in_flight_during_the_deploy_counts_for_it_wherever_its_line_was_written() {
        let mut d = Disruption::empty("web", 100_000, 110_000);
        // Sent 1.5 s before the end, retried after the old replica stopped, logged after it.
        let late = line(111.0, "sy_web_stable", AB, "-, 200", 200)
            .replace(r#""request_time":0.006"#, r#""request_time":2.5"#);
        // Sent before the deploy, cut (failed) inside it: the deploy's too.
        let early = line(100.5, "sy_web_stable", A, "502", 502)
            .replace(r#""request_time":0.006"#, r#""request_time":1.0"#);
        // Begun and ended before: the window before's.
        let before = line(99.0, "sy_web_stable", A, "502", 502);
        count(&mut d, &records(&[late, early, before]));
        assert_eq!(
            d.during.tracks["stable"],
            Counts {
                requests: 2,
                failed: 2
            },
            "the late line and the one cut by the deploy count for it"
        );
        assert_eq!(
            d.before.tracks["stable"],
            Counts {
                requests: 1,
                failed: 1
            },
        );
    }

    #[test]
    fn the_window_before_is_as_long_as_the_deploy_and_at_most_a_minute() {
        let short = Disruption::empty("web", 100_000, 105_000);
        assert_eq!((short.before.from_ms, short.before.to_ms), (95_000, 99_999));
        let long = Disruption::empty("web", 1_000_000, 1_600_000);
        assert_eq!(long.before.from_ms, 940_000);
    }

    #[test]
    fn a_4xx_from_the_app_is_not_a_failure_at_the_proxy() {
        let mut d = Disruption::empty("web", 0, 10_000);
        count(
            &mut d,
            &records(&[line(1.0, "sy_web_stable", A, "404", 404)]),
        );
        assert_eq!(
            d.during.total(),
            Counts {
                requests: 1,
                failed: 0
            }
        );
    }

    #[test]
    fn measure_reads_the_rotated_file_too_and_skips_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("access.json.log");
        let old = [
            line(95.0, "sy_web_stable", A, "200", 200),
            "not json".into(),
        ];
        std::fs::write(rotated_path(&log), old.join("\n") + "\n").unwrap();
        let new = [
            line(101.0, "sy_web_stable", A, "200", 200),
            line(102.0, "sy_web_stable", A, "503", 503),
        ];
        // The last line has no newline yet: nginx is writing it.
        std::fs::write(&log, new.join("\n")).unwrap();
        let d = measure(&log, "web", 100_000, 110_000).unwrap();
        assert_eq!(
            d.during.total(),
            Counts {
                requests: 2,
                failed: 1
            }
        );
        assert_eq!(
            d.before.total(),
            Counts {
                requests: 1,
                failed: 0
            }
        );
        assert!(d.complete);
        let nothing = measure(&dir.path().join("missing.log"), "web", 0, 1).unwrap();
        assert_eq!(nothing.during.total(), Counts::default());
    }

    #[test]
    fn a_long_log_is_read_from_where_the_windows_begin() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("access.json.log");
        // 100,000 requests, one every 10 ms from t=1000 s, every 100th failed: about 20 MB.
        let mut text = String::new();
        for i in 0..100_000u32 {
            let status = if i % 100 == 0 { 500 } else { 200 };
            let at = 1000.0 + f64::from(i) / 100.0;
            text.push_str(&line(at, "sy_web_stable", A, &status.to_string(), status));
            text.push('\n');
        }
        std::fs::write(&log, &text).unwrap();
        let mut file = File::open(&log).unwrap();
        let len = file.metadata().unwrap().len();
        let offset = start_offset(&mut file, len, 1900.0).unwrap();
        assert!(offset > len / 2, "bisected: {offset} of {len}");
        let skipped = text[..offset as usize].lines().last().unwrap();
        assert!(
            parse_line(skipped).map_or(true, |r| r.time < 1900.0),
            "{skipped}"
        );
        // A deploy from 1950 s to 1960 s: 1,001 requests in flight in it (each took 6 ms: the
        // one logged at 1950.000 began before and ended in it), 11 failed; before it, the 999
        // begun from 1940 s that ended before 1950 s, 9 failed.
        let d = measure(&log, "web", 1_950_000, 1_960_000).unwrap();
        assert_eq!(
            d.during.total(),
            Counts {
                requests: 1001,
                failed: 11
            }
        );
        assert_eq!(
            d.before.total(),
            Counts {
                requests: 999,
                failed: 9
            }
        );
        assert!(d.complete);
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(5123), "5,123");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
