//! `switchyard logs`: the output of every live replica of a service, each line prefixed with
//! the replica's name: [`stream`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use switchyard_engine::{Instance, InstanceStatus, Name, Runtime};
use tokio::sync::mpsc;

use crate::live::{AnyRuntime, Live};
use crate::AppError;

/// What to show.
#[derive(Debug, Clone, Copy)]
pub struct LogOptions {
    /// Lines from before now, per replica.
    pub tail: usize,
    /// Only what was written in this last stretch (Docker only).
    pub since: Option<Duration>,
    /// Keep printing new lines until interrupted.
    pub follow: bool,
}

/// Prints (through `print`) the output of every running replica of `service`.
pub async fn stream(
    live: &Live,
    service: &Name,
    options: LogOptions,
    print: impl Fn(&str),
) -> Result<(), AppError> {
    let env = |e: switchyard_engine::RuntimeError| AppError::environment(e.to_string());
    let mut running = Vec::new();
    for instance in live.runtime.list(service).await.map_err(env)? {
        if let InstanceStatus::Running { .. } = live.runtime.status(&instance).await.map_err(env)? {
            running.push(instance);
        }
    }
    if running.is_empty() {
        return Err(AppError::input(format!("{service} has no running replica")));
    }
    let since = match (options.since, &live.runtime) {
        (None, _) => None,
        (Some(_), AnyRuntime::Process(_)) => {
            return Err(AppError::input(
                "--since needs the docker runtime: a local process's log carries no timestamps",
            ))
        }
        (Some(d), AnyRuntime::Docker(_)) => Some(
            SystemTime::now()
                .checked_sub(d)
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |t| t.as_secs() as i64),
        ),
    };
    if !options.follow {
        // One replica after the other, each in order.
        for instance in &running {
            let (tx, mut rx) = mpsc::channel(1024);
            let (_, ()) = tokio::join!(lines(live, instance, since, options, tx), async {
                while let Some(line) = rx.recv().await {
                    print(&format!("{} | {line}", instance.name));
                }
            });
        }
        return Ok(());
    }
    let (tx, mut rx) = mpsc::channel::<String>(1024);
    let followers: Vec<_> = running
        .iter()
        .map(|instance| {
            let (own, mut from) = mpsc::channel::<String>(256);
            let tx = tx.clone();
            let name = instance.name.clone();
            let forward = async move {
                while let Some(line) = from.recv().await {
                    if tx.send(format!("{name} | {line}")).await.is_err() {
                        return;
                    }
                }
            };
            async move {
                tokio::join!(lines(live, instance, since, options, own), forward);
            }
        })
        .collect();
    drop(tx);
    let print_all = async {
        while let Some(line) = rx.recv().await {
            print(&line);
        }
    };
    tokio::join!(join_all(followers), print_all);
    Ok(())
}

async fn lines(
    live: &Live,
    instance: &Instance,
    since: Option<i64>,
    options: LogOptions,
    out: mpsc::Sender<String>,
) {
    match &live.runtime {
        AnyRuntime::Docker(docker) => {
            if let Ok(docker) = docker.get().await {
                docker
                    .log_lines(instance, since, options.tail, options.follow, out)
                    .await;
            }
        }
        AnyRuntime::Process(process) => {
            process
                .log_lines(instance, options.tail, options.follow, out)
                .await;
        }
    }
}
