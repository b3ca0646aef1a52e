//! What a `[[service]]` says about its containers beyond image and port: [`ContainerSpec`]
//! (pull policy, command and entrypoint, user, workdir, memory and CPU limits, labels, log
//! driver, extra hosts, stop signal, restart policy, volumes and networks), checked without
//! IO. Whether a bind path exists is for the second stage (`app::settings`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Serialize;
use toml::Spanned;

use super::checker::Checker;
use super::raw::RawService;
use super::RuntimeChoice;

/// When the runtime pulls a service's image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pull {
    /// Only when the image is not on the host (the default).
    #[default]
    Missing,
    /// Before every deploy, so a re-pushed tag is picked up.
    Always,
    /// Never: the image must be on the host.
    Never,
}

/// Where a volume's data lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeSource {
    /// A host directory or file (absolute path; it must exist).
    Bind(PathBuf),
    /// A Docker named volume, created when missing.
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Volume {
    pub source: VolumeSource,
    /// Absolute path inside the container.
    pub target: String,
    pub read_only: bool,
}

/// A Docker network a replica joins, with names other containers on it reach it by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Network {
    pub name: String,
    pub aliases: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogSpec {
    pub driver: String,
    pub options: BTreeMap<String, String>,
}

/// Docker's restart policy for a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Restart {
    No,
    /// Up to `max` restarts when it exits non-zero (0: no limit).
    OnFailure {
        max: u32,
    },
    Always,
    UnlessStopped,
}

/// How a service's replicas are run, beyond image and port. Empty by default.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ContainerSpec {
    pub pull: Pull,
    /// The container's command (Docker `Cmd`), replacing the image's.
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    /// `name`, `uid` or `uid:gid`.
    pub user: Option<String>,
    pub workdir: Option<String>,
    /// Memory limit in bytes.
    pub memory: Option<i64>,
    /// CPU limit in CPUs (0.5 = half of one).
    pub cpus: Option<f64>,
    pub labels: BTreeMap<String, String>,
    pub log: Option<LogSpec>,
    /// `host:ip` entries added to the container's /etc/hosts.
    pub extra_hosts: Vec<String>,
    pub stop_signal: Option<String>,
    pub restart: Option<Restart>,
    pub volumes: Vec<Volume>,
    pub networks: Vec<Network>,
}

impl ContainerSpec {
    /// The options `runtime` cannot honour, by config field (the process runtime runs a local
    /// program: only its command, env and workdir apply).
    pub fn unsupported_by(&self, runtime: RuntimeChoice) -> Vec<&'static str> {
        if runtime == RuntimeChoice::Docker {
            return Vec::new();
        }
        let set = [
            ("service.pull", self.pull != Pull::Missing),
            ("service.entrypoint", self.entrypoint.is_some()),
            ("service.user", self.user.is_some()),
            ("service.memory", self.memory.is_some()),
            ("service.cpus", self.cpus.is_some()),
            ("service.labels", !self.labels.is_empty()),
            ("service.log", self.log.is_some()),
            ("service.extra_hosts", !self.extra_hosts.is_empty()),
            ("service.stop_signal", self.stop_signal.is_some()),
            ("service.restart", self.restart.is_some()),
            ("service.volumes", !self.volumes.is_empty()),
            ("service.networks", !self.networks.is_empty()),
        ];
        set.into_iter()
            .filter_map(|(field, used)| used.then_some(field))
            .collect()
    }
}

/// Label keys switchyard writes itself; a service's labels may not use them.
const OWN_LABELS: &str = "switchyard.";

