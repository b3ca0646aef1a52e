//! switchyard's wiring, used by both the binary and the tests.
//!
//! - [`settings`]: the second stage of config loading (read the file, resolve paths).
//! - [`live`]: [`live::Live`], the real seams built from a config (Docker or processes,
//!   nginx, SQLite, the clock) and the HTTP health prober.
//! - [`sandbox`]: a throwaway installation (temp dir, managed nginx on free ports,
//!   labelled containers) for the demo, the end-to-end tests and the benchmarks.
//! - [`traffic`]: per-track counts tailed from nginx's access log, and the embedded metric
//!   source for canary judgements.
//! - [`adopt`]: `switchyard adopt`, a running container taken over as a service's live
//!   version. [`init`]: `switchyard init`, a starter config.
//! - [`evidence`]: what a deploy leaves behind: its disruption at the proxy and, when it
//!   failed, the replicas' logs, exit codes and health responses.
//! - [`notify`]: `[[notify]]` webhooks told about deploys.
//! - [`demo`]: `switchyard demo`. [`load`]: the load generator. [`progress`]: human output.

pub mod adopt;
pub mod demo;
pub mod evidence;
pub mod hooks;
pub mod init;
pub mod live;
pub mod load;
pub mod logs;
pub mod notify;
pub mod progress;
pub mod sandbox;
pub mod secrets;
pub mod serve;
pub mod settings;
pub mod traffic;

use switchyard_engine::deploy::DeployError;

/// An error with the exit code the CLI returns for it: 1 deploy failed (and traffic stayed
/// on a healthy version), 2 bad input, 3 environment (nginx, Docker, the store).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AppError {
    pub code: i32,
    pub message: String,
}

impl AppError {
    pub fn input(message: impl Into<String>) -> AppError {
        AppError {
            code: 2,
            message: message.into(),
        }
    }

    pub fn environment(message: impl Into<String>) -> AppError {
        AppError {
            code: 3,
            message: message.into(),
        }
    }
}

impl From<DeployError> for AppError {
    fn from(e: DeployError) -> AppError {
        AppError {
            code: e.exit_code(),
            message: e.to_string(),
        }
    }
}
