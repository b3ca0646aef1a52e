//! The configuration model and its first loading stage: parse and validate, no IO.
//!
//! [`Config::parse`] turns the text of `switchyard.toml` into a validated [`Config`] with one
//! [`ServiceSpec`] per `[[service]]`, or into [`ConfigErrors`], each naming the file, line,
//! column and field. Strategy presets from `strategies/` are compiled in and supply defaults
//! that a service may override. The second stage (building live clients) lives in `app`.
//!
//! The checking is split by what it reads: `raw` holds the TOML as written, `presets` the
//! compiled-in presets, `checker` the error-collecting `Checker`, `sections` the top-level
//! tables, and `service`, `front`, `canary` and `rolling` each `[[service]]`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::names::{Name, Version};

mod canary;
mod checker;
pub mod container;
pub mod front;
pub mod hooks;
pub mod notify;
mod presets;
mod raw;
mod rolling;
mod sections;
mod service;
pub use canary::CanarySpec;
use checker::Checker;
pub use front::{FrontSpec, ProxyTimeouts, TlsFiles};
pub use hooks::{HookAction, HookSpec, HooksSpec};
pub use notify::{NotifyEvent, NotifyFormat, NotifySpec};
use raw::RawConfig;
pub use rolling::{OnFailure, RollingSpec};

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub proxy: ProxyConfig,
    /// SQLite file; relative paths are resolved against the config file by `app`.
    pub state_path: PathBuf,
    pub runtime: RuntimeChoice,
    pub services: Vec<ServiceSpec>,
    pub metrics: MetricsConfig,
    /// Where `switchyard serve` listens (`/metrics`, the API); loopback by default.
    pub serve_listen: SocketAddr,
    /// `[serve]`'s API token and TLS files.
    pub serve: ServeConfig,
    /// `[registry]`: credentials for pulling images (else Docker's own config.json).
    pub registry: Option<RegistryConfig>,
    /// `[[notify]]`: webhooks told about deploys.
    pub notify: Vec<NotifySpec>,
}

/// A registry login. The password is read from `password_file` when a pull needs it, never
/// kept in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    pub server: String,
    pub username: String,
    pub password_file: PathBuf,
}

/// `[serve]` beyond its listen: the API's bearer token and the TLS pair a non-loopback
/// listen needs. Relative paths are resolved against the config file by `app`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServeConfig {
    /// `serve.token_file`: the API token (0600), read when `serve` starts, never kept here.
    pub token_file: Option<PathBuf>,
    /// `serve.cert` and `serve.key`, both or neither.
    pub tls: Option<ServeTls>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where canary measurements come from.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// `http://host:port` of a Prometheus that scrapes `switchyard serve`; without one the
    /// judge reads nginx's access log directly.
    pub prometheus: Option<String>,
    /// Prometheus' scrape interval for switchyard; a canary window must span 4 of them.
    pub scrape_interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    /// The nginx binary.
    pub nginx: PathBuf,
    pub mode: ProxyMode,
    /// Loopback address of the generated server block that answers the config generation.
    pub control: SocketAddr,
    /// How traffic moves: `proxy.routing`.
    pub routing: RoutingChoice,
    /// `proxy.access_log_max`: `serve` rotates the access log to `<log>.1` past this many
    /// bytes (100 MiB by default).
    pub access_log_max: u64,
    /// `proxy.templates`: a directory whose files replace the built-in nginx templates of the
    /// same name (relative paths are resolved against the config file by `app`).
    pub templates: Option<PathBuf>,
}

/// `[proxy] routing`: how a deploy moves traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutingChoice {
    /// `dynamic` where nginx can load its Lua module, else `reload` (the default).
    Auto,
    /// Routing documents in nginx's shared memory, no reloads (needs `libnginx-mod-http-lua`).
    Dynamic,
    /// A validated, confirmed reload per change (plain nginx).
    Reload,
}

