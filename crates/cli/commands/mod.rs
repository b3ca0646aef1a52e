//! One module per subcommand; [`run`] dispatches. [`json`] and [`json_list`] print the one
//! JSON document of `--output json`, with its `"schema"`.

pub mod adopt;
mod completions;
mod control;
pub mod demo;
mod deploy;
mod history;
pub mod init;
mod logs;
mod man;
mod plan;
pub mod proxy;
mod prune;
mod remote;
mod remove;
pub mod serve;
mod status;
mod validate;

use std::sync::atomic::{AtomicBool, Ordering};

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
            } => remote::deploy(remote, cli, service, version, strategy.as_deref()).await,
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
        Command::Pause { service } => control::run(cli, service, Control::Pause),
        Command::Serve(args) => serve::run(cli, args).await,
        Command::Proxy { command } => proxy::run(cli, command).await,
        Command::Status { service } => status::run(cli, service.as_deref()).await,
        Command::History {
            service,
            limit,
            show,
        } => history::run(cli, service.as_deref(), *limit, *show).await,
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
        Command::Completions { shell } => completions::run(*shell),
        Command::Man => man::run(),
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

/// The version of the shape of every `--output json` document, carried as its `"schema"`.
pub const SCHEMA: u32 = 1;

/// Whether this run printed its JSON document already (an error after it adds none).
static PRINTED: AtomicBool = AtomicBool::new(false);

/// `value` (a struct or a map) with `"schema"` first.
#[derive(Serialize)]
struct Document<'a, T: Serialize> {
    schema: u32,
    #[serde(flatten)]
    body: &'a T,
}

/// `value` under `key`, with `"schema"` first: `{"schema": 1, "services": [...]}`.
struct Keyed<'a, T: Serialize + ?Sized>(&'a str, &'a T);

impl<T: Serialize + ?Sized> Serialize for Keyed<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry("schema", &SCHEMA)?;
        map.serialize_entry(self.0, self.1)?;
        map.end()
    }
}

/// Prints `value` as one JSON object with `"schema"` on stdout when `--output json`;
/// returns whether it did. A struct or map gets `"schema"` first, unless it carries its own;
/// anything else is put under `"items"` (a list is better given a name with [`json_list`]).
fn json<T: Serialize>(cli: &Cli, value: &T) -> bool {
    if cli.output != Output::Json {
        return false;
    }
    match serde_json::to_value(value).expect("serializable") {
        serde_json::Value::Object(map) if map.contains_key("schema") => print_json(value),
        serde_json::Value::Object(_) => print_json(&Document {
            schema: SCHEMA,
            body: value,
        }),
        _ => print_json(&Keyed("items", value)),
    }
}

/// [`json`] for a list: one object holding `items` under `key`.
fn json_list<T: Serialize>(cli: &Cli, key: &str, items: &[T]) -> bool {
    cli.output == Output::Json && print_json(&Keyed(key, items))
}

fn print_json<T: Serialize>(document: &T) -> bool {
    println!(
        "{}",
        serde_json::to_string_pretty(document).expect("serializable")
    );
    PRINTED.store(true, Ordering::SeqCst);
    true
}

/// The JSON document of a failed command, unless it printed its own already:
/// `{"schema": 1, "error": {"code": 3, "message": "..."}}`.
pub fn error_json(e: &AppError) -> Option<String> {
    if PRINTED.load(Ordering::SeqCst) {
        return None;
    }
    #[derive(Serialize)]
    struct Failed<'a> {
        code: i32,
        message: &'a str,
    }
    let error = Failed {
        code: e.code,
        message: &e.message,
    };
    let document = Keyed("error", &error);
    Some(serde_json::to_string_pretty(&document).expect("serializable"))
}

/// Writes generated output (a completion script, a man page) to stdout.
fn write_stdout(bytes: &[u8]) -> Result<(), AppError> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map_err(|e| AppError::environment(format!("writing to stdout: {e}")))
}

/// `2026-11-24T22:40:01Z` from milliseconds since the epoch.
fn timestamp(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}
