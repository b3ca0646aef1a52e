//! Reading a service's `env_file` and `secrets` files when a deploy begins: [`read`]; and
//! keeping their values out of what switchyard keeps or prints: [`values`] and [`redact`].
//!
//! Values go into [`ServiceSpec::secrets`], which only runtimes read (into the replica's
//! environment). No error here ever holds a value: they name the file, the key and the line.
//! A secret file readable by group or others is refused, as ssh refuses a loose key.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use switchyard_engine::{Config, Secrets, ServiceSpec};

use crate::AppError;

/// Reads every service's `env_file` and `secrets` into its [`ServiceSpec::secrets`].
pub fn read(config: &mut Config) -> Result<(), AppError> {
    for spec in &mut config.services {
        spec.secrets = read_service(spec)?;
    }
    Ok(())
}

/// Shorter secret values are not searched for: they would match ordinary words.
pub const REDACT_MIN_LEN: usize = 4;

/// The values of `spec`'s `env_file` and `secrets` worth searching for (see
/// [`REDACT_MIN_LEN`]); none until [`read`] has read them.
pub fn values(spec: &ServiceSpec) -> Vec<&str> {
    spec.secrets
        .iter()
        .map(|(_, v)| v)
        .filter(|v| v.len() >= REDACT_MIN_LEN)
        .collect()
}

/// `text` with every one of `values` replaced by `[redacted]`, the longest first (a value
/// inside another must not leave the rest of the longer one visible).
pub fn redact(text: &str, values: &[&str]) -> String {
    let mut values: Vec<&str> = values.iter().copied().filter(|v| !v.is_empty()).collect();
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    values
        .iter()
        .fold(text.to_owned(), |t, v| t.replace(v, "[redacted]"))
}

fn read_service(spec: &ServiceSpec) -> Result<Secrets, AppError> {
    let mut values = BTreeMap::new();
    if let Some(path) = &spec.env_file {
        values.extend(env_file(path, spec)?);
    }
    for (key, path) in &spec.secret_files {
        values.insert(key.clone(), secret_file(path, key, spec)?);
    }
    Ok(Secrets::new(values))
}

fn unreadable(path: &Path, spec: &ServiceSpec, field: &str, e: std::io::Error) -> AppError {
    AppError::input(format!(
        "service {}: {field}: cannot read {}: {e}",
        spec.name,
        path.display()
    ))
}

/// One secret: the file's content without its final newline.
fn secret_file(path: &Path, key: &str, spec: &ServiceSpec) -> Result<String, AppError> {
    let field = format!("secrets.{key}");
    let meta = std::fs::metadata(path).map_err(|e| unreadable(path, spec, &field, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(AppError::input(format!(
            "service {}: {field}: {} is readable by group or others (mode {mode:03o}); `chmod 600` it",
            spec.name,
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| unreadable(path, spec, &field, e))?;
    Ok(text.strip_suffix('\n').unwrap_or(&text).to_owned())
}

/// `KEY=VALUE` lines; blank lines and `#` comments skipped; a value may be quoted.
fn env_file(path: &Path, spec: &ServiceSpec) -> Result<BTreeMap<String, String>, AppError> {
    let text = std::fs::read_to_string(path).map_err(|e| unreadable(path, spec, "env_file", e))?;
    let mut values = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(AppError::input(format!(
                "service {}: env_file: {}:{}: not KEY=VALUE",
                spec.name,
                path.display(),
                i + 1
            )));
        };
        let key = key.trim();
        switchyard_engine::names::check_env_key(key).map_err(|e| {
            AppError::input(format!(
                "service {}: env_file: {}:{}: {e}",
                spec.name,
                path.display(),
                i + 1
            ))
        })?;
        let value = value.trim();
        let unquoted = ['"', '\'']
            .iter()
            .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)));
        values.insert(key.to_owned(), unquoted.unwrap_or(value).to_owned());
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path, env_file: Option<&str>, secrets: &[(&str, &str)]) -> ServiceSpec {
        let text = format!(
            "[proxy]\nprefix = \"nginx\"\n[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:8000\"\nimage = \"x:{{version}}\"\n{}secrets = {{ {} }}\n",
            env_file.map_or(String::new(), |f| format!("env_file = {:?}\n", dir.join(f))),
            secrets
                .iter()
                .map(|(k, f)| format!("{k} = {:?}", dir.join(f)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Config::parse(&text, Path::new("switchyard.toml"))
            .unwrap()
            .services
            .remove(0)
    }

    fn write(dir: &Path, name: &str, text: &str, mode: u32) {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn env_file_and_secrets_are_read_secrets_last() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "app.env",
            "# shop\nexport MODE=prod\nGREETING=\"hello world\"\n\nTOKEN=from-env-file\n",
            0o644,
        );
        write(dir.path(), "token", "s3cr3t\n", 0o600);
        let spec = spec(dir.path(), Some("app.env"), &[("TOKEN", "token")]);
        let values: BTreeMap<String, String> = read_service(&spec)
            .unwrap()
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(values["MODE"], "prod");
        assert_eq!(values["GREETING"], "hello world");
        assert_eq!(
            values["TOKEN"], "s3cr3t",
            "a secret file wins over env_file"
        );
        assert!(!format!("{:?}", read_service(&spec).unwrap()).contains("s3cr3t"));
    }

    #[test]
    fn a_loose_secret_file_is_refused_without_its_value() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "token", "s3cr3t", 0o644);
        let err = read_service(&spec(dir.path(), None, &[("TOKEN", "token")])).unwrap_err();
        assert!(err.message.contains("mode 644"), "{err}");
        assert!(err.message.contains("secrets.TOKEN"), "{err}");
        assert!(!err.message.contains("s3cr3t"), "{err}");
        assert_eq!(err.code, 2);
    }

    #[test]
    fn a_bad_env_file_line_is_located() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "app.env", "A=1\nnot a pair\n", 0o644);
        let err = read_service(&spec(dir.path(), Some("app.env"), &[])).unwrap_err();
        assert!(err.message.contains("app.env:2: not KEY=VALUE"), "{err}");
    }
}
