//! `switchyard plan`: the steps a deploy would take, its warnings (a writable volume two
//! versions share while both run) and the nginx diff; changes nothing.

use serde::Serialize;
use similar::TextDiff;
use switchyard_app::AppError;
use switchyard_engine::plan::{self, Plan};
use switchyard_engine::{ConfigDiff, Router, Store};

use super::{json, open_lazy, target};
use crate::Cli;

#[derive(Serialize)]
struct PlanOutput {
    #[serde(flatten)]
    plan: Plan,
    nginx: ConfigDiff,
}

pub async fn run(
    cli: &Cli,
    service: &str,
    version: &str,
    strategy: Option<&str>,
) -> Result<(), AppError> {
    let (version, strategy) = target(version, strategy)?;
    let live = open_lazy(cli)?;
    let spec = live.spec(service)?;
    let record = live
        .store
        .service(&spec.name)
        .map_err(|e| AppError::environment(e.to_string()))?;
    let plan = plan::for_strategy(
        spec,
        &record,
        &version,
        strategy.unwrap_or(spec.strategy),
        live.route_by(),
    );
    let diff = live
        .router
        .preview(&plan.upstream)
        .map_err(|e| AppError::environment(e.to_string()))?;
    let out = PlanOutput { plan, nginx: diff };
    if json(cli, &out) {
        return Ok(());
    }
    let from = out.plan.from.as_deref().unwrap_or("nothing");
    println!(
        "plan: {} {from} -> {} ({}, {} slot)",
        out.plan.service,
        out.plan.to,
        out.plan.strategy,
        out.plan.color.as_str()
    );
    for (i, step) in out.plan.steps.iter().enumerate() {
        println!("  {}. {step}", i + 1);
    }
    for warning in &out.plan.warnings {
        println!("warning: {warning}");
    }
    println!(
        "\nnginx ({}; host ports shown as :0 are allocated when replicas start):",
        out.nginx.path
    );
    let diff = TextDiff::from_lines(&out.nginx.old, &out.nginx.new);
    print!(
        "{}",
        diff.unified_diff()
            .header(&out.nginx.path, &format!("{} (planned)", out.nginx.path))
    );
    Ok(())
}
