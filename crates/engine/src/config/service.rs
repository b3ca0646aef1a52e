//! One `[[service]]` table checked into a [`ServiceSpec`]: its name, listen address, source
//! (image or command), replicas, env, health check and timeouts, with the canary and rolling
//! tables merged over their presets, and its front door (`front.rs`); and the checks across
//! services (unique names, the control address kept free).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::checker::{parse_addr, Checker};
use super::presets::{self, Preset};
use super::raw::{RawHealth, RawService};
use super::{
    parse_duration, HealthSpec, ProxyConfig, RuntimeChoice, ServiceSpec, Source, StrategyKind,
};
use crate::names::{check_env_key, check_http_path, check_image_ref, Name};

impl Checker<'_> {
    pub(super) fn service(
        &mut self,
        raw: &Spanned<RawService>,
        runtime: RuntimeChoice,
    ) -> Option<ServiceSpec> {
        let s = raw.get_ref();
        let name = self.check(&s.name, "service.name", |n| Name::parse(n));
        let listen = self.check(&s.listen, "service.listen", |l| parse_addr(l));
        let strategy = self.strategy(s);
        let preset = presets::preset(strategy.unwrap_or(StrategyKind::BlueGreen));
        let source = self.source(raw, runtime);
        let replicas = self.replicas(s);
        let env = self.env(s);
        let health = self.health(&s.health, &preset);
        let (drain_timeout, stop_timeout) = self.timeouts(s, &preset);
        // Checked before the `?`s below so that their errors are reported with the others.
        // Any service can be deployed as a canary with --strategy canary.
        let canary = self.canary(
            s.canary
                .clone()
                .over(presets::preset(StrategyKind::Canary).canary),
        );
        // Any service can be deployed with --strategy rolling (or in-place).
        let rolling = self.rolling(raw, strategy, replicas);
        let container = self.container(raw, runtime);
        let secret_files = self.secret_files(s);
        let front = self.front(s);
        let hooks = self.hooks(&s.hooks);
        let watch = self.watch(s, &canary);
        Some(ServiceSpec {
            name: name?,
            listen: listen?,
            front,
            source: source?,
            port: s.port.unwrap_or(8080),
            replicas: replicas?,
            strategy: strategy?,
            env,
            health,
            drain_timeout,
            stop_timeout,
            retain: s.retain.unwrap_or(preset.retain),
            canary,
            rolling,
            container,
            env_file: s.env_file.as_ref().map(|f| f.get_ref().into()),
            secret_files,
            secrets: Default::default(),
            hooks,
            watch,
        })
    }

    /// `watch` (none when unset): long enough for at least one check of the judge.
    fn watch(&mut self, s: &RawService, canary: &super::CanarySpec) -> Duration {
        let Some(raw) = &s.watch else {
            return Duration::ZERO;
        };
        let interval = canary.interval;
        self.check(raw, "service.watch", |text| {
            let watch = parse_duration(text)?;
            if !watch.is_zero() && watch < interval {
                return Err(format!(
                    "{text} is shorter than [service.canary] interval ({}): no check would run; make it at least the interval, or 0 for no watch",
                    humantime::format_duration(interval)
                ));
            }
            Ok(watch)
        })
        .unwrap_or_default()
    }

    /// `strategy`, blue-green when unset.
    fn strategy(&mut self, s: &RawService) -> Option<StrategyKind> {
        match &s.strategy {
            None => Some(StrategyKind::BlueGreen),
            Some(k) => self.check(k, "service.strategy", |k| StrategyKind::parse(k)),
        }
    }

    /// `replicas`, 1 when unset.
    fn replicas(&mut self, s: &RawService) -> Option<u16> {
        match &s.replicas {
            None => Some(1),
            Some(r) => self.check(r, "service.replicas", |&r| {
                if (1..=64).contains(&r) {
                    Ok(r)
                } else {
                    Err(format!("{r} is out of range 1-64"))
                }
            }),
        }
    }

    /// `env`, every key checked.
    fn env(&mut self, s: &RawService) -> BTreeMap<String, String> {
        for key in s.env.keys() {
            self.check(key, "service.env", |k| check_env_key(k));
        }
        s.env
            .iter()
            .map(|(k, v)| (k.get_ref().clone(), v.clone()))
            .collect()
    }

    /// `secrets`: each key an environment variable name, each value a file path.
    fn secret_files(&mut self, s: &RawService) -> BTreeMap<String, PathBuf> {
        let mut files = BTreeMap::new();
        for (key, path) in &s.secrets {
            let key_ok = self
                .check(key, "service.secrets", |k| check_env_key(k))
                .is_some();
            let path_ok = self
                .check(path, "service.secrets", |p| {
                    if p.is_empty() {
                        Err(format!("the file of secret {} is empty", key.get_ref()))
                    } else {
                        Ok(())
                    }
                })
                .is_some();
            if key_ok && path_ok {
                files.insert(key.get_ref().clone(), PathBuf::from(path.get_ref()));
            }
        }
        files
    }

    /// `drain.timeout` (the preset's when unset) and `stop_timeout` (10s when unset).
    fn timeouts(&mut self, s: &RawService, preset: &Preset) -> (Duration, Duration) {
        let preset_drain =
            parse_duration(&preset.drain_timeout).expect("preset durations are valid (tested)");
        let drain_timeout = self.duration(&s.drain.timeout, "service.drain.timeout", preset_drain);
        let stop_timeout = self.duration(
            &s.stop_timeout,
            "service.stop_timeout",
            Duration::from_secs(10),
        );
        (drain_timeout, stop_timeout)
    }

    pub(super) fn source(
        &mut self,
        raw: &Spanned<RawService>,
        runtime: RuntimeChoice,
    ) -> Option<Source> {
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

    pub(super) fn health(&mut self, raw: &RawHealth, preset: &Preset) -> HealthSpec {
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

    /// Service names must be unique, and no listen may take the control address (a listen
    /// shared by several services is checked by `check_fronts`).
    pub(super) fn check_unique(
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
