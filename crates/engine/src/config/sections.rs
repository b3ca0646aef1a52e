//! The top-level tables, `[proxy]`, `[state]`, `[runtime]`, `[metrics]` and `[serve]`, checked
//! into [`ProxyConfig`], [`RuntimeChoice`] and [`MetricsConfig`]; [`Checker::config`] walks the
//! whole file and hands each `[[service]]` to the per-service checks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::checker::{parse_addr, Checker};
use super::container::parse_bytes;
use toml::Spanned;

use super::raw::{RawConfig, RawMetrics, RawProxy, RawServe};
use super::{
    Config, MetricsConfig, ProxyConfig, ProxyMode, RegistryConfig, RoutingChoice, RuntimeChoice,
    ServeConfig, ServeTls, ServiceSpec,
};

impl Checker<'_> {
    pub(super) fn config(&mut self, raw: RawConfig) -> Config {
        let proxy = self.proxy(raw.proxy);
        let runtime = match &raw.runtime.kind {
            None => RuntimeChoice::Docker,
            Some(k) => self
                .check(k, "runtime.kind", |k| match k.as_str() {
                    "docker" => Ok(RuntimeChoice::Docker),
                    "process" => Ok(RuntimeChoice::Process),
                    other => Err(format!(
                        "unknown runtime {other:?}: use \"docker\" or \"process\""
                    )),
                })
                .unwrap_or(RuntimeChoice::Docker),
        };
        let services: Vec<ServiceSpec> = raw
            .services
            .iter()
            .filter_map(|s| self.service(s, runtime))
            .collect();
        self.check_unique(&raw.services, &services, &proxy);
        let state_path = PathBuf::from(raw.state.path.unwrap_or_else(|| "switchyard.db".into()));
        let metrics = self.metrics(&raw.metrics, &services);
        let default_serve: SocketAddr = "127.0.0.1:9100".parse().expect("literal address");
        let serve_listen = match &raw.serve.listen {
            None => default_serve,
            Some(l) => self
                .check(l, "serve.listen", |l| parse_addr(l))
                .unwrap_or(default_serve),
        };
        let serve = self.serve(&raw.serve, serve_listen);
        self.check_fronts(&raw.services, &services, &[proxy.control, serve_listen]);
        let registry = raw.registry.as_ref().and_then(|r| {
            self.check(r, "registry", |r| {
                if r.server.is_empty() || r.username.is_empty() || r.password_file.is_empty() {
                    return Err("server, username and password_file are all needed".to_owned());
                }
                Ok(RegistryConfig {
                    server: r.server.clone(),
                    username: r.username.clone(),
                    password_file: PathBuf::from(&r.password_file),
                })
            })
        });
        let notify = self.notify(&raw.notify);
        Config {
            proxy,
            state_path,
            runtime,
            services,
            metrics,
            serve_listen,
            serve,
            registry,
            notify,
        }
    }

    /// `[serve]`: a token file, and cert and key together; a listen off loopback needs them
    /// (the bearer token must not cross the network in clear).
    pub(super) fn serve(&mut self, raw: &RawServe, listen: SocketAddr) -> ServeConfig {
        let path = |v: &Option<Spanned<String>>| v.as_ref().map(|v| PathBuf::from(v.get_ref()));
        for (value, field) in [
            (&raw.token_file, "serve.token_file"),
            (&raw.cert, "serve.cert"),
            (&raw.key, "serve.key"),
        ] {
            if let Some(v) = value.as_ref().filter(|v| v.get_ref().is_empty()) {
                self.push(Some(v.span()), field, "is empty: name a file".into());
            }
        }
        let tls = match (&raw.cert, &raw.key) {
            (Some(_), Some(_)) => path(&raw.cert).zip(path(&raw.key)),
            (Some(v), None) | (None, Some(v)) => {
                let (field, missing) = match raw.cert {
                    Some(_) => ("serve.cert", "serve.key"),
                    None => ("serve.key", "serve.cert"),
                };
                self.push(Some(v.span()), field, format!("needs {missing} too"));
                None
            }
            (None, None) => None,
        }
        .map(|(cert, key)| ServeTls { cert, key });
        if !listen.ip().is_loopback() && tls.is_none() {
            let span = raw.listen.as_ref().map(Spanned::span);
            self.push(
                span,
                "serve.listen",
                format!(
                    "{listen} is not a loopback address: a remote listen needs TLS \
                     ([serve] cert and key), or keep 127.0.0.1 and put a TLS proxy in front"
                ),
            );
        }
        ServeConfig {
            token_file: path(&raw.token_file),
            tls,
        }
    }

    pub(super) fn metrics(&mut self, raw: &RawMetrics, services: &[ServiceSpec]) -> MetricsConfig {
        let prometheus = raw.prometheus.as_ref().and_then(|p| {
            self.check(p, "metrics.prometheus", |url| {
                let rest = url
                    .strip_prefix("http://")
                    .ok_or_else(|| format!("{url:?} is not an http:// URL"))?;
                if rest.is_empty() || rest.contains(char::is_whitespace) {
                    return Err(format!("{url:?} is not an http:// URL"));
                }
                Ok(url.trim_end_matches('/').to_owned())
            })
        });
        let scrape_interval = self.duration(
            &raw.scrape_interval,
            "metrics.scrape_interval",
            Duration::from_secs(15),
        );
        // rate() and increase() need two samples in their window.
        if let (Some(p), true) = (&raw.prometheus, prometheus.is_some()) {
            for s in services
                .iter()
                .filter(|s| s.canary.window < scrape_interval * 4)
            {
                self.push(
                    Some(p.span()),
                    "metrics.prometheus",
                    format!(
                        "service {}: canary window {:?} is shorter than 4 scrape intervals ({:?})",
                        s.name,
                        s.canary.window,
                        scrape_interval * 4
                    ),
                );
            }
        }
        MetricsConfig {
            prometheus,
            scrape_interval,
        }
    }

    pub(super) fn proxy(&mut self, raw: RawProxy) -> ProxyConfig {
        let nginx = PathBuf::from(raw.nginx.unwrap_or_else(|| "nginx".into()));
        let mode = match (raw.prefix, raw.main_conf, raw.conf_dir) {
            (Some(prefix), None, None) => ProxyMode::Managed {
                prefix: prefix.into(),
            },
            (None, Some(main), Some(dir)) => ProxyMode::System {
                main_conf: PathBuf::from(main.into_inner()),
                conf_dir: PathBuf::from(dir.into_inner()),
                pid_file: PathBuf::from(raw.pid_file.unwrap_or_else(|| "/run/nginx.pid".into())),
                access_log: PathBuf::from(
                    raw.access_log
                        .unwrap_or_else(|| "/var/log/nginx/switchyard.json.log".into()),
                ),
            },
            (_, main, dir) => {
                let span = main.or(dir).map(|s| s.span());
                self.push(
                    span,
                    "proxy",
                    "set either `prefix` (switchyard runs its own nginx) or both `main_conf` and `conf_dir` (system nginx)"
                        .into(),
                );
                ProxyMode::Managed {
                    prefix: PathBuf::from("nginx"),
                }
            }
        };
        let default_control: SocketAddr = "127.0.0.1:8099".parse().expect("literal address");
        let control = match &raw.control {
            None => default_control,
            Some(c) => self
                .check(c, "proxy.control", |c| {
                    parse_addr(c).and_then(|a| {
                        if a.ip().is_loopback() {
                            Ok(a)
                        } else {
                            Err(format!("{a} is not a loopback address: the control endpoint must not be reachable from outside"))
                        }
                    })
                })
                .unwrap_or(default_control),
        };
        let routing = match &raw.routing {
            None => RoutingChoice::Auto,
            Some(r) => self
                .check(r, "proxy.routing", |r| RoutingChoice::parse(r))
                .unwrap_or(RoutingChoice::Auto),
        };
        let access_log_max = match &raw.access_log_max {
            None => DEFAULT_ACCESS_LOG_MAX,
            Some(m) => self
                .check(m, "proxy.access_log_max", |m| parse_log_size(m))
                .unwrap_or(DEFAULT_ACCESS_LOG_MAX),
        };
        let templates = raw.templates.as_ref().and_then(|t| {
            self.check(t, "proxy.templates", |t| {
                if t.is_empty() {
                    Err("must name a directory".to_owned())
                } else {
                    Ok(PathBuf::from(t))
                }
            })
        });
        ProxyConfig {
            nginx,
            mode,
            control,
            routing,
            access_log_max,
            templates,
        }
    }
}

