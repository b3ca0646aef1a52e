//! Per-track request counts from nginx's own access log: the [`LOG_FORMAT`] nginx writes,
//! [`parse_line`] into a [`ProxyRecord`], a [`Tailer`] that follows the file across rotation,
//! truncation, partial lines and restarts, and [`TrafficCounters`] that the embedded judge
//! ([`TrafficCounters::window`]) and the `/metrics` exporter ([`TrafficCounters::totals`],
//! [`TrafficCounters::histograms`]) read.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! use switchyard_nginx::tailer::{Start, Tailer, TrafficCounters};
//! let mut counters = TrafficCounters::new();
//! let mut tailer = Tailer::open("/var/log/switchyard/access.log", Start::End)?;
//! let stats = tailer.poll(&mut |record| counters.record(&record))?;
//! # let _ = stats;
//! # Ok(())
//! # }
//! ```
//!
//! - [`parse`]: the line format and its parser.
//! - [`follow`]: the [`Tailer`].
//! - [`counters`]: the [`TrafficCounters`].
//! - [`rotate`]: [`rotate_if_over`], rotation at a size cap that loses no line.

pub mod counters;
pub mod follow;
pub mod parse;
pub mod rotate;

pub use counters::{
    LatencyHistogram, TrafficCounters, WindowCounts, LATENCY_BUCKETS, NO_TRACK, WINDOW_SECONDS,
};
pub use follow::{PollStats, Position, Start, Tailer, MAX_LINE};
pub use parse::{
    log_format_directive, parse_line, Attempt, ParseError, ProxyRecord, LOG_FORMAT, LOG_FORMAT_NAME,
};
pub use rotate::{rotate_if_over, rotated_path, Rotation};

#[cfg(test)]
mod tests;