impl Checker<'_> {
    pub(super) fn container(
        &mut self,
        raw: &Spanned<RawService>,
        runtime: RuntimeChoice,
    ) -> ContainerSpec {
        let s = raw.get_ref();
        let argv = |field: &str, v: &Spanned<Vec<String>>, c: &mut Checker| {
            c.check(v, field, |argv| {
                if argv.is_empty() || argv.iter().any(String::is_empty) {
                    Err("must be a non-empty list of non-empty strings".to_owned())
                } else {
                    Ok(argv.clone())
                }
            })
        };
        let spec = ContainerSpec {
            pull: s
                .pull
                .as_ref()
                .and_then(|p| {
                    self.check(p, "service.pull", |p| match p.as_str() {
                        "missing" => Ok(Pull::Missing),
                        "always" => Ok(Pull::Always),
                        "never" => Ok(Pull::Never),
                        other => Err(format!(
                            "unknown pull policy {other:?}: use \"missing\", \"always\" or \"never\""
                        )),
                    })
                })
                .unwrap_or_default(),
            // Under the process runtime `command` is the program itself (the source).
            command: match runtime {
                RuntimeChoice::Docker => s
                    .command
                    .as_ref()
                    .and_then(|c| argv("service.command", c, self)),
                RuntimeChoice::Process => None,
            },
            entrypoint: s
                .entrypoint
                .as_ref()
                .and_then(|e| argv("service.entrypoint", e, self)),
            user: s.user.as_ref().and_then(|u| self.check(u, "service.user", |u| check_user(u))),
            workdir: s.workdir.as_ref().and_then(|w| {
                self.check(w, "service.workdir", |w| {
                    absolute(w).map(|()| w.clone())
                })
            }),
            memory: s
                .memory
                .as_ref()
                .and_then(|m| self.check(m, "service.memory", |m| parse_size(m))),
            cpus: s.cpus.as_ref().and_then(|c| {
                self.check(c, "service.cpus", |&c| {
                    if c > 0.0 && c <= 1024.0 {
                        Ok(c)
                    } else {
                        Err(format!("{c} is not a CPU count: use a number above 0, such as 0.5"))
                    }
                })
            }),
            labels: self.labels(s),
            log: s.log.as_ref().and_then(|l| {
                self.check(l, "service.log", |l| {
                    word(&l.driver, "log driver")?;
                    Ok(LogSpec {
                        driver: l.driver.clone(),
                        options: l.options.clone(),
                    })
                })
            }),
            extra_hosts: s
                .extra_hosts
                .iter()
                .filter_map(|h| self.check(h, "service.extra_hosts", |h| check_extra_host(h)))
                .collect(),
            stop_signal: s.stop_signal.as_ref().and_then(|sig| {
                self.check(sig, "service.stop_signal", |sig| {
                    let ok = sig.len() > 3
                        && sig.starts_with("SIG")
                        && sig[3..].bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
                    if ok {
                        Ok(sig.clone())
                    } else {
                        Err(format!("{sig:?} is not a signal name such as \"SIGINT\""))
                    }
                })
            }),
            restart: s
                .restart
                .as_ref()
                .and_then(|r| self.check(r, "service.restart", |r| parse_restart(r))),
            volumes: s
                .volumes
                .iter()
                .filter_map(|v| self.check(v, "service.volumes", |v| parse_volume(v)))
                .collect(),
            networks: s
                .networks
                .iter()
                .filter_map(|n| {
                    self.check(n, "service.networks", |n| {
                        word(&n.name, "network name")?;
                        for alias in &n.aliases {
                            word(alias, "network alias")?;
                        }
                        Ok(Network {
                            name: n.name.clone(),
                            aliases: n.aliases.clone(),
                        })
                    })
                })
                .collect(),
        };
        for field in spec.unsupported_by(runtime) {
            self.push(
                Some(raw.span()),
                field,
                format!(
                    "`{}` needs the docker runtime: a local process has no such option",
                    field.trim_start_matches("service.")
                ),
            );
        }
        spec
    }

    fn labels(&mut self, s: &RawService) -> BTreeMap<String, String> {
        for key in s.labels.keys() {
            self.check(key, "service.labels", |k| {
                if k.starts_with(OWN_LABELS) {
                    return Err(format!(
                        "label {k:?}: keys under {OWN_LABELS:?} are switchyard's own"
                    ));
                }
                let ok = !k.is_empty()
                    && k.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'/')
                    });
                if ok {
                    Ok(())
                } else {
                    Err(format!(
                        "invalid label key {k:?}: use letters, digits, '.', '-', '_', '/'"
                    ))
                }
            });
        }
        s.labels
            .iter()
            .map(|(k, v)| (k.get_ref().clone(), v.clone()))
            .collect()
    }
}

fn absolute(path: &str) -> Result<(), String> {
    if path.starts_with('/') {
        Ok(())
    } else {
        Err(format!("{path:?} is not an absolute path"))
    }
}

/// A Docker name: letters, digits, '_', '.', '-', starting with a letter or digit.
fn word(s: &str, what: &str) -> Result<(), String> {
    let ok = s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid {what} {s:?}: use letters, digits, '_', '.' and '-', starting with a letter or digit"
        ))
    }
}

fn check_user(user: &str) -> Result<String, String> {
    let part = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    };
    let ok = match user.split_once(':') {
        Some((u, g)) => part(u) && part(g),
        None => part(user),
    };
    if ok {
        Ok(user.to_owned())
    } else {
        Err(format!(
            "invalid user {user:?}: use a name, a uid, or uid:gid"
        ))
    }
}

