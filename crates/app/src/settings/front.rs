//! The IO half of checking the front door: every `tls` certificate and key can be read, and
//! a `[proxy] templates` directory exists and its templates parse. Errors name the file, the
//! line and column where the value is written, and the field.

use std::path::Path;

use switchyard_engine::Config;
use switchyard_nginx::Templates;

use crate::AppError;

/// Resolves `proxy.templates` against `base`, then checks the TLS files and the templates;
/// one error naming each problem (exit 2).
pub(super) fn check(config: &mut Config, text: &str, file: &Path) -> Result<(), AppError> {
    let base = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut problems = Vec::new();
    for service in &config.services {
        let Some(tls) = &service.front.tls else {
            continue;
        };
        let files = [
            ("service.tls.cert", &tls.cert, tls.cert_at),
            ("service.tls.key", &tls.key, tls.key_at),
        ];
        for (field, path, (line, column)) in files {
            if let Err(e) = std::fs::File::open(path) {
                problems.push(format!(
                    "{}:{line}:{column}: {field}: service {}: cannot read {}: {e}",
                    file.display(),
                    service.name,
                    path.display()
                ));
            }
        }
    }
    if let Some(dir) = &mut config.proxy.templates {
        let written = dir.display().to_string();
        if dir.is_relative() {
            *dir = base.join(&*dir);
        }
        let where_ = at(text, file, &written);
        if !dir.is_dir() {
            problems.push(format!(
                "{where_}: proxy.templates: {} is not a directory",
                dir.display()
            ));
        } else if let Err(e) = Templates::with_overrides(dir) {
            problems.push(format!("{where_}: proxy.templates: {e}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(AppError::input(problems.join("\n")))
    }
}

/// `file:line:column` of the first place `value` is written as a TOML string in `text`
/// (`proxy.templates`, `serve.cert` and `serve.key` are written once).
pub(super) fn at(text: &str, file: &Path, value: &str) -> String {
    let quoted = format!("\"{value}\"");
    let offset = text
        .find(&quoted)
        .or_else(|| text.find(&format!("'{value}'")))
        .unwrap_or(0);
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = offset - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("{}:{line}:{column}", file.display())
}

#[cfg(test)]
mod tests {
    use crate::settings::load;

    #[test]
    fn a_missing_certificate_is_named_with_its_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchyard.toml");
        let key = dir.path().join("key.pem");
        std::fs::write(&key, "not really a key").unwrap();
        let gone = dir.path().join("gone.pem");
        let text = format!(
            "[proxy]\nprefix = \"nginx\"\n[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:8443\"\nimage = \"demo:{{version}}\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
            gone.display(),
            key.display()
        );
        std::fs::write(&path, text).unwrap();
        let err = load(&path).unwrap_err().to_string();
        let column = "tls = { cert = ".len() + 1;
        assert!(
            err.starts_with(&format!(
                "{}:7:{column}: service.tls.cert: service web: cannot read {}",
                path.display(),
                gone.display()
            )),
            "{err}"
        );
        assert!(!err.contains("service.tls.key"), "{err}");
    }

    #[test]
    fn a_templates_directory_must_exist_and_its_templates_parse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchyard.toml");
        let write = |templates: &str| {
            std::fs::write(
                &path,
                format!("[proxy]\nprefix = \"nginx\"\ntemplates = \"{templates}\"\n"),
            )
            .unwrap();
        };
        write("missing");
        let err = load(&path).unwrap_err().to_string();
        assert!(
            err.contains(":3:13: proxy.templates:") && err.contains("is not a directory"),
            "{err}"
        );
        std::fs::create_dir(dir.path().join("mine")).unwrap();
        std::fs::write(dir.path().join("mine/site.conf.tera"), "{% if %}").unwrap();
        write("mine");
        let err = load(&path).unwrap_err().to_string();
        assert!(
            err.contains("proxy.templates:") && err.contains("site.conf.tera"),
            "{err}"
        );
        std::fs::write(dir.path().join("mine/site.conf.tera"), "# mine\n").unwrap();
        let config = load(&path).unwrap();
        assert_eq!(config.proxy.templates, Some(dir.path().join("mine")));
    }
}
