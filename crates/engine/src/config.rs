//! The configuration model and its first loading stage: parse and validate, no IO.
//!
//! [`Config::parse`] turns the text of `switchyard.toml` into a validated [`Config`] with one
//! [`ServiceSpec`] per `[[service]]`, or into [`ConfigErrors`], each naming the file, line,
//! column and field. Strategy presets from `strategies/` are compiled in and supply defaults
//! that a service may override. The second stage (building live clients) lives in `app`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::names::{check_env_key, check_http_path, check_image_ref, Name, Version};

mod canary;
mod rolling;
pub use canary::CanarySpec;
use canary::RawCanary;
use rolling::RawRolling;
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
    /// Where nginx listens for this service.
    pub listen: SocketAddr,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    proxy: RawProxy,
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    runtime: RawRuntime,
    #[serde(default, rename = "service")]
    services: Vec<Spanned<RawService>>,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    serve: RawServe,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    prometheus: Option<Spanned<String>>,
    scrape_interval: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServe {
    listen: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    nginx: Option<String>,
    prefix: Option<String>,
    main_conf: Option<Spanned<String>>,
    conf_dir: Option<Spanned<String>>,
    pid_file: Option<String>,
    access_log: Option<String>,
    control: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawState {
    path: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRuntime {
    kind: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    listen: Spanned<String>,
    image: Option<Spanned<String>>,
    command: Option<Spanned<Vec<String>>>,
    port: Option<u16>,
    replicas: Option<Spanned<u16>>,
    strategy: Option<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<Spanned<String>, String>,
    #[serde(default)]
    health: RawHealth,
    #[serde(default)]
    drain: RawDrain,
    stop_timeout: Option<Spanned<String>>,
    retain: Option<usize>,
    #[serde(default)]
    canary: RawCanary,
    #[serde(default)]
    rolling: RawRolling,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    path: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    healthy_after: Option<Spanned<u32>>,
    deadline: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDrain {
    timeout: Option<Spanned<String>>,
}

/// A strategy preset from `strategies/`, compiled in.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Preset {
    #[allow(dead_code)]
    kind: String,
    retain: usize,
    healthy_after: u32,
    drain_timeout: String,
    #[serde(default)]
    canary: RawCanary,
    #[serde(default)]
    rolling: RawRolling,
}

const BLUE_GREEN_PRESET: &str = include_str!("../../../strategies/blue-green.toml");
const CANARY_PRESET: &str = include_str!("../../../strategies/canary.toml");
const ROLLING_PRESET: &str = include_str!("../../../strategies/rolling.toml");
const IN_PLACE_PRESET: &str = include_str!("../../../strategies/in-place.toml");

fn preset(kind: StrategyKind) -> Preset {
    let text = match kind {
        StrategyKind::BlueGreen => BLUE_GREEN_PRESET,
        StrategyKind::Canary => CANARY_PRESET,
        StrategyKind::Rolling => ROLLING_PRESET,
        StrategyKind::InPlace => IN_PLACE_PRESET,
    };
    toml::from_str(text).expect("compiled-in strategy presets are valid (tested)")
}

/// Validation state: the source text (for line numbers) and the errors found so far.
struct Checker<'a> {
    text: &'a str,
    file: &'a Path,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn push(&mut self, span: Option<Range<usize>>, field: &str, message: String) {
        let offset = span.map_or(0, |s| s.start).min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = offset - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            field: field.to_owned(),
            message,
        });
    }

    fn finish(self) -> ConfigErrors {
        ConfigErrors(self.errors)
    }

    /// Records an error for a spanned value that failed `check`, returning the checked value.
    fn check<T, U>(
        &mut self,
        v: &Spanned<T>,
        field: &str,
        check: impl FnOnce(&T) -> Result<U, String>,
    ) -> Option<U> {
        match check(v.get_ref()) {
            Ok(u) => Some(u),
            Err(msg) => {
                self.push(Some(v.span()), field, msg);
                None
            }
        }
    }

    fn duration(
        &mut self,
        v: &Option<Spanned<String>>,
        field: &str,
        default: Duration,
    ) -> Duration {
        match v {
            None => default,
            Some(v) => self
                .check(v, field, |s| parse_duration(s))
                .unwrap_or(default),
        }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
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
        Config {
            proxy,
            state_path,
            runtime,
            services,
            metrics,
            serve_listen,
        }
    }

    fn metrics(&mut self, raw: &RawMetrics, services: &[ServiceSpec]) -> MetricsConfig {
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

    fn proxy(&mut self, raw: RawProxy) -> ProxyConfig {
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
        ProxyConfig {
            nginx,
            mode,
            control,
        }
    }

    fn service(
        &mut self,
        raw: &Spanned<RawService>,
        runtime: RuntimeChoice,
    ) -> Option<ServiceSpec> {
        let s = raw.get_ref();
        let name = self.check(&s.name, "service.name", |n| Name::parse(n));
        let listen = self.check(&s.listen, "service.listen", |l| parse_addr(l));
        let strategy = match &s.strategy {
            None => Some(StrategyKind::BlueGreen),
            Some(k) => self.check(k, "service.strategy", |k| StrategyKind::parse(k)),
        };
        let preset = preset(strategy.unwrap_or(StrategyKind::BlueGreen));
        let source = self.source(raw, runtime);
        let replicas = match &s.replicas {
            None => Some(1),
            Some(r) => self.check(r, "service.replicas", |&r| {
                if (1..=64).contains(&r) {
                    Ok(r)
                } else {
                    Err(format!("{r} is out of range 1-64"))
                }
            }),
        };
        for key in s.env.keys() {
            self.check(key, "service.env", |k| check_env_key(k));
        }
        let health = self.health(&s.health, &preset);
        let preset_drain =
            parse_duration(&preset.drain_timeout).expect("preset durations are valid (tested)");
        let drain_timeout = self.duration(&s.drain.timeout, "service.drain.timeout", preset_drain);
        let stop_timeout = self.duration(
            &s.stop_timeout,
            "service.stop_timeout",
            Duration::from_secs(10),
        );
        // Checked before the `?`s below so that their errors are reported with the others.
        // Any service can be deployed as a canary with --strategy canary.
        let canary = self.canary(
            s.canary
                .clone()
                .over(self::preset(StrategyKind::Canary).canary),
        );
        // Any service can be deployed with --strategy rolling (or in-place).
        let rolling = self.rolling(raw, strategy, replicas);
        Some(ServiceSpec {
            name: name?,
            listen: listen?,
            source: source?,
            port: s.port.unwrap_or(8080),
            replicas: replicas?,
            strategy: strategy?,
            env: s
                .env
                .iter()
                .map(|(k, v)| (k.get_ref().clone(), v.clone()))
                .collect(),
            health,
            drain_timeout,
            stop_timeout,
            retain: s.retain.unwrap_or(preset.retain),
            canary,
            rolling,
        })
    }

    fn source(&mut self, raw: &Spanned<RawService>, runtime: RuntimeChoice) -> Option<Source> {
        let s = raw.get_ref();
        match (runtime, &s.image, &s.command) {
            (RuntimeChoice::Docker, Some(image), _) => self.check(image, "service.image", |i| {
                check_image_ref(&i.replace("{version}", "v"))?;
                Ok(Source::Image(i.clone()))
            }),
            (RuntimeChoice::Process, _, Some(cmd)) => self.check(cmd, "service.command", |argv| {
                if argv.is_empty() || argv[0].is_empty() {
                    Err("command must name a program".to_owned())
                } else {
                    Ok(Source::Command(argv.clone()))
                }
            }),
            (RuntimeChoice::Docker, None, _) => {
                self.push(
                    Some(raw.span()),
                    "service.image",
                    "the docker runtime needs `image`".into(),
                );
                None
            }
            (RuntimeChoice::Process, _, None) => {
                self.push(
                    Some(raw.span()),
                    "service.command",
                    "the process runtime needs `command`".into(),
                );
                None
            }
        }
    }

    fn health(&mut self, raw: &RawHealth, preset: &Preset) -> HealthSpec {
        let path = match &raw.path {
            None => "/health".to_owned(),
            Some(p) => self
                .check(p, "service.health.path", |p| {
                    check_http_path(p).map(|_| p.clone())
                })
                .unwrap_or_default(),
        };
        let healthy_after = match &raw.healthy_after {
            None => preset.healthy_after,
            Some(n) => self
                .check(n, "service.health.healthy_after", |&n| {
                    if n >= 1 {
                        Ok(n)
                    } else {
                        Err("must be at least 1".to_owned())
                    }
                })
                .unwrap_or(1),
        };
        HealthSpec {
            path,
            interval: self.duration(
                &raw.interval,
                "service.health.interval",
                Duration::from_millis(200),
            ),
            timeout: self.duration(
                &raw.timeout,
                "service.health.timeout",
                Duration::from_secs(1),
            ),
            healthy_after,
            deadline: self.duration(
                &raw.deadline,
                "service.health.deadline",
                Duration::from_secs(60),
            ),
        }
    }

    /// Service names and listen addresses must be unique, and none may take the control address.
    fn check_unique(
        &mut self,
        raw: &[Spanned<RawService>],
        services: &[ServiceSpec],
        proxy: &ProxyConfig,
    ) {
        for (i, s) in raw.iter().enumerate() {
            let s = s.get_ref();
            let earlier = &raw[..i];
            if earlier
                .iter()
                .any(|e| e.get_ref().name.get_ref() == s.name.get_ref())
            {
                self.push(
                    Some(s.name.span()),
                    "service.name",
                    format!("duplicate service {:?}", s.name.get_ref()),
                );
            }
            if earlier
                .iter()
                .any(|e| e.get_ref().listen.get_ref() == s.listen.get_ref())
            {
                self.push(
                    Some(s.listen.span()),
                    "service.listen",
                    format!("{} is already used by another service", s.listen.get_ref()),
                );
            }
            if services
                .iter()
                .any(|v| v.name.as_str() == s.name.get_ref() && v.listen == proxy.control)
            {
                self.push(
                    Some(s.listen.span()),
                    "service.listen",
                    format!("{} is the proxy control address", proxy.control),
                );
            }
        }
    }
}

/// Parses `"200ms"`, `"1s"`, `"2m"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?}: {e} (examples: \"200ms\", \"30s\", \"2m\")"))
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("invalid address {s:?}: use IP:PORT, e.g. \"127.0.0.1:8000\""))
}

#[cfg(test)]
mod tests;
