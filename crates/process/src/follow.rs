//! A replica's output as lines, for `switchyard logs`: [`ProcessRuntime::log_lines`].

use std::io::SeekFrom;
use std::time::Duration;

use switchyard_engine::Instance;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc::Sender;

use crate::{label, ProcessRuntime};

/// How often a followed log file is read again.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

impl ProcessRuntime {
    /// Sends the last `tail` lines of `instance`'s log file to `out`, and with `follow` every
    /// line appended after them until `out` is closed.
    pub async fn log_lines(
        &self,
        instance: &Instance,
        tail: usize,
        follow: bool,
        out: Sender<String>,
    ) {
        let Ok(path) = label::path(&self.dir, &instance.name, "log") else {
            return;
        };
        let mut offset = tokio::fs::metadata(&path).await.map_or(0, |m| m.len());
        for line in label::tail(&path, tail).await.lines() {
            if out.send(line.to_owned()).await.is_err() {
                return;
            }
        }
        if !follow {
            return;
        }
        let mut partial = String::new();
        loop {
            tokio::time::sleep(FOLLOW_POLL).await;
            let Ok(mut file) = tokio::fs::File::open(&path).await else {
                continue;
            };
            let len = file.metadata().await.map_or(0, |m| m.len());
            if len < offset {
                offset = 0; // truncated or replaced
            }
            let mut bytes = Vec::new();
            if file.seek(SeekFrom::Start(offset)).await.is_err()
                || file.read_to_end(&mut bytes).await.is_err()
            {
                continue;
            }
            offset += bytes.len() as u64;
            partial.push_str(&String::from_utf8_lossy(&bytes));
            while let Some(end) = partial.find('\n') {
                let line: String = partial.drain(..=end).collect();
                if out.send(line.trim_end().to_owned()).await.is_err() {
                    return;
                }
            }
            if out.is_closed() {
                return;
            }
        }
    }
}
