//! `switchyard serve`: the long-running daemon (`/metrics`, the HTTP API), until SIGINT or
//! SIGTERM.

use switchyard_app::serve::{self, ServeOptions};
use switchyard_app::AppError;
use tokio::signal::unix::{signal, SignalKind};

use super::open_lazy;
use crate::Cli;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Overrides `[serve] listen`. An address off loopback needs `[serve] cert` and `key`
    /// (the API's bearer token must not cross the network in clear).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
}

pub async fn run(cli: &Cli, args: &ServeArgs) -> Result<(), AppError> {
    let live = open_lazy(cli)?;
    let options = ServeOptions::new(args.listen.unwrap_or(live.config.serve_listen));
    // Before serving: a SIGTERM that arrives once /healthz answers must stop it gracefully.
    let signal_error = |e: std::io::Error| AppError::environment(format!("signal handler: {e}"));
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_error)?;
    let server = serve::start_with(live, options).await?;
    eprintln!(
        "switchyard serve: /metrics, /api/status, /api/v1 and /healthz on {}",
        server.url()
    );
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    eprintln!("switchyard serve: stopping");
    server.shutdown().await
}
