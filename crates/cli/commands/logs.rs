//! `switchyard logs`: every running replica's output, each line prefixed with its name.

use switchyard_app::logs::{self, LogOptions};
use switchyard_app::AppError;
use switchyard_engine::config::parse_duration;
use switchyard_engine::Name;

use super::open_lazy;
use crate::Cli;

pub async fn run(
    cli: &Cli,
    service: &str,
    follow: bool,
    since: Option<&str>,
    tail: usize,
) -> Result<(), AppError> {
    let name = Name::parse(service).map_err(|e| AppError::input(format!("service: {e}")))?;
    let since = since
        .map(|s| parse_duration(s).map_err(|e| AppError::input(format!("--since: {e}"))))
        .transpose()?;
    let live = open_lazy(cli)?;
    let options = LogOptions {
        tail,
        since,
        follow,
    };
    logs::stream(&live, &name, options, |line| println!("{line}")).await
}
