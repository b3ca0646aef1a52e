//! `switchyard init`: [`init`] writes a commented starter `switchyard.toml` that validates as
//! written (`init/starter.toml`, with a `[proxy]` and `[state]` for the nginx switchyard runs
//! itself, or for the system nginx), and with [`Proxy::System`] the snippet that makes the
//! system nginx include switchyard's files: `conf.d/switchyard.conf`, holding
//! `include switchyard/*.conf;` (Debian's nginx.conf includes `conf.d/*.conf` inside
//! `http {}`; an include is relative to nginx's conf directory). [`Written`] lists what it did.
//!
//! Nothing is overwritten without `force`, and every check is made before the first write.

use std::path::{Path, PathBuf};

use crate::AppError;

/// The starter config; `@PROXY@` becomes its `[proxy]` and `[state]` tables.
const STARTER: &str = include_str!("init/starter.toml");

/// What nginx's `conf.d/switchyard.conf` holds: switchyard's directory, included in `http {}`.
pub const SNIPPET: &str =
    "# Written by `switchyard init --system-nginx`: the servers and upstreams switchyard
# renders for its services. Debian's nginx.conf includes conf.d/*.conf inside http {}.
include switchyard/*.conf;
";

/// Which nginx the starter config drives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proxy {
    /// An nginx switchyard starts itself, under a prefix next to the config.
    Managed,
    /// The system nginx whose config directory is this (`/etc/nginx`).
    System { nginx_dir: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// The config file to write.
    pub path: PathBuf,
    /// Overwrite files that exist.
    pub force: bool,
    pub proxy: Proxy,
}

/// What [`init`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Written {
    /// Files written, the config first.
    pub files: Vec<PathBuf>,
    /// Directories created.
    pub dirs: Vec<PathBuf>,
}

/// The starter config for `proxy`.
pub fn starter(proxy: &Proxy) -> Result<String, AppError> {
    let tables = match proxy {
        Proxy::Managed => MANAGED.to_owned(),
        Proxy::System { nginx_dir } => {
            let main_conf = toml_string(&nginx_dir.join("nginx.conf"))?;
            let conf_dir = toml_string(&nginx_dir.join("switchyard"))?;
            SYSTEM
                .replace("@MAIN_CONF@", &main_conf)
                .replace("@CONF_DIR@", &conf_dir)
        }
    };
    Ok(STARTER.replace("@PROXY@", tables.trim_end()))
}

const MANAGED: &str = r#"[proxy]
# switchyard runs its own nginx with this prefix (on a server, an absolute path such as
# /var/lib/switchyard/nginx). For the system nginx: `switchyard init --system-nginx`.
prefix = "nginx"
# Loopback only: where switchyard hands nginx its routing and confirms every change.
control = "127.0.0.1:8099"
# routing = "auto"             # "dynamic" (no reloads: nginx's Lua module), "reload", "auto"

[state]
# Deployments, their journal, instances and locks (SQLite).
path = "state/switchyard.db"
"#;

const SYSTEM: &str = r#"[proxy]
# The system nginx: switchyard writes its files into conf_dir, which nginx includes through
# conf.d/switchyard.conf (written by `switchyard init --system-nginx`), then reloads it.
main_conf = @MAIN_CONF@
conf_dir = @CONF_DIR@
pid_file = "/run/nginx.pid"
access_log = "/var/log/nginx/switchyard.json.log"
# Loopback only: where switchyard hands nginx its routing and confirms every change.
control = "127.0.0.1:8099"
# routing = "auto"             # "dynamic" (no reloads: nginx's Lua module), "reload", "auto"

[state]
# Deployments, their journal, instances and locks (SQLite).
path = "/var/lib/switchyard/state.db"
"#;

/// Writes the starter config (and, for the system nginx, the include snippet and
/// switchyard's directory). Refuses, before writing anything, to replace a file that exists
/// unless `force` is set; a snippet that is already exactly [`SNIPPET`] is left alone.
pub fn init(options: &InitOptions) -> Result<Written, AppError> {
    let config = starter(&options.proxy)?;
    let mut files = vec![(options.path.clone(), config)];
    let mut dirs = Vec::new();
    if let Proxy::System { nginx_dir } = &options.proxy {
        let snippet = nginx_dir.join("conf.d/switchyard.conf");
        let same = std::fs::read_to_string(&snippet).is_ok_and(|s| s == SNIPPET);
        if !same {
            files.push((snippet, SNIPPET.to_owned()));
        }
        dirs.push(nginx_dir.join("switchyard"));
    }
    if !options.force {
        if let Some((path, _)) = files.iter().find(|(p, _)| p.exists()) {
            return Err(AppError::input(format!(
                "{} exists; nothing was written (--force overwrites it)",
                path.display()
            )));
        }
    }
    let mut written = Written::default();
    for dir in &dirs {
        if !dir.is_dir() {
            create_dir(dir)?;
            written.dirs.push(dir.clone());
        }
    }
    for (path, text) in &files {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            create_dir(parent)?;
        }
        std::fs::write(path, text)
            .map_err(|e| AppError::environment(format!("writing {}: {e}", path.display())))?;
        written.files.push(path.clone());
    }
    Ok(written)
}

fn create_dir(dir: &Path) -> Result<(), AppError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| AppError::environment(format!("creating {}: {e}", dir.display())))
}

/// `path` as a TOML basic string (JSON's escapes are TOML's).
fn toml_string(path: &Path) -> Result<String, AppError> {
    let text = path
        .to_str()
        .ok_or_else(|| AppError::input(format!("{} is not valid UTF-8", path.display())))?;
    Ok(serde_json::to_string(text).expect("a string serializes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_filled() {
        for proxy in [
            Proxy::Managed,
            Proxy::System {
                nginx_dir: PathBuf::from("/etc/nginx"),
            },
        ] {
            let text = starter(&proxy).unwrap();
            assert!(!text.contains('@'), "{text}");
            assert!(text.contains("[proxy]") && text.contains("[state]"));
        }
    }

    #[test]
    fn system_paths_follow_the_nginx_dir() {
        let text = starter(&Proxy::System {
            nginx_dir: PathBuf::from("/opt/nginx \"x\""),
        })
        .unwrap();
        assert!(
            text.contains(r#"main_conf = "/opt/nginx \"x\"/nginx.conf""#),
            "{text}"
        );
        assert!(
            text.contains(r#"conf_dir = "/opt/nginx \"x\"/switchyard""#),
            "{text}"
        );
    }
}
