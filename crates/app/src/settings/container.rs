//! The IO half of checking a service's container options: [`check_bind_sources`], every
//! bind volume's host path must exist (Docker would otherwise fail the start, or with
//! `-v` semantics create an empty directory there).

use std::path::Path;

use switchyard_engine::config::container::VolumeSource;
use switchyard_engine::Config;

use crate::AppError;

/// Every bind volume's source exists; else one error naming each missing one, with the
/// config file, the service and `service.volumes` (exit 2).
pub(super) fn check_bind_sources(config: &Config, file: &Path) -> Result<(), AppError> {
    let mut problems = Vec::new();
    for service in &config.services {
        for volume in &service.container.volumes {
            let VolumeSource::Bind(source) = &volume.source else {
                continue;
            };
            if let Err(e) = std::fs::metadata(source) {
                problems.push(format!(
                    "{}: service {}: service.volumes: bind source {} (for {}): {e}; create it, or use a named volume",
                    file.display(),
                    service.name,
                    source.display(),
                    volume.target
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(AppError::input(problems.join("\n")))
    }
}

#[cfg(test)]
mod tests {
    use crate::settings::load;

    fn config_with_volumes(dir: &std::path::Path, volumes: &str) -> std::path::PathBuf {
        let path = dir.join("switchyard.toml");
        let text = format!(
            "[proxy]\nprefix = \"nginx\"\n[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:8000\"\nimage = \"demo:{{version}}\"\nvolumes = [{volumes}]\n"
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_missing_bind_source_is_named_with_the_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let here = dir.path().join("data");
        std::fs::create_dir(&here).unwrap();
        let gone = dir.path().join("gone");
        let path = config_with_volumes(
            dir.path(),
            &format!(
                "\"{}:/data\", \"{}:/gone:ro\", \"cache:/cache\"",
                here.display(),
                gone.display()
            ),
        );
        let err = load(&path).unwrap_err();
        assert_eq!(err.code, 2, "{}", err.message);
        assert_eq!(
            err.message,
            format!(
                "{}: service web: service.volumes: bind source {} (for /gone): No such file or directory (os error 2); create it, or use a named volume",
                path.display(),
                gone.display()
            )
        );
        std::fs::create_dir(&gone).unwrap();
        assert!(load(&path).is_ok());
    }
}
