//! How a container ended, for a failed deployment's evidence: [`DockerRuntime::exit_state`]
//! and what it returns, [`ExitState`] (exit code, whether the kernel's OOM killer ended it,
//! Docker's own error).

use bollard::errors::Error as BollardError;
use bollard::models::ContainerStateStatusEnum;
use switchyard_engine::{Instance, RuntimeError};

use crate::DockerRuntime;

/// What Docker recorded when a container stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitState {
    /// Docker's word for its state: `exited`, `dead`, `running`, ...
    pub state: String,
    pub running: bool,
    /// The process's exit code; meaningful once it stopped.
    pub exit_code: Option<i64>,
    /// Killed by the kernel for going over its memory limit.
    pub oom_killed: bool,
    /// Docker's error starting it (a missing executable, say), if any.
    pub error: Option<String>,
    /// How often Docker restarted it by its restart policy; each restart clears the exit
    /// code and OOM flag of the run before.
    pub restarts: i64,
}

impl DockerRuntime {
    /// How `instance`'s container ended (or that it runs); `None` when Docker has none.
    pub async fn exit_state(&self, instance: &Instance) -> Result<Option<ExitState>, RuntimeError> {
        let inspected = match self.docker.inspect_container(&instance.id, None).await {
            Ok(c) => c,
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(None),
            Err(e) => {
                return Err(crate::failed(
                    &format!("inspecting container {}", instance.name),
                    e,
                ))
            }
        };
        let restarts = inspected.restart_count.unwrap_or(0);
        let state = inspected.state.unwrap_or_default();
        let running = state.status == Some(ContainerStateStatusEnum::RUNNING);
        Ok(Some(ExitState {
            state: state
                .status
                .map_or_else(|| "unknown".to_owned(), |s| s.to_string()),
            running,
            exit_code: state.exit_code,
            oom_killed: state.oom_killed.unwrap_or(false),
            error: state.error.filter(|e| !e.is_empty()),
            restarts,
        }))
    }
}
