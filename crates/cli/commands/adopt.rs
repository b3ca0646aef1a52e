//! `switchyard adopt SERVICE --container NAME [--version V]`: a running container that
//! switchyard did not start becomes the live version of the service.

use switchyard_app::adopt::adopt;
use switchyard_app::progress::Progress;
use switchyard_app::AppError;

use super::{json, open};
use crate::{Cli, Output};

#[derive(clap::Args)]
pub struct AdoptArgs {
    pub service: String,
    /// The container's name or id.
    #[arg(long)]
    pub container: String,
    /// The version to record it as (default: its image's tag).
    #[arg(long)]
    pub version: Option<String>,
}

pub async fn run(cli: &Cli, args: &AdoptArgs) -> Result<(), AppError> {
    let live = open(cli).await?;
    let progress = Progress::new(cli.output == Output::Human);
    let adopted = adopt(
        &live,
        &args.service,
        &args.container,
        args.version.as_deref(),
        &progress,
    )
    .await?;
    if json(cli, &adopted) {
        return Ok(());
    }
    let r = &adopted.report;
    println!(
        "{} {} is live: container {} ({}) on {}, route change confirmed in {} ms (deployment #{})",
        r.service, r.version, r.instance, adopted.image, r.addr, r.confirm_ms, r.deployment
    );
    for w in &adopted.warnings {
        println!("warning: {w}");
    }
    println!(
        "next: `switchyard deploy {} --version <new>` starts the service's image beside it, moves traffic and stops it (kept for rollback)",
        r.service
    );
    Ok(())
}