fn check_extra_host(entry: &str) -> Result<String, String> {
    let (host, ip) = entry
        .split_once(':')
        .ok_or_else(|| format!("{entry:?} is not host:ip"))?;
    word(host, "host name")?;
    ip.parse::<IpAddr>()
        .map_err(|_| format!("{ip:?} in {entry:?} is not an IP address"))?;
    Ok(entry.to_owned())
}

/// `"512m"`, `"1g"`, `"64k"` or a byte count; at least 6 MiB (Docker's minimum).
pub fn parse_size(text: &str) -> Result<i64, String> {
    let bytes = parse_bytes(text)?;
    if bytes < 6 << 20 {
        return Err(format!("{text:?} is below Docker's minimum of 6m"));
    }
    Ok(bytes)
}

/// `"512m"`, `"1g"`, `"64k"` or a byte count (binary units).
pub fn parse_bytes(text: &str) -> Result<i64, String> {
    let t = text.trim().to_ascii_lowercase();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t.as_str(), ""),
    };
    let not_a_size =
        || format!("{text:?} is not a size: use a number with k, m or g, such as \"512m\"");
    let scale: i64 = match unit.trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return Err(not_a_size()),
    };
    let n: i64 = digits.parse().map_err(|_| not_a_size())?;
    n.checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))
}

fn parse_restart(text: &str) -> Result<Restart, String> {
    match text {
        "no" => Ok(Restart::No),
        "always" => Ok(Restart::Always),
        "unless-stopped" => Ok(Restart::UnlessStopped),
        "on-failure" => Ok(Restart::OnFailure { max: 0 }),
        other => match other.strip_prefix("on-failure:").map(str::parse::<u32>) {
            Some(Ok(max)) => Ok(Restart::OnFailure { max }),
            _ => Err(format!(
                "unknown restart policy {other:?}: use \"no\", \"on-failure\", \"on-failure:N\", \"always\" or \"unless-stopped\""
            )),
        },
    }
}

/// `"/srv/data:/data"`, `"cache:/cache:ro"`: a bind (absolute source) or a named volume.
fn parse_volume(text: &str) -> Result<Volume, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, mode) = match parts[..] {
        [s, t] => (s, t, None),
        [s, t, m] => (s, t, Some(m)),
        _ => return Err(format!("{text:?} is not source:target or source:target:ro")),
    };
    let read_only = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(m) => return Err(format!("{m:?} in {text:?} is not \"ro\" or \"rw\"")),
    };
    absolute(target).map_err(|e| format!("target {e}"))?;
    let source = if source.starts_with('/') {
        VolumeSource::Bind(PathBuf::from(source))
    } else if source.starts_with('.') || source.contains('/') {
        return Err(format!(
            "bind path {source:?} is relative: write it absolute (a bare name is a named volume)"
        ));
    } else {
        word(source, "volume name")?;
        VolumeSource::Named(source.to_owned())
    };
    Ok(Volume {
        source,
        target: target.to_owned(),
        read_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_read_in_binary_units_and_bounded_below() {
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("7340032"), Ok(7_340_032));
        assert!(parse_size("5m").unwrap_err().contains("minimum"));
        assert!(parse_size("lots").unwrap_err().contains("not a size"));
        assert!(parse_size("12x").is_err());
    }

    #[test]
    fn volumes_are_binds_or_named_and_relative_binds_are_refused() {
        let v = parse_volume("/srv/shop/data:/data").unwrap();
        assert_eq!(v.source, VolumeSource::Bind("/srv/shop/data".into()));
        assert!(!v.read_only);
        let v = parse_volume("shop-cache:/cache:ro").unwrap();
        assert_eq!(v.source, VolumeSource::Named("shop-cache".into()));
        assert!(v.read_only);
        assert!(parse_volume("./data:/data")
            .unwrap_err()
            .contains("relative"));
        assert!(parse_volume("data/x:/data")
            .unwrap_err()
            .contains("relative"));
        assert!(parse_volume("/srv:data").unwrap_err().contains("absolute"));
        assert!(parse_volume("/srv:/data:rx").is_err());
    }

    #[test]
    fn restart_policies_are_dockers() {
        assert_eq!(
            parse_restart("on-failure:3"),
            Ok(Restart::OnFailure { max: 3 })
        );
        assert_eq!(parse_restart("unless-stopped"), Ok(Restart::UnlessStopped));
        assert!(parse_restart("sometimes")
            .unwrap_err()
            .contains("unknown restart"));
    }

    #[test]
    fn extra_hosts_need_a_name_and_an_ip() {
        assert!(check_extra_host("db:10.0.0.5").is_ok());
        assert!(check_extra_host("db").is_err());
        assert!(check_extra_host("db:nowhere").is_err());
    }
}