impl RoutingChoice {
    pub fn parse(s: &str) -> Result<RoutingChoice, String> {
        match s {
            "auto" => Ok(RoutingChoice::Auto),
            "dynamic" => Ok(RoutingChoice::Dynamic),
            "reload" => Ok(RoutingChoice::Reload),
            other => Err(format!(
                "unknown routing {other:?}: use \"auto\", \"dynamic\" or \"reload\""
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProxyMode {
    /// switchyard starts and owns an nginx with this prefix directory (tests, the demo).
    Managed { prefix: PathBuf },
    /// The system nginx: `main_conf` includes `conf_dir/*.conf` (relatively) inside `http {}`;
    /// its master writes its pid to `pid_file` (`proxy.pid_file`, Debian's `/run/nginx.pid`).
    System {
        main_conf: PathBuf,
        conf_dir: PathBuf,
        pid_file: PathBuf,
        /// `proxy.access_log`, the JSON log switchyard's servers write and it tails.
        access_log: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeChoice {
    /// Docker when the daemon answers, otherwise an error that says so.
    Docker,
    /// Local processes, for hosts without a Docker engine.
    Process,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSpec {
    pub name: Name,
    /// Where nginx listens for this service (shared with others that have other hosts or paths).
    pub listen: SocketAddr,
    /// How nginx answers for it: hosts, path, TLS, limits, timeouts.
    pub front: FrontSpec,
    pub source: Source,
    /// The port the app listens on inside its container (docker runtime).
    pub port: u16,
    pub replicas: u16,
    pub strategy: StrategyKind,
    pub env: BTreeMap<String, String>,
    pub health: HealthSpec,
    pub drain_timeout: Duration,
    pub stop_timeout: Duration,
    /// Previous versions kept stopped for rollback.
    pub retain: usize,
    /// How a canary deploy moves (used by `strategy = "canary"` or `--strategy canary`).
    pub canary: CanarySpec,
    /// How a rolling or in-place deploy moves (`strategy = "rolling"`/`"in-place"` or
    /// `--strategy`); see [`RollingSpec::for_kind`].
    pub rolling: RollingSpec,
    /// How its replicas run beyond image and port: pull, limits, volumes, networks, ….
    pub container: container::ContainerSpec,
    /// `env_file`: `KEY=VALUE` lines read at deploy time.
    pub env_file: Option<PathBuf>,
    /// `secrets`: environment variables whose values are read from files at deploy time.
    pub secret_files: BTreeMap<String, PathBuf>,
    /// What `env_file` and `secret_files` held when the deploy began (empty until read).
    pub secrets: crate::model::Secrets,
    /// `[service.hooks]`: commands or webhooks run at fixed points of a deploy.
    pub hooks: HooksSpec,
    /// `watch`: how long a deploy keeps judging the new version after it takes all traffic
    /// (by `[service.canary]`'s interval, window and thresholds), the previous version kept
    /// ready meanwhile; a failed check routes back at once. Zero: no watch.
    pub watch: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// An image reference; `{version}` is replaced by the deployed version.
    Image(String),
    /// argv for the process runtime; `{version}` and `{port}` are replaced in every element.
    Command(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrategyKind {
    BlueGreen,
    Canary,
    /// Replicas replaced in batches bounded by `max_surge` and `max_unavailable`.
    Rolling,
    /// Rolling with no extra capacity: `max_surge = 0`, new replicas reuse the freed ports.
    InPlace,
}

impl StrategyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::BlueGreen => "blue-green",
            StrategyKind::Canary => "canary",
            StrategyKind::Rolling => "rolling",
            StrategyKind::InPlace => "in-place",
        }
    }

    /// Whether replicas are replaced in batches (rolling or in-place).
    pub fn is_rolling(self) -> bool {
        matches!(self, StrategyKind::Rolling | StrategyKind::InPlace)
    }

    pub fn parse(s: &str) -> Result<StrategyKind, String> {
        match s {
            "blue-green" => Ok(StrategyKind::BlueGreen),
            "canary" => Ok(StrategyKind::Canary),
            "rolling" => Ok(StrategyKind::Rolling),
            "in-place" => Ok(StrategyKind::InPlace),
            other => Err(format!(
                "unknown strategy {other:?}: use \"blue-green\", \"canary\", \"rolling\" or \"in-place\""
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthSpec {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_after: u32,
    pub deadline: Duration,
}

impl ServiceSpec {
    /// The bounds a deploy of `kind` moves within. Blue-green and canary start every new
    /// replica beside the old ones and never take one out before its replacement serves:
    /// a surge of `replicas` and no unavailability, which makes them one-batch rollouts.
    pub fn bounds(&self, kind: StrategyKind) -> RollingSpec {
        match kind {
            StrategyKind::Rolling | StrategyKind::InPlace => self.rolling.for_kind(kind),
            StrategyKind::BlueGreen | StrategyKind::Canary => RollingSpec {
                max_surge: self.replicas,
                max_unavailable: 0,
                on_failure: OnFailure::Rollback,
                allow_downtime: false,
            },
        }
    }

    /// The image (or argv) for one version, with `{version}` substituted.
    /// `env` with `{version}` replaced in every value.
    pub fn env_for(&self, version: &Version) -> BTreeMap<String, String> {
        self.env
            .iter()
            .map(|(k, v)| (k.clone(), v.replace("{version}", version.as_str())))
            .collect()
    }

    pub fn source_for(&self, version: &Version) -> Source {
        let sub = |s: &str| s.replace("{version}", version.as_str());
        match &self.source {
            Source::Image(i) => Source::Image(sub(i)),
            Source::Command(argv) => Source::Command(argv.iter().map(|a| sub(a)).collect()),
        }
    }
}

impl Config {
    /// Parses and validates `text`, read from `file` (used only in error messages).
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigErrors> {
        let mut errs = Checker {
            text,
            file,
            errors: Vec::new(),
        };
        let raw: RawConfig = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                // "unknown field `prot`" names the field; "invalid value: integer `-1`" does not.
                let msg = e.message();
                let field = match msg.split('`').nth(1) {
                    Some(f) if msg.contains(" field `") => f.to_owned(),
                    _ => String::new(),
                };
                errs.push(e.span(), &field, e.message().trim().to_owned());
                return Err(errs.finish());
            }
        };
        let config = errs.config(raw);
        if errs.errors.is_empty() {
            Ok(config)
        } else {
            Err(errs.finish())
        }
    }

    pub fn service(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.iter().find(|s| s.name.as_str() == name)
    }
}

/// One problem in the config, located by line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (file, line, col) = (self.file.display(), self.line, self.column);
        if self.field.is_empty() {
            write!(f, "{file}:{line}:{col}: {}", self.message)
        } else {
            write!(f, "{file}:{line}:{col}: {}: {}", self.field, self.message)
        }
    }
}

/// Every problem found in one config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(|e| e.to_string()).collect();
        f.write_str(&lines.join("\n"))
    }
}

/// Parses `"200ms"`, `"1s"`, `"2m"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?}: {e} (examples: \"200ms\", \"30s\", \"2m\")"))
}

#[cfg(test)]
mod tests;
