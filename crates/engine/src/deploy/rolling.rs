//! Rolling and in-place bounds: the batch planner ([`batches`]) and what a rollout reports
//! ([`RolloutReport`]). The loop that runs the batches is [`super::rollout`], shared by every
//! strategy: blue-green is a one-batch rollout.

pub mod batches;

use serde::Serialize;

/// What a rollout did, beside the common [`super::DeployReport`] fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RolloutReport {
    pub strategy: String,
    pub max_surge: u16,
    pub max_unavailable: u16,
    pub batches: Vec<BatchReport>,
    /// Confirmed nginx reloads.
    pub reloads: u32,
    /// The most instances of the service running at once.
    pub peak_running: usize,
    /// In-place with no replica left in the upstream: from stopping the last old replica
    /// until its replacement was healthy and routed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gap_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BatchReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub healthy_ms: u64,
    /// The reload's confirmation time; `None` when the batch needed no reload.
    pub confirm_ms: Option<u64>,
    pub drained_ms: u64,
}
