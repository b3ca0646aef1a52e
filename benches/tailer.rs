//! `cargo bench --bench tailer`: how many access-log lines per second one core turns into
//! per-track counts. The target is at least 200,000 lines/s.
//!
//! [`generate`] writes [`LINES`] lines in switchyard's `LOG_FORMAT` to a temp file, with the
//! mix a canary sees ([`Mix`]): most requests one attempt, some retried (`502, 200`), some
//! with no upstream status (`-`), a few across an internal redirect (` : `), and a few from
//! servers switchyard does not own. Two series, [`RUNS`] runs each, single-threaded:
//! - `parse+record`: the file already in memory, [`parse_line`] then
//!   [`TrafficCounters::record`] per line;
//! - `tail+parse+record`: the same through a [`Tailer`] reading the file from 0 (page cache
//!   warm), one `poll` for the whole file.
//!
//! Each series prints the median lines/s and the spread (min to max).

use std::hint::black_box;
use std::io::{BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use switchyard_nginx::tailer::{parse_line, Start, Tailer, TrafficCounters, LOG_FORMAT};

const LINES: usize = 1_000_000;
const RUNS: usize = 5;
const TARGET: f64 = 200_000.0;
/// The generated traffic spans this many seconds, so the counters' ring is exercised.
const SPAN_SECONDS: f64 = 600.0;

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let path = dir.path().join("access.log");
    let mix = generate(&path)?;
    let size = std::fs::metadata(&path)?.len();
    println!(
        "{LINES} lines, {:.0} MB: {} single, {} retried, {} no status, {} redirected, {} not ours",
        size as f64 / 1e6,
        mix.single,
        mix.retried,
        mix.dash,
        mix.redirected,
        mix.not_ours
    );
    let text = std::fs::read_to_string(&path).context("reading the generated log")?;
    let in_memory = series(|| parse_and_record(&text))?;
    let tailed = series(|| tail_and_record(&path))?;
    println!();
    println!(
        "{:<20} {:>14} {:>26}",
        "series", "median lines/s", "spread (min..max)"
    );
    for (name, rates) in [("parse+record", &in_memory), ("tail+parse+record", &tailed)] {
        println!(
            "{:<20} {:>14.0} {:>26}",
            name,
            rates[RUNS / 2],
            format!("{:.0}..{:.0}", rates[0], rates[RUNS - 1])
        );
    }
    let verdict = if tailed[RUNS / 2] >= TARGET {
        "meets"
    } else {
        "MISSES"
    };
    println!("target {TARGET:.0} lines/s on one core: tail+parse+record {verdict} it");
    Ok(())
}

/// Runs `one` [`RUNS`] times; lines per second, sorted ascending.
fn series(mut one: impl FnMut() -> anyhow::Result<Duration>) -> anyhow::Result<Vec<f64>> {
    let mut rates = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        rates.push(LINES as f64 / one()?.as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    Ok(rates)
}

fn parse_and_record(text: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut counters = TrafficCounters::new();
    let mut lines = 0;
    for line in text.lines() {
        lines += 1;
        if let Ok(record) = parse_line(line) {
            counters.record(&record);
        }
    }
    let elapsed = started.elapsed();
    ensure!(lines == LINES, "read {lines} lines, wrote {LINES}");
    black_box(&counters);
    Ok(elapsed)
}

fn tail_and_record(path: &Path) -> anyhow::Result<Duration> {
    let inode = std::fs::metadata(path)?.ino();
    let started = Instant::now();
    let mut counters = TrafficCounters::new();
    let mut tailer = Tailer::open(path, Start::Offset { inode, offset: 0 })?;
    let stats = tailer.poll(&mut |record| counters.record(&record))?;
    let elapsed = started.elapsed();
    ensure!(
        stats.lines == LINES as u64 && stats.malformed == 0,
        "tailer read {stats:?}"
    );
    black_box(&counters);
    Ok(elapsed)
}

/// How many lines of each kind [`generate`] wrote.
#[derive(Default)]
struct Mix {
    single: usize,
    retried: usize,
    dash: usize,
    redirected: usize,
    not_ours: usize,
}

fn generate(path: &Path) -> anyhow::Result<Mix> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut mix = Mix::default();
    let hosts = [
        "sy_web_stable",
        "sy_web_canary",
        "sy_api-2_stable",
        "sy_api-2_canary",
        "sy_web",
    ];
    for i in 0..LINES {
        let msec = 1_700_000_000.0 + SPAN_SECONDS * i as f64 / LINES as f64;
        let roll = rng.below(1000);
        let host = if roll < 20 {
            mix.not_ours += 1;
            ""
        } else {
            hosts[rng.below(hosts.len() as u64) as usize]
        };
        let (a, b) = (rng.addr(), rng.addr());
        let (t1, t2, t3) = (rng.seconds(), rng.seconds(), rng.seconds());
        let (addr, status, times, code) = match roll {
            20..=59 => {
                mix.retried += 1;
                (
                    format!("{a}, {b}"),
                    "502, 200".to_owned(),
                    format!("{t1}, {t2}"),
                    200,
                )
            }
            60..=69 => {
                mix.dash += 1;
                (
                    format!("{a}, {b}"),
                    "-, 504".to_owned(),
                    format!("-, {t2}"),
                    504,
                )
            }
            70..=74 => {
                mix.redirected += 1;
                let c = rng.addr();
                let (addr, times) = (format!("{a}, {b} : {c}"), format!("{t1}, {t2} : {t3}"));
                (addr, "502, 404 : 200".to_owned(), times, 200)
            }
            _ => {
                mix.single += usize::from(roll >= 20);
                let code =
                    [200, 200, 200, 200, 200, 200, 201, 304, 404, 500][rng.below(10) as usize];
                (a, code.to_string(), t1, code)
            }
        };
        let line = LOG_FORMAT
            .replace("$msec", &format!("{msec:.3}"))
            .replace("$proxy_host", host)
            .replace("$upstream_addr", &addr)
            .replace("$upstream_status", &status)
            .replace("$upstream_response_time", &times)
            .replace("$status", &code.to_string())
            .replace("$request_time", &rng.seconds());
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(mix)
}

/// A small deterministic generator: the same file every run, no dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn addr(&mut self) -> String {
        format!("127.0.0.1:{}", 9000 + self.below(8))
    }

    /// A response time as nginx prints it: seconds with milliseconds, mostly fast.
    fn seconds(&mut self) -> String {
        let ms = match self.below(100) {
            0 => 500 + self.below(3000),
            1..=9 => 50 + self.below(450),
            _ => 1 + self.below(50),
        };
        format!("{}.{:03}", ms / 1000, ms % 1000)
    }
}
