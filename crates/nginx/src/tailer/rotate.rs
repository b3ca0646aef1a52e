//! Rotation of the access log at a size cap, by the process that tails it: [`rotate_if_over`]
//! renames the log to `<log>.1` (replacing an older `.1`) once it has grown past the cap.
//!
//! The caller then tells nginx to reopen its logs (SIGUSR1, [`crate::managed::reopen_logs`]).
//! No line is lost: the [`Tailer`] keeps the renamed file open and reads it to its end (nginx
//! writes to it until its workers have reopened), then follows the new file from 0. A file is
//! only rotated while the tailer is reading it, so a second rotation can never rename a file
//! away before the tailer has opened it.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use super::follow::Tailer;

/// What [`rotate_if_over`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The size of the log when it was renamed.
    pub size: u64,
    /// `<log>.1`.
    pub to: PathBuf,
}

/// `<log>.1` beside `log`.
pub fn rotated_path(log: &std::path::Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Renames the tailer's file to `<log>.1` if it is larger than `cap` bytes and the tailer is
/// reading that very file (it has followed every earlier rotation); `None` otherwise.
/// Call it right after a [`Tailer::poll`].
pub fn rotate_if_over(tailer: &Tailer, cap: u64) -> io::Result<Option<Rotation>> {
    let log = tailer.path();
    let meta = match std::fs::metadata(log) {
        Ok(meta) => meta,
        // Renamed away and not yet reopened by nginx: nothing to rotate.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", log.display()))),
    };
    let reading = tailer.position().is_some_and(|p| p.inode == meta.ino());
    if meta.len() <= cap || !reading {
        return Ok(None);
    }
    let to = rotated_path(log);
    std::fs::rename(log, &to).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("renaming {} to {}: {e}", log.display(), to.display()),
        )
    })?;
    Ok(Some(Rotation {
        size: meta.len(),
        to,
    }))
}
