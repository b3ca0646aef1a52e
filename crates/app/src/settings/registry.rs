//! `[registry]` at load: [`resolve`] makes `password_file` absolute (against the config's
//! directory) and checks that it exists. Its mode and contents are read at pull time, by the
//! Docker runtime, so the password is never held with the config.

use std::path::Path;

use switchyard_engine::Config;

use crate::AppError;

/// Resolves `[registry] password_file` against `base`; an error names `file` and the path.
pub(super) fn resolve(config: &mut Config, base: &Path, file: &Path) -> Result<(), AppError> {
    let Some(registry) = &mut config.registry else {
        return Ok(());
    };
    if registry.password_file.is_relative() {
        registry.password_file = base.join(&registry.password_file);
    }
    let path = &registry.password_file;
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(AppError::input(format!(
            "{}: registry.password_file: {} is not a file",
            file.display(),
            path.display()
        ))),
        Err(e) => Err(AppError::input(format!(
            "{}: registry.password_file: {}: {e}",
            file.display(),
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    const CONFIG: &str = r#"
[proxy]
prefix = "nginx"
[[service]]
name = "web"
listen = "127.0.0.1:8000"
image = "127.0.0.1:5000/web:{version}"
[registry]
server = "127.0.0.1:5000"
username = "ci"
password_file = "secrets/registry.pw"
"#;

    #[test]
    fn a_relative_password_file_is_found_beside_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchyard.toml");
        std::fs::write(&path, CONFIG).unwrap();
        let err = crate::settings::load(&path).unwrap_err();
        assert_eq!(err.code, 2, "{err}");
        assert!(
            err.message.contains("registry.password_file")
                && err.message.contains("secrets/registry.pw"),
            "{err}"
        );
        std::fs::create_dir(dir.path().join("secrets")).unwrap();
        std::fs::write(dir.path().join("secrets/registry.pw"), "pw\n").unwrap();
        let config = crate::settings::load(&path).unwrap();
        let registry = config.registry.unwrap();
        assert_eq!(
            registry.password_file,
            dir.path().join("secrets/registry.pw")
        );
    }
}
