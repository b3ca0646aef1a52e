//! The second stage of loading a config: [`load`] reads the file, runs the engine's
//! validation (no IO), resolves relative paths against the file's directory and checks
//! what needs the host: bind volumes' sources (in `container`), `[registry]`'s password file
//! (in [`registry`]), TLS files and template overrides (in `front`), that `[serve]
//! token_file` is 0600 ([`check_token_file`]) and that `[serve] cert` and `key` serve
//! (`serve/tls.rs`).

mod container;
mod front;
mod registry;

use std::path::{Path, PathBuf};

use switchyard_engine::config::ProxyMode;
use switchyard_engine::{Config, Source};

use crate::AppError;

/// `[serve] token_file` must be a file only its owner can read (`chmod 600`): whoever
/// reads it can deploy. Its contents are read by `serve`, never here.
pub fn check_token_file(token: &Path, config: &Path) -> Result<(), AppError> {
    match token_file_problem(token) {
        None => Ok(()),
        Some(why) => Err(AppError::input(format!(
            "{}: serve.token_file: {}: {why}",
            config.display(),
            token.display()
        ))),
    }
}

/// What is wrong with `token` as a token file, if anything.
pub fn token_file_problem(token: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::metadata(token) {
        Ok(meta) => meta,
        Err(e) => return Some(e.to_string()),
    };
    if !meta.is_file() {
        return Some("is not a file".into());
    }
    let mode = meta.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!("is readable or writable by group or others (mode {mode:03o}); `chmod 600` it")
    })
}

pub fn load(path: &Path) -> Result<Config, AppError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AppError::input(format!("reading {}: {e}", path.display())))?;
    let mut config = Config::parse(&text, path).map_err(|e| AppError::input(e.to_string()))?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // Absolute: nginx resolves `-c` against `-p`, so a prefix relative to the working
    // directory (`--config switchyard.toml`, `prefix = "nginx"`) would be joined twice.
    let base = &std::path::absolute(base).unwrap_or_else(|_| base.to_owned());
    let resolve = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    };
    resolve(&mut config.state_path);
    registry::resolve(&mut config, base, path)?;
    match &mut config.proxy.mode {
        ProxyMode::Managed { prefix } => resolve(prefix),
        ProxyMode::System {
            main_conf,
            conf_dir,
            pid_file,
            access_log,
        } => {
            resolve(main_conf);
            resolve(conf_dir);
            resolve(pid_file);
            resolve(access_log);
            // A staged copy of main_conf's directory is validated with `nginx -t`: conf_dir
            // must be inside it, included relatively.
            let root = main_conf.parent().unwrap_or(Path::new("/"));
            if !conf_dir.starts_with(root) {
                return Err(AppError::input(format!(
                    "{}: proxy.conf_dir: {} is not inside {} (the directory of proxy.main_conf), so a staged copy of the nginx config could not be validated",
                    path.display(),
                    conf_dir.display(),
                    root.display()
                )));
            }
        }
    }
    for service in &mut config.services {
        if let Some(file) = &mut service.env_file {
            resolve(file);
        }
        for file in service.secret_files.values_mut() {
            resolve(file);
        }
        if let Source::Command(argv) = &mut service.source {
            // A program named by a relative path (not a bare name found on PATH).
            if argv[0].contains('/') && Path::new(&argv[0]).is_relative() {
                argv[0] = base.join(&argv[0]).display().to_string();
            }
        }
    }
    crate::hooks::resolve(&mut config, base, path)?;
    if let Some(file) = &mut config.serve.token_file {
        resolve(file);
        check_token_file(file, path)?;
    }
    if let Some(tls) = &mut config.serve.tls {
        let at = |p: &Path| front::at(&text, path, &p.display().to_string());
        let (cert_at, key_at) = (at(&tls.cert), at(&tls.key));
        resolve(&mut tls.cert);
        resolve(&mut tls.key);
        // Read now, as the front door's files are: `validate` finds a bad one, and `serve`
        // never listens without it.
        crate::serve::tls::server_config(tls).map_err(|e| {
            let at = if e.field == "serve.cert" {
                cert_at
            } else {
                key_at
            };
            AppError::input(format!("{at}: {}: {e}", e.field))
        })?;
    }
    container::check_bind_sources(&config, path)?;
    front::check(&mut config, &text, path)?;
    Ok(config)
}
