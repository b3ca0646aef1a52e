//! `switchyard validate`: every problem in the config, each with its line; exit 2 if any.

use serde::Serialize;
use switchyard_app::{settings, AppError};

use super::json;
use crate::Cli;

#[derive(Serialize)]
struct Valid {
    file: String,
    services: Vec<String>,
    /// How deploys will move traffic, and why (`proxy.routing`, checked with `nginx -t`).
    routing: String,
}

pub fn run(cli: &Cli) -> Result<(), AppError> {
    let config = settings::load(&cli.config)?;
    let valid = Valid {
        file: cli.config.display().to_string(),
        services: config.services.iter().map(|s| s.name.to_string()).collect(),
        routing: switchyard_app::live::router(&config)?.routing_note(),
    };
    if !json(cli, &valid) {
        println!(
            "{}: ok ({} service(s): {})",
            valid.file,
            valid.services.len(),
            valid.services.join(", ")
        );
        println!("routing: {}", valid.routing);
    }
    Ok(())
}
