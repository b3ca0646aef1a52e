//! switchyard's Prometheus metric source: the canary judge's measurements from PromQL.
//!
//! [`PromClient`] runs instant queries against `/api/v1/query` and returns [`Sample`]s or a
//! [`PromError`]. [`QueryTemplates`] holds the PromQL for requests, errors and p99 latency,
//! filled in with a service, track, version and window that were validated when the config
//! was loaded ([`check_window`] checks the window against the scrape interval).
//! [`PromSource`] implements the engine's [`switchyard_engine::MetricSource`] with both.
//!
//! Missing data is never zero: an empty result or NaN becomes `None`, which the judge reads
//! as *no data*; an unreachable or erroring Prometheus becomes a `MetricError`, which holds
//! the step. With the `testing` feature, [`testing::TestPrometheus`] runs a real Prometheus
//! on a loopback port for tests.

mod client;
mod source;
mod templates;
#[cfg(feature = "testing")]
pub mod testing;

pub use client::{PromClient, PromError, Sample};
pub use source::PromSource;
pub use templates::{check_window, promql_duration, QueryTemplates};
