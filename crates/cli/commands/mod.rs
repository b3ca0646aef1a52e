//! One module per subcommand; [`run`] dispatches.

pub mod adopt;
mod control;
pub mod demo;
mod deploy;
mod history;
pub mod init;
mod logs;
mod plan;
pub mod proxy;
mod prune;
mod remote;
mod remove;
pub mod serve;
mod status;
mod validate;

use serde::Serialize;
use switchyard_app::live::Live;
use switchyard_app::{settings, AppError};
use switchyard_engine::config::StrategyKind;
use switchyard_engine::{Control, Version};

use crate::{Cli, Command, Output};

pub async fn run(cli: &Cli) -> Result<(), AppError> {
    if let Some(remote) = &cli.remote {
        return match &cli.command {
            Command::Deploy {
                service,
                version,
                strategy,
            } => {
                let token = cli.token_file.as_deref();
                remote::deploy(remote, token, service, version, strategy.as_deref()).await
            }
            _ => Err(AppError::input("--remote runs `deploy` only for now")),
        };
    }
    match &cli.command {
        Command::Deploy {
            service,
            version,
            strategy,
        } => deploy::deploy(cli, service, version, strategy.as_deref()).await,
        Command::Rollback { service } => deploy::rollback(cli, service).await,
        Command::Promote { service } => control::run(cli, service, Control::Promote),
        Command::Abort { service } => control::run(cli, service, Control::Abort),
        Command::Serve(args) => serve::run(cli, args).await,
        Command::Proxy { command } => proxy::run(cli, command).await,
        Command::Status { service } => status::run(cli, service.as_deref()).await,
        Command::History { service, limit } => history::run(cli, service.as_deref(), *limit).await,
        Command::Plan {
            service,
            version,
            strategy,
        } => plan::run(cli, service, version, strategy.as_deref()).await,
        Command::Remove { service } => remove::run(cli, service).await,
        Command::Prune { service } => prune::run(cli, service.as_deref()).await,
        Command::Logs {
            service,
            follow,
            since,
            tail,
        } => logs::run(cli, service, *follow, since.as_deref(), *tail).await,
        Command::Validate => validate::run(cli),
        Command::Init(args) => init::run(cli, args),
        Command::Adopt(args) => adopt::run(cli, args).await,
        Command::Demo(args) => demo::run(args).await,
    }
}

/// `--version` and `--strategy` of `deploy` and `plan`, checked.
fn target(
    version: &str,
    strategy: Option<&str>,
) -> Result<(Version, Option<StrategyKind>), AppError> {
    let version =
        Version::parse(version).map_err(|e| AppError::input(format!("--version: {e}")))?;
    let strategy = strategy
        .map(|s| StrategyKind::parse(s).map_err(|e| AppError::input(format!("--strategy: {e}"))))
        .transpose()?;
    Ok((version, strategy))
}

/// Live clients for a command that runs the service: the runtime must answer.
async fn open(cli: &Cli) -> Result<Live, AppError> {
    Live::open(settings::load(&cli.config)?).await
}

/// Live clients for a command that reads (or may do without the runtime): Docker is
/// connected on first use.
fn open_lazy(cli: &Cli) -> Result<Live, AppError> {
    Live::open_lazy(settings::load(&cli.config)?)
}

/// Prints `value` as JSON on stdout when `--output json`; returns whether it did.
fn json<T: Serialize>(cli: &Cli, value: &T) -> bool {
    if cli.output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).expect("serializable")
        );
        return true;
    }
    false
}

/// `2026-11-24T22:40:01Z` from milliseconds since the epoch.
fn timestamp(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}
