//! `switchyard serve`: the long-running daemon (`/metrics`, the HTTP API).

use switchyard_app::AppError;

use crate::Cli;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Overrides `[serve] listen`.
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
}

pub async fn run(_cli: &Cli, _args: &ServeArgs) -> Result<(), AppError> {
    Err(AppError::input("`switchyard serve` is not built yet"))
}
