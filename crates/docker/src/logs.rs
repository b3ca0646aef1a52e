//! A replica's output as lines, for `switchyard logs`: [`DockerRuntime::log_lines`].

use bollard::query_parameters::LogsOptionsBuilder;
use futures_util::StreamExt;
use switchyard_engine::Instance;
use tokio::sync::mpsc::Sender;

use crate::DockerRuntime;

impl DockerRuntime {
    /// Sends the last `tail` lines of `instance`'s output (stdout and stderr) written since
    /// `since` (Unix seconds) to `out`, and with `follow` every line after them until the
    /// container stops or `out` is closed.
    pub async fn log_lines(
        &self,
        instance: &Instance,
        since: Option<i64>,
        tail: usize,
        follow: bool,
        out: Sender<String>,
    ) {
        let mut options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .follow(follow)
            .tail(&tail.to_string());
        if let Some(since) = since {
            options = options.since(i32::try_from(since).unwrap_or(i32::MAX));
        }
        let mut stream = self.docker.logs(&instance.id, Some(options.build()));
        let mut partial = String::new();
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else { break };
            partial.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            while let Some(end) = partial.find('\n') {
                let line: String = partial.drain(..=end).collect();
                if out.send(line.trim_end().to_owned()).await.is_err() {
                    return;
                }
            }
        }
        if !partial.is_empty() {
            let _ = out.send(partial).await;
        }
    }
}
