//! `switchyard prune`: the local images of a service's versions that neither serve nor are
//! kept for rollback (beyond `retain`) are removed.

use serde::Serialize;
use switchyard_app::live::AnyRuntime;
use switchyard_app::AppError;
use switchyard_engine::{ServiceSpec, Source, Store};

use super::{json_list, open_lazy};
use crate::Cli;

#[derive(Serialize)]
struct ServicePrune {
    service: String,
    kept_versions: Vec<String>,
    removed: Vec<String>,
    /// Unwanted tags left in place, and why.
    left: Vec<(String, String)>,
}

pub async fn run(cli: &Cli, service: Option<&str>) -> Result<(), AppError> {
    let live = open_lazy(cli)?;
    let AnyRuntime::Docker(docker) = &live.runtime else {
        return Err(AppError::input(
            "prune removes Docker images: the process runtime has none",
        ));
    };
    let docker = docker
        .get()
        .await
        .map_err(|e| AppError::environment(e.to_string()))?;
    let specs: Vec<&ServiceSpec> = match service {
        Some(name) => vec![live.spec(name)?],
        None => live.config.services.iter().collect(),
    };
    let env = |e: switchyard_engine::StoreError| AppError::environment(e.to_string());
    let mut all = Vec::new();
    for spec in specs {
        let Source::Image(template) = &spec.source else {
            continue;
        };
        let record = live.store.service(&spec.name).map_err(env)?;
        let mut keep: Vec<String> = record
            .active
            .iter()
            .chain(&record.retained)
            .map(|s| s.version.to_string())
            .collect();
        // A deployment under way (or interrupted) still needs its version.
        if let Some((d, _)) = live.store.unfinished(&spec.name).map_err(env)? {
            keep.push(d.to_version.to_string());
        }
        keep.sort();
        keep.dedup();
        let pruned = docker
            .prune_images(template, &keep)
            .await
            .map_err(|e| AppError::environment(e.to_string()))?;
        all.push(ServicePrune {
            service: spec.name.to_string(),
            kept_versions: keep,
            removed: pruned.removed,
            left: pruned.kept,
        });
    }
    if json_list(cli, "services", &all) {
        return Ok(());
    }
    for p in &all {
        println!(
            "{}: kept {} (live and retained); removed {}",
            p.service,
            p.kept_versions.join(", "),
            if p.removed.is_empty() {
                "nothing".to_owned()
            } else {
                p.removed.join(", ")
            }
        );
        for (tag, why) in &p.left {
            println!("  left {tag}: {why}");
        }
    }
    Ok(())
}
