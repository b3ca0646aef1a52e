//! The `switchyard` binary: the CLI definition and glue. Each subcommand lives in
//! `commands/<name>.rs` and calls into `switchyard-app`; errors become exit codes
//! (1 deploy failed and traffic stayed on a healthy version, 2 bad input, 3 environment).
//! Under `--output json` a command prints one JSON object carrying `"schema": 1`
//! (`commands::SCHEMA`), a failed one `{"schema": 1, "error": {"code", "message"}}`.

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Zero-downtime deploys of containers behind nginx, on one host"
)]
pub struct Cli {
    /// The config file.
    #[arg(
        long,
        short,
        global = true,
        default_value = "switchyard.toml",
        env = "SWITCHYARD_CONFIG"
    )]
    pub config: PathBuf,
    /// Run the command in the `switchyard serve` at this URL (https://HOST:PORT, or
    /// http:// to a serve on loopback), through its API; `deploy` only for now.
    #[arg(long, global = true)]
    pub remote: Option<String>,
    /// A PEM CA certificate that `--remote https://…` trusts besides the system's roots
    /// (or SSL_CERT_FILE): the CA of a serve with a self-signed certificate.
    #[arg(long, global = true, env = "SWITCHYARD_REMOTE_CA", value_name = "FILE")]
    pub remote_ca: Option<PathBuf>,
    /// The API token for `--remote` (a 0600 file).
    #[arg(long, global = true, env = "SWITCHYARD_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Output for humans or for programs.
    #[arg(long, global = true, value_enum, default_value_t = Output::Human)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Human,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Deploy a version of a service with zero failed requests.
    Deploy {
        service: String,
        #[arg(long)]
        version: String,
        /// Overrides the service's strategy for this deploy.
        #[arg(long)]
        strategy: Option<String>,
    },
    /// Bring back the previous version (kept stopped after the last deploy).
    Rollback { service: String },
    /// Let a running canary go on now: past a pause, or past the rest of its current hold.
    Promote { service: String },
    /// Roll a running canary back now.
    Abort { service: String },
    /// Hold a running canary at its current step (still judged) until promote or abort.
    Pause { service: String },
    /// The long-running daemon: `/metrics` for Prometheus and the HTTP API.
    Serve(commands::serve::ServeArgs),
    /// The managed nginx without `serve`: start, stop, or whether it runs and answers.
    Proxy {
        #[command(subcommand)]
        command: commands::proxy::ProxyCommand,
    },
    /// Active version, colour, instances, ports, health, lock and any interrupted deploy.
    Status { service: Option<String> },
    /// Past deployments, newest first, with the requests each failed at the proxy.
    History {
        service: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// One deployment with its journal and the evidence it left (a failed one's logs,
        /// exit codes, health responses).
        #[arg(long, value_name = "ID")]
        show: Option<i64>,
    },
    /// What a deploy would do, with the nginx diff; changes nothing.
    Plan {
        service: String,
        #[arg(long)]
        version: String,
        /// Plans with this strategy instead of the service's.
        #[arg(long)]
        strategy: Option<String>,
    },
    /// The output of every running replica of a service, each line prefixed with its name.
    Logs {
        service: String,
        /// Keep printing new lines until interrupted.
        #[arg(short, long)]
        follow: bool,
        /// Only lines written in this last stretch, such as "10m" (Docker only).
        #[arg(long)]
        since: Option<String>,
        /// Lines from before now, per replica.
        #[arg(long, default_value_t = 100)]
        tail: usize,
    },
    /// Remove the local images of versions that neither serve nor are kept for rollback.
    Prune { service: Option<String> },
    /// Retire a service: out of nginx, then every replica stopped and removed (retained
    /// ones too); its history is kept. Works after the service left the config.
    Remove { service: String },
    /// Check the config file and report every problem with its line.
    Validate,
    /// Write a commented starter switchyard.toml that validates as written.
    Init(commands::init::InitArgs),
    /// Take a running container switchyard did not start as the live version of a service,
    /// so the next deploy replaces it with zero failed requests.
    Adopt(commands::adopt::AdoptArgs),
    /// v1 up, load running, blue-green to v2, and a summary of every request.
    Demo(commands::demo::DemoArgs),
    /// Print a shell completion script: `switchyard completions bash > /etc/bash_completion.d/switchyard`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `switchyard man > switchyard.1`.
    Man,
}

/// `SWITCHYARD_LOG`, else errors only and undelivered notifications; `serve` also says what
/// it does (nginx restarted, the access log rotated).
fn log_filter(command: &Command) -> tracing_subscriber::EnvFilter {
    let default = match command {
        Command::Serve(_) => "warn,switchyard_app=info,switchyard_nginx=info",
        _ => "error,switchyard_app::notify=warn",
    };
    tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(log_filter(&cli.command))
        .with_writer(std::io::stderr)
        // No colour codes in a journal or a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(commands::run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(document) = (cli.output == Output::Json)
                .then(|| commands::error_json(&e))
                .flatten()
            {
                println!("{document}");
            }
            eprintln!("error: {}", e.message);
            ExitCode::from(e.code as u8)
        }
    }
}
