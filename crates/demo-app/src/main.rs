//! `demo-app`: the small HTTP service that switchyard's demo, end-to-end tests and
//! benchmarks deploy. It reports its version, can start slowly, answer slowly, fail on
//! purpose, and drains in-flight requests on SIGTERM/SIGINT for at most `SHUTDOWN_GRACE_MS`.
//!
//! Built as a fully static binary so it runs in a `FROM scratch` image: no libc to load,
//! no shell (it binds IP literals only). `demo-app healthcheck` is that image's
//! `HEALTHCHECK`, since there is no curl, and `demo-app get URL` prints what a URL answers
//! (a test's client on a Docker network). `demo-app serve` is the server, as with no
//! arguments, so a service can set a `command`. Settings come from environment variables,
//! see [`config::Config`]; routes live in [`server`] and, for websockets, event streams and
//! uploads, [`streams`]; files kept on volumes in [`data`].

mod config;
mod connections;
mod data;
mod healthcheck;
mod in_flight;
mod server;
mod streams;

use std::process::ExitCode;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::config::Config;

/// How long `demo-app healthcheck` waits for an answer.
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => serve(),
        [command] if command == "serve" => serve(),
        [command, url] if command == "get" => get(url),
        // Docker reserves exit code 2 for health checks, so every failure here is 1.
        [command] if command == "healthcheck" => match Config::from_env() {
            Ok(config) => {
                let target = healthcheck::local_target(config.addr);
                match healthcheck::check(target, HEALTHCHECK_TIMEOUT) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(err) => {
                        eprintln!("demo-app healthcheck: {err}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(err) => {
                eprintln!("demo-app healthcheck: {err}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("usage: demo-app [serve | healthcheck | get URL]  (settings come from environment variables)");
            ExitCode::from(2)
        }
    }
}

/// `demo-app get URL`: prints the body and exits 0 on a 200, else says why and exits 1.
fn get(url: &str) -> ExitCode {
    match healthcheck::get_url(url, HEALTHCHECK_TIMEOUT) {
        Ok(response) if response.status == 200 => {
            print!("{}", response.body);
            ExitCode::SUCCESS
        }
        Ok(response) => {
            let body = response.body.trim();
            eprintln!("demo-app get: {url} answered {}: {body}", response.status);
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("demo-app get: {err}");
            ExitCode::FAILURE
        }
    }
}

fn serve() -> ExitCode {
    match Config::from_env() {
        Ok(config) => run(config),
        Err(err) => {
            eprintln!("demo-app: {err}");
            ExitCode::from(2)
        }
    }
}

fn run(config: Config) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("demo-app: cannot start the tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve_until_signalled(config))
}

async fn serve_until_signalled(config: Config) -> ExitCode {
    // Installed before the start delay, so a deploy that gives up early stops us cleanly.
    let mut signals = match ShutdownSignals::install() {
        Ok(signals) => signals,
        Err(err) => {
            eprintln!("demo-app: cannot install signal handlers: {err}");
            return ExitCode::FAILURE;
        }
    };
    let version = config.version.clone();
    tokio::select! {
        () = tokio::time::sleep(config.start_delay) => {}
        signal = signals.recv() => {
            eprintln!("demo-app {version} stopped on {signal} before listening");
            return ExitCode::SUCCESS;
        }
    }
    if let Err(err) = data::write_marker(&config.data_dirs, &version) {
        eprintln!("demo-app: {err}");
        return ExitCode::FAILURE;
    }
    let listener = match TcpListener::bind(config.addr).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("demo-app: cannot listen on {}: {err}", config.addr);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(config.addr);
    eprintln!("demo-app {version} listening on {addr}");
    let in_flight = server::InFlight::default();
    let stopped = server::serve(
        listener,
        &config,
        in_flight,
        async move { signals.recv().await },
    )
    .await;
    if stopped.abandoned == 0 {
        eprintln!(
            "demo-app {version} stopped on {}: in-flight requests drained",
            stopped.signal
        );
    } else {
        eprintln!(
            "demo-app {version} stopped on {}: grace of {} ms ran out with {} requests in flight",
            stopped.signal,
            config.shutdown_grace.as_millis(),
            stopped.abandoned
        );
    }
    ExitCode::SUCCESS
}

/// SIGTERM (Docker stop, switchyard's drain) and SIGINT (Ctrl-C).
struct ShutdownSignals {
    term: Signal,
    int: Signal,
}

impl ShutdownSignals {
    fn install() -> std::io::Result<ShutdownSignals> {
        Ok(ShutdownSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
