//! Rendering nginx files from the tera templates in `templates/`: [`Templates`].
//!
//! The repository's templates are compiled in; a directory given to [`Templates::with_overrides`]
//! replaces any of them by file name. Templates only ever see validated names
//! ([`switchyard_engine::Name`]) and socket addresses, never raw user text.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use switchyard_engine::error_chain;

use switchyard_engine::config::FrontSpec;
use switchyard_engine::{Name, RequestKey, UpstreamSet};

use crate::sites::Site;
use tera::{Context, Tera};

pub const MAIN: &str = "nginx.conf.tera";
pub const SERVICE: &str = "service.conf.tera";
pub const CONTROL: &str = "control.conf.tera";
pub const ROUTING: &str = "routing.lua.tera";
pub const LOCATIONS: &str = "locations.conf.tera";
pub const SITE: &str = "site.conf.tera";

/// Debian's dynamic modules for Lua in nginx (`libnginx-mod-http-lua` and its NDK dependency).
pub const LUA_MODULES: [&str; 2] = [
    "/usr/lib/nginx/modules/ndk_http_module.so",
    "/usr/lib/nginx/modules/ngx_http_lua_module.so",
];

const BUILTIN: [(&str, &str); 6] = [
    (MAIN, include_str!("../../../templates/nginx.conf.tera")),
    (
        SERVICE,
        include_str!("../../../templates/service.conf.tera"),
    ),
    (
        CONTROL,
        include_str!("../../../templates/control.conf.tera"),
    ),
    (ROUTING, include_str!("../../../templates/routing.lua.tera")),
    (
        LOCATIONS,
        include_str!("../../../templates/locations.conf.tera"),
    ),
    (SITE, include_str!("../../../templates/site.conf.tera")),
];

pub struct Templates {
    tera: Tera,
}

impl Templates {
    pub fn builtin() -> Templates {
        let mut tera = Tera::default();
        tera.add_raw_templates(BUILTIN)
            .expect("built-in templates parse (tested)");
        Templates { tera }
    }

    /// The built-in templates, each replaced by a same-named file in `dir` if there is one.
    pub fn with_overrides(dir: &Path) -> Result<Templates, String> {
        let mut templates = Templates::builtin();
        for (name, _) in BUILTIN {
            let path = dir.join(name);
            if path.exists() {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("reading {}: {e}", path.display()))?;
                templates
                    .tera
                    .add_raw_template(name, &text)
                    .map_err(|e| format!("{}: {}", path.display(), error_chain(&e)))?;
            }
        }
        Ok(templates)
    }

    /// The main config of a managed nginx; with `lua`, it loads [`LUA_MODULES`].
    pub fn main_conf(
        &self,
        prefix: &Path,
        worker_shutdown_timeout: Duration,
        lua: bool,
    ) -> Result<String, String> {
        let mut ctx = Context::new();
        ctx.insert("prefix", &prefix.display().to_string());
        let modules: &[&str] = if lua { &LUA_MODULES } else { &[] };
        ctx.insert("modules", modules);
        ctx.insert("worker_processes", "auto");
        ctx.insert(
            "worker_shutdown_timeout",
            &nginx_time(worker_shutdown_timeout),
        );
        self.render(MAIN, &ctx)
    }

    /// The service file: its upstreams (and, for a canary, how requests are split).
    pub fn service(&self, set: &UpstreamSet, front: &FrontSpec) -> Result<String, String> {
        let addrs =
            |b: &[SocketAddr]| -> Vec<String> { b.iter().map(SocketAddr::to_string).collect() };
        let mut ctx = service_context(&set.service, front);
        ctx.insert("stable", &addrs(&set.backends));
        if let Some(canary) = &set.canary {
            let weight = (canary.weight_bp > 0)
                .then(|| format!("{}.{:02}", canary.weight_bp / 100, canary.weight_bp % 100));
            let split_key = canary
                .sticky
                .as_ref()
                .map_or("$request_id".to_owned(), variable);
            let map_source = canary
                .route
                .as_ref()
                .map_or("$request_id".to_owned(), |r| variable(&r.key));
            let canary = CanaryContext {
                backends: addrs(&canary.backends),
                weight,
                split_key,
                sticky: canary.sticky.is_some(),
                map_source,
                route_value: canary.route.as_ref().map(|r| r.value.clone()),
            };
            ctx.insert("canary", &canary);
        }
        self.render(SERVICE, &ctx)
    }

    /// The service file for routing without reloads: two balancer stubs (stable, canary)
    /// that take their peers from the service's routing document.
    pub fn dynamic_service(&self, service: &Name, front: &FrontSpec) -> Result<String, String> {
        let mut ctx = service_context(service, front);
        ctx.insert("dynamic", &true);
        self.render(SERVICE, &ctx)
    }

    /// The service's locations, included by the server of each host it answers to: every
    /// request logged to `access_log` in the tailer's format and proxied to `upstream`.
    pub fn locations(
        &self,
        service: &Name,
        listen: SocketAddr,
        front: &FrontSpec,
        upstream: Upstream,
        access_log: &Path,
    ) -> Result<String, String> {
        let mut ctx = service_context(service, front);
        let var = service.as_str().replace('-', "_");
        let (dynamic, upstream) = match upstream {
            Upstream::Dynamic => (true, format!("http://sy_{service}_$sy_track")),
            Upstream::Split => (false, format!("http://sy_{service}_$sy_{var}_track")),
            Upstream::Stable => (false, format!("http://sy_{service}_stable")),
        };
        ctx.insert("dynamic", &dynamic);
        ctx.insert("upstream", &upstream);
        ctx.insert("listen", &listen.to_string());
        ctx.insert("access_log", &access_log.display().to_string());
        ctx.insert("path", &front.path);
        // The path holds only letters, digits and `/._-~` (checked): `.` is the one to escape.
        let strip = front.strip_path.then(|| front.path.replace('.', "\\."));
        ctx.insert("strip_prefix", &strip);
        // The prefix the app does not see (an empty header is not sent at all).
        let prefix = if front.strip_path {
            front.path.trim_end_matches('/')
        } else {
            ""
        };
        ctx.insert("forwarded_prefix", prefix);
        ctx.insert("buffering", &front.buffering);
        ctx.insert("max_body", &front.max_body.to_string());
        let t = &front.timeouts;
        ctx.insert(
            "timeouts",
            &BTreeMap::from([
                ("connect", nginx_time(t.connect)),
                ("read", nginx_time(t.read)),
                ("send", nginx_time(t.send)),
            ]),
        );
        self.render(LOCATIONS, &ctx)
    }

    /// One server: a listen and a host name, the services answering there, its TLS.
    /// `http2_directive`: this nginx takes `http2 on;` (1.25.1 and later) rather than the
    /// `http2` parameter of `listen`.
    pub fn site(&self, site: &Site, http2_directive: bool) -> Result<String, String> {
        let mut ctx = Context::from_serialize(site).map_err(|e| error_chain(&e))?;
        ctx.insert("http2_directive", &http2_directive);
        self.render(SITE, &ctx)
    }

    /// The control server, and what the routing needs in `http {}`: for dynamic routing the
    /// shared memory, the Lua code and the control locations; for reload routing on an nginx
    /// that has it, `keepalive_min_timeout`.
    pub fn control(
        &self,
        control: SocketAddr,
        generation: u64,
        routing: ControlRouting<'_>,
    ) -> Result<String, String> {
        let mut ctx = Context::new();
        ctx.insert("control", &control.to_string());
        ctx.insert("generation", &generation);
        ctx.insert("log_format", &crate::tailer::log_format_directive());
        let state_file = match routing {
            ControlRouting::Reload {
                keepalive_min_timeout,
            } => {
                if let Some(t) = keepalive_min_timeout {
                    ctx.insert("keepalive_min_timeout", &nginx_time(t));
                }
                None
            }
            ControlRouting::Dynamic { state_file } => Some(state_file),
        };
        if let Some(state_file) = state_file {
            let state_file = lua_string(state_file)?;
            let mut lua = Context::new();
            lua.insert("state_file", &state_file);
            let routing = RoutingContext {
                lua: self.render(ROUTING, &lua)?,
                state_file,
                routes_size: "8m",
                inflight_size: "1m",
            };
            ctx.insert("routing", &routing);
        }
        self.render(CONTROL, &ctx)
    }

    fn render(&self, name: &str, ctx: &Context) -> Result<String, String> {
        self.tera
            .render(name, ctx)
            .map_err(|e| format!("rendering {name}: {}", error_chain(&e)))
    }
}

