//! `switchyard init`: a commented starter `switchyard.toml` that validates as written, and
//! with `--system-nginx` the include snippet for the system nginx; then the next steps.

use std::path::PathBuf;

use switchyard_app::init::{self, InitOptions, Proxy};
use switchyard_app::AppError;

use super::json;
use crate::Cli;

#[derive(clap::Args)]
pub struct InitArgs {
    /// The file to write (default: --config, switchyard.toml).
    #[arg(long)]
    pub path: Option<PathBuf>,
    /// Overwrite files that exist.
    #[arg(long)]
    pub force: bool,
    /// Drive the system nginx instead of one switchyard runs itself, and write the snippet
    /// that includes switchyard's files (conf.d/switchyard.conf under --nginx-dir).
    #[arg(long)]
    pub system_nginx: bool,
    /// The system nginx's config directory.
    #[arg(long, default_value = "/etc/nginx", requires = "system_nginx")]
    pub nginx_dir: PathBuf,
}

pub fn run(cli: &Cli, args: &InitArgs) -> Result<(), AppError> {
    let path = args.path.clone().unwrap_or_else(|| cli.config.clone());
    let proxy = match args.system_nginx {
        true => Proxy::System {
            nginx_dir: args.nginx_dir.clone(),
        },
        false => Proxy::Managed,
    };
    let written = init::init(&InitOptions {
        path: path.clone(),
        force: args.force,
        proxy,
    })?;
    if json(cli, &written) {
        return Ok(());
    }
    for dir in &written.dirs {
        println!("created {}", dir.display());
    }
    for file in &written.files {
        println!("wrote {}", file.display());
    }
    let config = path.display();
    println!("next:");
    if args.system_nginx {
        println!("  nginx -t && systemctl reload nginx    # nginx now includes switchyard's files");
    }
    println!("  edit {config}: the service's name, image, port and health path");
    println!("  switchyard --config {config} validate");
    println!("  switchyard --config {config} deploy web --version v1");
    println!("  (or take over a container you started yourself: switchyard --config {config} adopt web --container NAME)");
    Ok(())
}
