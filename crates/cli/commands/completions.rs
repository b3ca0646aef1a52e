//! `switchyard completions SHELL`: a completion script for bash, zsh, fish, elvish or
//! PowerShell, generated from the CLI definition (clap_complete) and printed to stdout.

use clap::CommandFactory;
use clap_complete::Shell;
use switchyard_app::AppError;

use crate::Cli;

pub fn run(shell: Shell) -> Result<(), AppError> {
    let mut command = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, "switchyard", &mut out);
    super::write_stdout(&out)
}