/// What a service's locations proxy to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// The track the Lua balancer chose (routing without reloads).
    Dynamic,
    /// The track the canary split chose (reload routing mid-canary).
    Split,
    /// The stable upstream.
    Stable,
}

/// What every template of one service sees: its name, its nginx variable name, its
/// trusted proxies.
fn service_context(service: &Name, front: &FrontSpec) -> Context {
    let mut ctx = Context::new();
    ctx.insert("service", service.as_str());
    // nginx variable names hold no '-'.
    ctx.insert("var", &service.as_str().replace('-', "_"));
    ctx.insert("trusted_proxies", &front.trusted_proxies);
    ctx
}

/// What the control file carries for the routing in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlRouting<'a> {
    /// Reload routing; `keepalive_min_timeout` where nginx has it (1.27.4 and later), so
    /// exiting workers keep idle keep-alive connections that long instead of closing them
    /// under a request.
    Reload {
        keepalive_min_timeout: Option<Duration>,
    },
    /// Dynamic routing, restoring documents from `state_file`.
    Dynamic { state_file: &'a Path },
}

/// What the control template needs for routing without reloads.
#[derive(serde::Serialize)]
struct RoutingContext {
    /// The rendered `routing.lua.tera`.
    lua: String,
    state_file: String,
    routes_size: &'static str,
    inflight_size: &'static str,
}

/// A path as the body of a Lua string literal: refused if it holds a quote, a backslash or a
/// control character, so nothing in it is read as code.
fn lua_string(path: &Path) -> Result<String, String> {
    let text = path.display().to_string();
    if text
        .chars()
        .any(|c| c == '"' || c == '\\' || c.is_control())
    {
        return Err(format!(
            "the routing state file {text:?} holds a quote, backslash or control character"
        ));
    }
    Ok(text)
}

/// What the service template needs to render a canary track.
#[derive(serde::Serialize)]
struct CanaryContext {
    backends: Vec<String>,
    /// `"5.25"`, or None at weight 0 (no split: only matching requests reach the canary).
    weight: Option<String>,
    split_key: String,
    /// Whether `split_key` is a cookie or header (empty for some requests).
    sticky: bool,
    map_source: String,
    route_value: Option<String>,
}

/// The nginx variable holding a request key: `$http_x_user`, `$cookie_uid`.
pub fn variable(key: &RequestKey) -> String {
    match key {
        RequestKey::Header(name) => format!("$http_{}", name.replace('-', "_")),
        RequestKey::Cookie(name) => format!("$cookie_{name}"),
    }
}

/// nginx's time syntax, in milliseconds so nothing is rounded away.
pub fn nginx_time(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

#[cfg(test)]
mod tests;