/// `proxy.access_log_max` when unset: 100 MiB.
pub const DEFAULT_ACCESS_LOG_MAX: u64 = 100 << 20;

/// `"100m"`, `"512k"`, `"1g"` or a byte count ([`parse_bytes`]), at least 1k: a smaller
/// cap would rotate at every line.
fn parse_log_size(text: &str) -> Result<u64, String> {
    let bytes = parse_bytes(text)?;
    if bytes < 1 << 10 {
        return Err(format!("{text:?} is below the minimum of 1k"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;
    use super::DEFAULT_ACCESS_LOG_MAX;

    const PROXY: &str = "[proxy]\nprefix = \"nginx\"\n";
    const SERVICE: &str = "[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:8000\"\n\
                           image = \"demo-app:{version}\"\nport = 8080\n";

    fn parse(max: &str) -> Result<Config, super::super::ConfigErrors> {
        let text = format!("{PROXY}access_log_max = {max:?}\n{SERVICE}");
        Config::parse(&text, Path::new("switchyard.toml"))
    }

    #[test]
    fn access_log_max_defaults_to_100m_and_reads_k_m_g_and_bytes() {
        let text = format!("{PROXY}{SERVICE}");
        let c = Config::parse(&text, Path::new("switchyard.toml")).unwrap();
        assert_eq!(c.proxy.access_log_max, DEFAULT_ACCESS_LOG_MAX);
        assert_eq!(DEFAULT_ACCESS_LOG_MAX, 100 * 1024 * 1024);
        for (text, bytes) in [
            ("100m", 100 << 20),
            ("512k", 512 << 10),
            ("1g", 1 << 30),
            ("2G", 2 << 30),
            ("4096", 4096),
        ] {
            assert_eq!(parse(text).unwrap().proxy.access_log_max, bytes, "{text}");
        }
    }

    #[test]
    fn a_bad_access_log_max_is_located_by_file_line_column_and_field() {
        for bad in ["ten", "100x", "-1m", "", "12", "99999999999999g"] {
            let errors = parse(bad).expect_err(bad).0;
            assert_eq!(errors.len(), 1, "{bad}: {errors:?}");
            let e = &errors[0];
            assert_eq!(
                (e.file.as_path(), e.line, e.column, e.field.as_str()),
                (Path::new("switchyard.toml"), 3, 18, "proxy.access_log_max"),
                "{bad}"
            );
            assert!(e.to_string().contains("switchyard.toml:3:18"), "{e}");
        }
    }
}
