//! The runtime's own record of each replica, as Docker keeps container labels: a [`Label`] in
//! `<state_dir>/processes/<name>.json` holds the [`Instance`], the current pid and the argv and
//! environment to start it again. [`read`], [`write`], [`list`] and [`remove_files`] manage
//! them and the `<name>.log` next to each.

use std::collections::BTreeMap;
use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use switchyard_engine::{Instance, RuntimeError};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::failed;
use crate::spawn::io_message;

/// How much of a log's end `logs` reads; more than any error message needs.
const LOG_TAIL_BYTES: u64 = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Label {
    pub instance: Instance,
    pub pid: u32,
    /// `/proc/<pid>/stat` field 22 at spawn, so a reused pid is not taken for ours.
    pub start_time: u64,
    /// With `{port}` already replaced: a restart serves on the same port.
    pub argv: Vec<String>,
    /// What the runtime adds to the inherited environment.
    pub env: BTreeMap<String, String>,
    /// `service.workdir`; None runs it where the runtime runs.
    #[serde(default)]
    pub workdir: Option<std::path::PathBuf>,
}

/// `<dir>/<name>.<ext>`, refusing names that would leave `dir`.
pub(crate) fn path(dir: &Path, name: &str, ext: &str) -> Result<PathBuf, RuntimeError> {
    if name.is_empty() || name.starts_with('.') || name.contains('/') {
        return Err(failed(name, "not a valid instance name for a file"));
    }
    Ok(dir.join(format!("{name}.{ext}")))
}

pub(crate) async fn read(dir: &Path, name: &str) -> Result<Option<Label>, RuntimeError> {
    let file = path(dir, name, "json")?;
    match tokio::fs::read(&file).await {
        Ok(bytes) => serde_json::from_slice::<Label>(&bytes)
            .map(|mut label| {
                // A label written before instances recorded their origin: the deployment in
                // it is the one that created the process.
                if label.instance.origin == 0 {
                    label.instance.origin = label.instance.deployment;
                }
                Some(label)
            })
            .map_err(|e| failed(name, format!("reading {}: {e}", file.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(failed(
            name,
            format!("reading {}: {}", file.display(), io_message(&e)),
        )),
    }
}

/// Writes a temporary file and renames it over the label, so a reader never sees half of one.
pub(crate) async fn write(dir: &Path, label: &Label) -> Result<(), RuntimeError> {
    let name = &label.instance.name;
    let file = path(dir, name, "json")?;
    let tmp = path(dir, name, "json.tmp")?;
    let bytes = serde_json::to_vec_pretty(label)
        .map_err(|e| failed(name, format!("encoding {}: {e}", file.display())))?;
    let io_err = |p: &Path, e: io::Error| {
        failed(name, format!("writing {}: {}", p.display(), io_message(&e)))
    };
    // The environment it records may hold secrets: readable by its owner only.
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true).mode(0o600);
    let mut f = options.open(&tmp).await.map_err(|e| io_err(&tmp, e))?;
    tokio::io::AsyncWriteExt::write_all(&mut f, &bytes)
        .await
        .map_err(|e| io_err(&tmp, e))?;
    tokio::fs::rename(&tmp, &file)
        .await
        .map_err(|e| io_err(&file, e))
}

/// Every label in `dir`, in file name order.
pub(crate) async fn list(dir: &Path) -> Result<Vec<Label>, RuntimeError> {
    let listing_err = |e: io::Error| {
        failed(
            &dir.display().to_string(),
            format!("listing: {}", io_message(&e)),
        )
    };
    let mut entries = tokio::fs::read_dir(dir).await.map_err(listing_err)?;
    let mut names = Vec::new();
    while let Some(entry) = entries.next_entry().await.map_err(listing_err)? {
        let file_name = entry.file_name();
        if let Some(name) = file_name.to_str().and_then(|f| f.strip_suffix(".json")) {
            names.push(name.to_owned());
        }
    }
    names.sort();
    let mut labels = Vec::new();
    for name in names {
        // A label removed since the listing is simply gone.
        if let Some(label) = read(dir, &name).await? {
            labels.push(label);
        }
    }
    Ok(labels)
}

/// Deletes the label and the log of `name`; either may already be gone.
pub(crate) async fn remove_files(dir: &Path, name: &str) -> Result<(), RuntimeError> {
    for ext in ["json", "log"] {
        let file = path(dir, name, ext)?;
        match tokio::fs::remove_file(&file).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(failed(
                    name,
                    format!("removing {}: {}", file.display(), io_message(&e)),
                ))
            }
        }
    }
    Ok(())
}

/// The last `lines` lines of `log`, or "" if it cannot be read.
pub(crate) async fn tail(log: &Path, lines: usize) -> String {
    let Ok(mut file) = tokio::fs::File::open(log).await else {
        return String::new();
    };
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(LOG_TAIL_BYTES);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(from)).await.is_err()
        || file.read_to_end(&mut bytes).await.is_err()
    {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    last_lines(&text, lines).to_owned()
}

fn last_lines(text: &str, n: usize) -> &str {
    if n == 0 {
        return "";
    }
    let body = text.strip_suffix('\n').unwrap_or(text);
    match body.rmatch_indices('\n').nth(n - 1) {
        Some((i, _)) => &text[i + 1..],
        None => text,
    }
}
