//! The config as written: [`RawConfig`] and its tables ([`RawProxy`], [`RawService`],
//! [`RawHealth`], [`RawDrain`], ...), deserialized from TOML with spans kept for errors and
//! unknown fields refused. The checking in the sibling modules turns them into the model.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::canary::RawCanary;
use super::front::{RawTimeouts, RawTls};
use super::hooks::RawHooks;
use super::notify::RawNotify;
use super::rolling::RawRolling;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) proxy: RawProxy,
    #[serde(default)]
    pub(super) state: RawState,
    #[serde(default)]
    pub(super) runtime: RawRuntime,
    #[serde(default, rename = "service")]
    pub(super) services: Vec<Spanned<RawService>>,
    #[serde(default)]
    pub(super) metrics: RawMetrics,
    #[serde(default)]
    pub(super) serve: RawServe,
    pub(super) registry: Option<Spanned<RawRegistry>>,
    #[serde(default)]
    pub(super) notify: Vec<Spanned<RawNotify>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegistry {
    pub(super) server: String,
    pub(super) username: String,
    pub(super) password_file: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) prometheus: Option<Spanned<String>>,
    pub(super) scrape_interval: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServe {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) token_file: Option<Spanned<String>>,
    pub(super) cert: Option<Spanned<String>>,
    pub(super) key: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxy {
    pub(super) nginx: Option<String>,
    pub(super) prefix: Option<String>,
    pub(super) main_conf: Option<Spanned<String>>,
    pub(super) conf_dir: Option<Spanned<String>>,
    pub(super) pid_file: Option<String>,
    pub(super) access_log: Option<String>,
    pub(super) control: Option<Spanned<String>>,
    pub(super) routing: Option<Spanned<String>>,
    pub(super) access_log_max: Option<Spanned<String>>,
    pub(super) templates: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    pub(super) path: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRuntime {
    pub(super) kind: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) name: Spanned<String>,
    pub(super) listen: Spanned<String>,
    pub(super) image: Option<Spanned<String>>,
    pub(super) command: Option<Spanned<Vec<String>>>,
    pub(super) port: Option<u16>,
    pub(super) replicas: Option<Spanned<u16>>,
    pub(super) strategy: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) env: BTreeMap<Spanned<String>, String>,
    #[serde(default)]
    pub(super) health: RawHealth,
    #[serde(default)]
    pub(super) drain: RawDrain,
    pub(super) stop_timeout: Option<Spanned<String>>,
    pub(super) watch: Option<Spanned<String>>,
    pub(super) retain: Option<usize>,
    #[serde(default)]
    pub(super) canary: RawCanary,
    #[serde(default)]
    pub(super) rolling: RawRolling,
    pub(super) pull: Option<Spanned<String>>,
    pub(super) entrypoint: Option<Spanned<Vec<String>>>,
    pub(super) user: Option<Spanned<String>>,
    pub(super) workdir: Option<Spanned<String>>,
    pub(super) memory: Option<Spanned<String>>,
    pub(super) cpus: Option<Spanned<f64>>,
    #[serde(default)]
    pub(super) labels: BTreeMap<Spanned<String>, String>,
    pub(super) log: Option<Spanned<RawLog>>,
    #[serde(default)]
    pub(super) extra_hosts: Vec<Spanned<String>>,
    pub(super) stop_signal: Option<Spanned<String>>,
    pub(super) restart: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) volumes: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) networks: Vec<Spanned<RawNetwork>>,
    pub(super) env_file: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) secrets: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    pub(super) hosts: Vec<Spanned<String>>,
    pub(super) path: Option<Spanned<String>>,
    pub(super) strip_path: Option<Spanned<bool>>,
    pub(super) tls: Option<Spanned<RawTls>>,
    pub(super) redirect_http: Option<Spanned<String>>,
    pub(super) buffering: Option<bool>,
    pub(super) max_body: Option<Spanned<String>>,
    pub(super) timeouts: Option<Spanned<RawTimeouts>>,
    #[serde(default)]
    pub(super) trusted_proxies: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) hooks: RawHooks,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) driver: String,
    #[serde(default)]
    pub(super) options: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNetwork {
    pub(super) name: String,
    #[serde(default)]
    pub(super) aliases: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) path: Option<Spanned<String>>,
    pub(super) interval: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) healthy_after: Option<Spanned<u32>>,
    pub(super) deadline: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDrain {
    pub(super) timeout: Option<Spanned<String>>,
}
