//! The demo app's settings, read from environment variables: [`Config`], built by
//! [`Config::from_env`], and [`ConfigError`], which names the variable that was wrong.
//!
//! Every variable is optional; an empty value counts as unset (Docker's `-e VAR=`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Longest `APP_VERSION` accepted; it travels in a header and in every log line.
const MAX_VERSION_LEN: usize = 128;

/// What the demo app serves and how it misbehaves.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `BIND_ADDR` (default `0.0.0.0`) and `PORT` (default 8080). An IP literal:
    /// the scratch image has no resolver.
    pub addr: SocketAddr,
    /// `APP_VERSION` (default `dev`): printable ASCII without `"` or `\`, so it is a valid
    /// header value and needs no escaping in the JSON body.
    pub version: String,
    /// `APP_BUILD`: which build of the image this is, as baked into it (the same charset as
    /// `APP_VERSION`), echoed in an `x-build` header; the container's `APP_VERSION` is the
    /// deployed version, so two builds pushed under one tag are told apart by this.
    pub build: Option<String>,
    /// `START_DELAY_MS`: wait this long before binding the listener.
    pub start_delay: Duration,
    /// `LATENCY_MS`: delay every `/` response by this much.
    pub latency: Duration,
    /// `FAIL_RATE` (0.0–1.0): fraction of `/` requests answered 500.
    pub fail_rate: f64,
    /// `HEALTH_FAIL` (`1`/`true`): `/health` always answers 503. Also set when
    /// `APP_VERSION` is listed in `UNHEALTHY_VERSIONS` (comma-separated), so one service
    /// config can hold a version that never becomes healthy (the process runtime has no
    /// per-version image to bake it into).
    pub health_fail: bool,
    /// `SHUTDOWN_GRACE_MS` (default 10000): after SIGTERM or SIGINT, the longest wait for
    /// in-flight requests before exiting. When it runs out the app closes every connection
    /// still open and exits, so those requests get no response: their clients see the
    /// connection close first. `0` exits at once on the signal, so a request in flight then
    /// fails unless the proxy waited for it before stopping the app.
    pub shutdown_grace: Duration,
    /// `DATA_DIRS`: comma-separated absolute directories (volumes, in the tests). At start
    /// the app writes a file named after its version into each, and `GET /data` lists them
    /// (see `data`), so a test can see what earlier versions left behind.
    pub data_dirs: Vec<PathBuf>,
}

/// An environment variable whose value could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub expected: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {}={:?}: expected {}",
            self.var, self.value, self.expected
        )
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| {
            std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
        })
    }

    /// Reads settings through `lookup`, so tests need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
        let ip: IpAddr = parse(
            get("BIND_ADDR"),
            "BIND_ADDR",
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            "an IP address such as 0.0.0.0 or 127.0.0.1 (no host names)",
        )?;
        let port: u16 = parse(get("PORT"), "PORT", 8080, "a port number 0-65535")?;
        let version = match get("APP_VERSION") {
            None => "dev".to_string(),
            Some(value) if is_valid_version(&value) => value,
            Some(value) => {
                return Err(ConfigError {
                    var: "APP_VERSION",
                    value,
                    expected: "1-128 printable ASCII characters without '\"' or '\\'",
                })
            }
        };
        let build = match get("APP_BUILD") {
            Some(value) if !is_valid_version(&value) => {
                return Err(ConfigError {
                    var: "APP_BUILD",
                    value,
                    expected: "1-128 printable ASCII characters without '\"' or '\\'",
                })
            }
            build => build,
        };
        let fail_rate: f64 = parse(get("FAIL_RATE"), "FAIL_RATE", 0.0, FAIL_RATE_EXPECTED)?;
        if !(0.0..=1.0).contains(&fail_rate) {
            return Err(ConfigError {
                var: "FAIL_RATE",
                value: get("FAIL_RATE").unwrap_or_default(),
                expected: FAIL_RATE_EXPECTED,
            });
        }
        // FAILING_VERSIONS (comma-separated) limits FAIL_RATE to the listed versions, so one
        // service config can hold a bad canary beside a good stable version.
        let fail_rate = match get("FAILING_VERSIONS") {
            Some(list) if !list.split(',').any(|v| v.trim() == version) => 0.0,
            _ => fail_rate,
        };
        Ok(Config {
            addr: SocketAddr::new(ip, port),
            version: version.clone(),
            build,
            start_delay: millis(get("START_DELAY_MS"), "START_DELAY_MS", 0)?,
            latency: millis(get("LATENCY_MS"), "LATENCY_MS", 0)?,
            fail_rate,
            health_fail: flag(get("HEALTH_FAIL"), "HEALTH_FAIL")?
                || get("UNHEALTHY_VERSIONS")
                    .is_some_and(|list| list.split(',').any(|v| v.trim() == version)),
            shutdown_grace: millis(get("SHUTDOWN_GRACE_MS"), "SHUTDOWN_GRACE_MS", 10_000)?,
            data_dirs: dirs(get("DATA_DIRS"), "DATA_DIRS")?,
        })
    }
}

const FAIL_RATE_EXPECTED: &str = "a number from 0.0 to 1.0";

fn is_valid_version(value: &str) -> bool {
    (1..=MAX_VERSION_LEN).contains(&value.len())
        && value
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
}

fn parse<T: FromStr>(
    value: Option<String>,
    var: &'static str,
    default: T,
    expected: &'static str,
) -> Result<T, ConfigError> {
    match value {
        None => Ok(default),
        Some(value) => value.trim().parse().map_err(|_| ConfigError {
            var,
            value,
            expected,
        }),
    }
}

