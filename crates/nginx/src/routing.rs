//! Routing without reloads: the [`Routing`] an nginx supports ([`detect`]), the per-service
//! [`RouteDoc`] the Lua balancer reads (`templates/routing.lua.tera`), the [`StateFile`] that
//! brings it back after a restart, and the client of the control server's `/routes` and
//! `/inflight` locations.
//!
//! A route change is one document per service, written to the state file and then posted to
//! the control server, which applies it with a single shared-dict `set` (every worker uses
//! it on its next request); it is confirmed by reading the live generation back on a fresh
//! connection. An old peer is drained when its in-flight count, kept by the balancer, is 0.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_engine::{RequestKey, UpstreamSet};

use crate::control;
use crate::stage::{self, Layout};
use crate::templates::LUA_MODULES;

/// How a router moves traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Routing {
    /// A validated, confirmed reload per route change.
    Reload,
    /// Routing documents in nginx's shared memory; a reload only for structural changes.
    Dynamic,
}

impl Routing {
    pub fn as_str(self) -> &'static str {
        match self {
            Routing::Reload => "reload",
            Routing::Dynamic => "dynamic",
        }
    }

    /// What a client that never re-sends a request sees, in a sentence for `status`.
    pub fn client_view(self) -> &'static str {
        match self {
            Routing::Dynamic => "routes change in nginx's shared memory without a reload: no client connection is closed by a deploy",
            Routing::Reload => "every route change reloads nginx, and nginx 1.22 closes idle keep-alive connections then: a client that never re-sends (wrk, POSTs, most SDKs) loses some (277 of about 324,000 wrk requests over 30 reload deploys in BENCHMARKS.md; 0 over 120 dynamic deploys)",
        }
    }
}

/// Whether this nginx can run the dynamic router: `nginx -t` on a staged copy of the tree
/// with the Lua control file in it (the system nginx, whose Debian config loads the module
/// through `modules-enabled/`), or on a scratch config that loads [`LUA_MODULES`] (a managed
/// nginx). The error says why not.
pub fn detect(layout: &Layout, control_file: &str) -> Result<(), String> {
    if layout.prefix.is_none() {
        let files = [(
            crate::router::CONTROL_FILE.to_owned(),
            Some(control_file.to_owned()),
        )];
        return stage::validate_blocking(layout, &files).map_err(|e| e.to_string());
    }
    let dir = tempfile::Builder::new()
        .prefix("switchyard-lua-probe-")
        .tempdir()
        .map_err(|e| format!("creating a probe directory: {e}"))?;
    let modules: String = LUA_MODULES
        .iter()
        .map(|m| format!("load_module {m};\n"))
        .collect();
    let conf = format!(
        "{modules}error_log stderr;\npid nginx.pid;\nevents {{}}\nhttp {{\n{control_file}\n}}\n"
    );
    let main = dir.path().join("nginx.conf");
    std::fs::write(&main, conf).map_err(|e| format!("writing {}: {e}", main.display()))?;
    let output = std::process::Command::new(&layout.nginx)
        .arg("-p")
        .arg(dir.path())
        .args(["-q", "-t", "-c"])
        .arg(&main)
        .output()
        .map_err(|e| format!("running {}: {e}", layout.nginx.display()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}

/// One service's routing, as the balancer reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteDoc {
    pub service: String,
    pub generation: u64,
    pub stable: TrackDoc,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryDoc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackDoc {
    pub peers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryDoc {
    pub peers: Vec<String>,
    pub weight_bp: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<KeyDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<MatchDoc>,
}

/// A request key: `{"kind": "cookie", "name": "uid"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDoc {
    pub kind: String,
    pub name: String,
}

/// Requests whose key has `value` go to the canary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchDoc {
    pub kind: String,
    pub name: String,
    pub value: String,
}

fn key_doc(key: &RequestKey) -> KeyDoc {
    let (kind, name) = match key {
        RequestKey::Header(name) => ("header", name),
        RequestKey::Cookie(name) => ("cookie", name),
    };
    KeyDoc {
        kind: kind.to_owned(),
        name: name.clone(),
    }
}

fn peers(backends: &[SocketAddr]) -> Vec<String> {
    backends.iter().map(SocketAddr::to_string).collect()
}

impl RouteDoc {
    pub fn new(set: &UpstreamSet, generation: u64) -> RouteDoc {
        RouteDoc {
            service: set.service.as_str().to_owned(),
            generation,
            stable: TrackDoc {
                peers: peers(&set.backends),
            },
            canary: set.canary.as_ref().map(|c| CanaryDoc {
                peers: peers(&c.backends),
                weight_bp: c.weight_bp,
                sticky: c.sticky.as_ref().map(key_doc),
                route: c.route.as_ref().map(|r| {
                    let key = key_doc(&r.key);
                    MatchDoc {
                        kind: key.kind,
                        name: key.name,
                        value: r.value.clone(),
                    }
                }),
            }),
        }
    }

    /// Every peer the document sends traffic to.
    pub fn serving(&self) -> Vec<String> {
        let canary = self.canary.iter().flat_map(|c| c.peers.iter());
        self.stable.peers.iter().chain(canary).cloned().collect()
    }

    /// The same routing under another generation.
    pub fn at(&self, generation: u64) -> RouteDoc {
        RouteDoc {
            generation,
            ..self.clone()
        }
    }
}

/// Every service's last routing document, kept beside the config for `init_by_lua`.
pub struct StateFile {
    pub path: PathBuf,
}

impl StateFile {
    pub fn read(&self) -> Result<BTreeMap<String, RouteDoc>, String> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| format!("{} is not a routing state file: {e}", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(format!("reading {}: {e}", self.path.display())),
        }
    }

    /// Puts `state` in place atomically (a temp file renamed over the old one), without
    /// waiting for the disk: [`StateFile::sync`] does, once the change is live.
    pub fn write(&self, state: &BTreeMap<String, RouteDoc>) -> Result<(), String> {
        let io = |e: std::io::Error| format!("writing {}: {e}", self.path.display());
        let text = serde_json::to_string_pretty(state).map_err(|e| e.to_string())? + "\n";
        let tmp = self.tmp_path();
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
    }

    /// Waits until the file and its directory entry are on disk.
    pub fn sync(&self) -> Result<(), String> {
        let io = |e: std::io::Error| format!("syncing {}: {e}", self.path.display());
        std::fs::File::open(&self.path)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        std::fs::File::open(self.path.parent().unwrap_or(Path::new(".")))
            .and_then(|d| d.sync_all())
            .map_err(io)
    }

    fn tmp_path(&self) -> PathBuf {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.path.with_file_name(format!(".{name}.tmp"))
    }
}

const TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    generation: u64,
    #[serde(default)]
    inflight: BTreeMap<String, i64>,
    #[serde(default)]
    error: Option<String>,
}

async fn exchange(
    control: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<Answer, String> {
    let (status, text) = control::request(control, method, path, body, TIMEOUT).await?;
    let answer: Option<Answer> = serde_json::from_str(&text).ok();
    match answer {
        Some(a) if status == 200 => Ok(a),
        Some(Answer { error: Some(e), .. }) => Err(format!("HTTP {status}: {e}")),
        _ => Err(format!(
            "HTTP {status}: {}",
            text.lines().next().unwrap_or_default()
        )),
    }
}

/// Posts `doc` to the control server's `/routes`; the generation it applied.
pub async fn post(control: SocketAddr, doc: &RouteDoc) -> Result<u64, String> {
    let body = serde_json::to_vec(doc).map_err(|e| e.to_string())?;
    let answer = exchange(control, "POST", "/routes", Some(&body))
        .await
        .map_err(|e| {
            format!(
                "the control endpoint {control} refused the routing of {}: {e}",
                doc.service
            )
        })?;
    Ok(answer.generation)
}

/// The routing generation `service` has live (0 when it has none).
pub async fn live_generation(control: SocketAddr, service: &str) -> Result<u64, String> {
    Ok(
        exchange(control, "GET", &format!("/routes?service={service}"), None)
            .await?
            .generation,
    )
}

/// Requests in flight per peer of `service`.
pub async fn inflight(control: SocketAddr, service: &str) -> Result<BTreeMap<String, i64>, String> {
    Ok(exchange(
        control,
        "GET",
        &format!("/inflight?service={service}"),
        None,
    )
    .await?
    .inflight)
}

/// What a route change leaves to drain: the old nginx workers of a structural reload, and
/// every peer of `service` outside `serving` that still has requests in flight.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainToken {
    #[serde(default)]
    pub workers: Vec<u32>,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub serving: Vec<String>,
}
