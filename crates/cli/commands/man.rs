//! `switchyard man`: the man page (roff), generated from the CLI definition (clap_mangen)
//! and printed to stdout: `switchyard man > switchyard.1`.

use clap::CommandFactory;
use switchyard_app::AppError;

use crate::Cli;

pub fn run() -> Result<(), AppError> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut out)
        .map_err(|e| AppError::environment(format!("rendering the man page: {e}")))?;
    super::write_stdout(&out)
}
