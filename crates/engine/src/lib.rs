//! switchyard's engine: the config model, the strategies and the deploy state machine.
//!
//! It does no IO. It reaches containers, nginx, the state store and the clock only through
//! the traits in [`seams`], so every strategy is unit-tested against the recording fakes in
//! [`fakes`] on paused tokio time. Entry points: [`Config::parse`], [`deploy::Deployer`].

pub mod config;
pub mod deploy;
pub mod errors;
#[cfg(any(test, feature = "fakes"))]
pub mod fakes;
pub mod judge;
pub mod model;
pub mod names;
pub mod plan;
pub mod seams;

pub use config::{Config, ConfigError, ConfigErrors, ServiceSpec, Source};
pub use errors::error_chain;
pub use model::*;
pub use names::{Name, RequestKey, RouteMatch, Version};
pub use seams::*;
