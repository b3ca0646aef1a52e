//! Rendering nginx files from the tera templates in `templates/`: [`Templates`].
//!
//! The repository's templates are compiled in; a directory given to [`Templates::with_overrides`]
//! replaces any of them by file name. Templates only ever see validated names
//! ([`switchyard_engine::Name`]) and socket addresses, never raw user text.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use switchyard_engine::UpstreamSet;
use tera::{Context, Tera};

pub const MAIN: &str = "nginx.conf.tera";
pub const SERVICE: &str = "service.conf.tera";
pub const CONTROL: &str = "control.conf.tera";

const BUILTIN: [(&str, &str); 3] = [
    (MAIN, include_str!("../../../templates/nginx.conf.tera")),
    (
        SERVICE,
        include_str!("../../../templates/service.conf.tera"),
    ),
    (
        CONTROL,
        include_str!("../../../templates/control.conf.tera"),
    ),
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

    pub fn main_conf(
        &self,
        prefix: &Path,
        worker_shutdown_timeout: Duration,
    ) -> Result<String, String> {
        let mut ctx = Context::new();
        ctx.insert("prefix", &prefix.display().to_string());
        ctx.insert("worker_processes", "auto");
        ctx.insert(
            "worker_shutdown_timeout",
            &nginx_time(worker_shutdown_timeout),
        );
        self.render(MAIN, &ctx)
    }

    pub fn service(&self, set: &UpstreamSet) -> Result<String, String> {
        let mut ctx = Context::new();
        ctx.insert("service", set.service.as_str());
        ctx.insert("listen", &set.listen.to_string());
        let backends: Vec<String> = set.backends.iter().map(SocketAddr::to_string).collect();
        ctx.insert("backends", &backends);
        self.render(SERVICE, &ctx)
    }

    pub fn control(&self, control: SocketAddr, generation: u64) -> Result<String, String> {
        let mut ctx = Context::new();
        ctx.insert("control", &control.to_string());
        ctx.insert("generation", &generation);
        self.render(CONTROL, &ctx)
    }

    fn render(&self, name: &str, ctx: &Context) -> Result<String, String> {
        self.tera
            .render(name, ctx)
            .map_err(|e| format!("rendering {name}: {}", error_chain(&e)))
    }
}

/// nginx's time syntax, in milliseconds so nothing is rounded away.
pub fn nginx_time(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests;
