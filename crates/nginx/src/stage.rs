//! Validating a change before it goes live, and putting it in place atomically:
//! [`Layout`], [`validate`], [`install`].
//!
//! `nginx -t` on an upstream file alone proves nothing, so [`validate`] copies the whole
//! config tree (the directory of the main config) into a temporary directory, writes the
//! new files into the copy and runs `nginx -t -c <copy>/nginx.conf`. Relative includes
//! resolve against the copy; that is why `conf_dir` must be included relatively.
//! [`install`] writes each file under a temporary name that no include pattern matches
//! (`.name.tmp`), fsyncs it and renames it over the live one.

use std::io::Write;
use std::path::{Path, PathBuf};

use switchyard_engine::RouterError;

/// Where the files of one nginx live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub nginx: PathBuf,
    /// `-p` for an nginx switchyard runs itself.
    pub prefix: Option<PathBuf>,
    pub main_conf: PathBuf,
    /// The directory switchyard owns, included as `<relative dir>/*.conf`.
    pub conf_dir: PathBuf,
    pub pid_file: PathBuf,
    pub error_log: PathBuf,
    /// Where the services' servers write the JSON access log the tailer reads.
    pub access_log: PathBuf,
}

impl Layout {
    /// The nginx switchyard runs itself under `prefix`.
    pub fn managed(nginx: &Path, prefix: &Path) -> Layout {
        Layout {
            nginx: nginx.to_owned(),
            prefix: Some(prefix.to_owned()),
            main_conf: prefix.join("conf/nginx.conf"),
            conf_dir: prefix.join("conf/switchyard"),
            pid_file: prefix.join("logs/nginx.pid"),
            error_log: prefix.join("logs/error.log"),
            access_log: prefix.join("logs/access.json.log"),
        }
    }

    /// The system nginx, whose master writes its pid to `pid_file` (error log: Debian's).
    pub fn system(
        nginx: &Path,
        main_conf: &Path,
        conf_dir: &Path,
        pid_file: &Path,
        access_log: &Path,
    ) -> Layout {
        Layout {
            nginx: nginx.to_owned(),
            prefix: None,
            main_conf: main_conf.to_owned(),
            conf_dir: conf_dir.to_owned(),
            pid_file: pid_file.to_owned(),
            error_log: PathBuf::from("/var/log/nginx/error.log"),
            access_log: access_log.to_owned(),
        }
    }

    fn conf_root(&self) -> &Path {
        self.main_conf.parent().unwrap_or(Path::new("/"))
    }

    /// `nginx [-p prefix]` plus `args`, as an argument vector.
    pub fn command(&self, args: &[&std::ffi::OsStr]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.nginx);
        if let Some(prefix) = &self.prefix {
            cmd.arg("-p").arg(prefix);
        }
        cmd.args(args);
        cmd
    }
}

/// Validates the live tree with `files` (name, content; None: the file is removed) written
/// into `conf_dir`.
pub async fn validate(
    layout: &Layout,
    files: &[(String, Option<String>)],
    service: &str,
) -> Result<(), RouterError> {
    let (stage, main) = stage(layout, files)?;
    let output = layout
        .command(&[
            "-t".as_ref(),
            "-q".as_ref(),
            "-c".as_ref(),
            main.as_os_str(),
        ])
        .output()
        .await
        .map_err(|e| {
            RouterError::Unavailable(format!("running {}: {e}", layout.nginx.display()))
        })?;
    verdict(layout, &stage, &output, service)
}

/// [`validate`], blocking the thread (a check made once, before any runtime is busy).
pub fn validate_blocking(
    layout: &Layout,
    files: &[(String, Option<String>)],
) -> Result<(), RouterError> {
    let (stage, main) = stage(layout, files)?;
    let mut cmd = std::process::Command::new(&layout.nginx);
    if let Some(prefix) = &layout.prefix {
        cmd.arg("-p").arg(prefix);
    }
    let output = cmd
        .args(["-t", "-q", "-c"])
        .arg(&main)
        .output()
        .map_err(|e| {
            RouterError::Unavailable(format!("running {}: {e}", layout.nginx.display()))
        })?;
    verdict(layout, &stage, &output, "the routing check")
}

/// A copy of the live tree in a temporary directory with `files` written into its
/// `conf_dir`, and the copy's main config.
fn stage(
    layout: &Layout,
    files: &[(String, Option<String>)],
) -> Result<(tempfile::TempDir, PathBuf), RouterError> {
    let unavailable =
        |what: &str, e: &dyn std::fmt::Display| RouterError::Unavailable(format!("{what}: {e}"));
    let rel = layout
        .conf_dir
        .strip_prefix(layout.conf_root())
        .map_err(|_| {
            RouterError::Unavailable(format!(
                "conf_dir {} is not inside {}: a staged copy could not be validated",
                layout.conf_dir.display(),
                layout.conf_root().display()
            ))
        })?;
    let stage = tempfile::Builder::new()
        .prefix("switchyard-stage-")
        .tempdir()
        .map_err(|e| unavailable("creating a staging directory", &e))?;
    copy_tree(layout.conf_root(), stage.path())
        .map_err(|e| unavailable("copying the nginx config tree", &e))?;
    let staged_dir = stage.path().join(rel);
    std::fs::create_dir_all(&staged_dir)
        .map_err(|e| unavailable("creating the staged conf_dir", &e))?;
    for (name, text) in files {
        let path = staged_dir.join(name);
        match text {
            Some(text) => {
                std::fs::write(path, text).map_err(|e| unavailable("writing a staged file", &e))?
            }
            None => match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(unavailable("removing a staged file", &e))
                }
                _ => {}
            },
        }
    }
    let main_name = layout.main_conf.file_name().unwrap_or_default();
    let main = stage.path().join(main_name);
    Ok((stage, main))
}

/// `nginx -t`'s answer on a staged tree, its paths put back to the live ones.
fn verdict(
    layout: &Layout,
    stage: &tempfile::TempDir,
    output: &std::process::Output,
    service: &str,
) -> Result<(), RouterError> {
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr).replace(
        &stage.path().display().to_string(),
        &layout.conf_root().display().to_string(),
    );
    Err(RouterError::Rejected {
        service: service.to_owned(),
        stderr: stderr.trim().to_owned(),
    })
}

/// Writes each file atomically into `dir`: temp name, fsync, rename, fsync the directory.
pub fn install(dir: &Path, files: &[(String, Option<String>)]) -> std::io::Result<()> {
    for (name, text) in files {
        let path = dir.join(name);
        match text {
            Some(text) => {
                let tmp = dir.join(format!(".{name}.tmp"));
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(text.as_bytes())?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)?;
            }
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            },
        }
    }
    std::fs::File::open(dir)?.sync_all()
}

/// Copies a config tree; symlinks are copied as symlinks.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if kind.is_dir() {
            std::fs::create_dir_all(&dst)?;
            copy_tree(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}