fn millis(value: Option<String>, var: &'static str, default: u64) -> Result<Duration, ConfigError> {
    parse(value, var, default, "a whole number of milliseconds").map(Duration::from_millis)
}

fn dirs(value: Option<String>, var: &'static str) -> Result<Vec<PathBuf>, ConfigError> {
    let Some(list) = value else {
        return Ok(Vec::new());
    };
    list.split(',')
        .map(|dir| {
            let dir = dir.trim();
            if dir.starts_with('/') {
                Ok(PathBuf::from(dir))
            } else {
                Err(ConfigError {
                    var,
                    value: list.clone(),
                    expected: "comma-separated absolute directories such as /data,/cache",
                })
            }
        })
        .collect()
}

fn flag(value: Option<String>, var: &'static str) -> Result<bool, ConfigError> {
    let Some(value) = value else {
        return Ok(false);
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(ConfigError {
            var,
            value,
            expected: "1, true, 0 or false",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_lookup(|name| {
            vars.iter()
                .find(|(var, _)| *var == name)
                .map(|(_, value)| value.to_string())
        })
    }

    #[test]
    fn defaults_when_nothing_is_set() {
        let config = config(&[]).unwrap();
        assert_eq!(config.addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(config.version, "dev");
        assert_eq!(config.build, None);
        assert_eq!(config.start_delay, Duration::ZERO);
        assert_eq!(config.latency, Duration::ZERO);
        assert_eq!(config.fail_rate, 0.0);
        assert!(!config.health_fail);
        assert_eq!(config.shutdown_grace, Duration::from_secs(10));
        assert!(config.data_dirs.is_empty());
    }

    #[test]
    fn reads_every_variable() {
        let config = config(&[
            ("BIND_ADDR", "127.0.0.1"),
            ("PORT", "9001"),
            ("APP_VERSION", "v2.1-blue"),
            ("APP_BUILD", "build-2"),
            ("START_DELAY_MS", "1500"),
            ("LATENCY_MS", " 20 "),
            ("FAIL_RATE", "0.25"),
            ("HEALTH_FAIL", "TRUE"),
            ("SHUTDOWN_GRACE_MS", "250"),
            ("DATA_DIRS", "/data, /cache"),
        ])
        .unwrap();
        assert_eq!(config.addr, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(config.version, "v2.1-blue");
        assert_eq!(config.build.as_deref(), Some("build-2"));
        assert_eq!(config.start_delay, Duration::from_millis(1500));
        assert_eq!(config.latency, Duration::from_millis(20));
        assert_eq!(config.fail_rate, 0.25);
        assert!(config.health_fail);
        assert_eq!(config.shutdown_grace, Duration::from_millis(250));
        assert_eq!(
            config.data_dirs,
            [PathBuf::from("/data"), PathBuf::from("/cache")]
        );
    }

    #[test]
    fn empty_value_counts_as_unset() {
        let config = config(&[("PORT", ""), ("HEALTH_FAIL", " ")]).unwrap();
        assert_eq!(config.addr.port(), 8080);
        assert!(!config.health_fail);
    }

    #[test]
    fn ipv6_bind_address() {
        let config = config(&[("BIND_ADDR", "::1"), ("PORT", "0")]).unwrap();
        assert_eq!(config.addr, "[::1]:0".parse().unwrap());
    }

    #[test]
    fn invalid_values_name_the_variable() {
        let cases = [
            ("PORT", "70000"),
            ("PORT", "http"),
            ("BIND_ADDR", "localhost"),
            ("APP_VERSION", "has space"),
            ("APP_VERSION", "quote\"d"),
            ("APP_BUILD", "has space"),
            ("START_DELAY_MS", "-1"),
            ("LATENCY_MS", "2.5"),
            ("FAIL_RATE", "1.5"),
            ("FAIL_RATE", "NaN"),
            ("FAIL_RATE", "half"),
            ("HEALTH_FAIL", "maybe"),
            ("SHUTDOWN_GRACE_MS", "10s"),
            ("DATA_DIRS", "/data,cache"),
            ("DATA_DIRS", "/data,"),
        ];
        for (var, value) in cases {
            let err = config(&[(var, value)]).expect_err(value);
            assert_eq!(err.var, var);
            assert_eq!(err.value, value);
            assert!(err.to_string().starts_with(&format!("invalid {var}=")));
        }
    }

    #[test]
    fn version_length_is_bounded() {
        assert!(config(&[("APP_VERSION", &"v".repeat(128))]).is_ok());
        assert!(config(&[("APP_VERSION", &"v".repeat(129))]).is_err());
    }

    #[test]
    fn unhealthy_versions_targets_only_listed_versions() {
        let listed = config(&[("APP_VERSION", "v2"), ("UNHEALTHY_VERSIONS", "v3, v2")]).unwrap();
        assert!(listed.health_fail);
        let other = config(&[("APP_VERSION", "v1"), ("UNHEALTHY_VERSIONS", "v3,v2")]).unwrap();
        assert!(!other.health_fail);
    }

    #[test]
    fn failing_versions_limits_the_fail_rate_to_listed_versions() {
        let bad = config(&[
            ("APP_VERSION", "v2"),
            ("FAIL_RATE", "0.3"),
            ("FAILING_VERSIONS", "v2"),
        ])
        .unwrap();
        assert_eq!(bad.fail_rate, 0.3);
        let good = config(&[
            ("APP_VERSION", "v1"),
            ("FAIL_RATE", "0.3"),
            ("FAILING_VERSIONS", "v2"),
        ])
        .unwrap();
        assert_eq!(good.fail_rate, 0.0);
        let all = config(&[("APP_VERSION", "v1"), ("FAIL_RATE", "0.3")]).unwrap();
        assert_eq!(all.fail_rate, 0.3);
    }
}
