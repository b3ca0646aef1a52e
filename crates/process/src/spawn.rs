//! Launching one replica: [`spawn`] runs an argument vector (never a shell string) in its own
//! process group with its output appended to the instance's log, and returns a [`Spawned`];
//! [`free_port`] and [`port_is_free`] pick and check its 127.0.0.1 port.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::Stdio;

use nix::errno::Errno;

use crate::proc_table::ProcStat;

/// A process just started, named so that a reused pid cannot be confused with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Spawned {
    pub pid: u32,
    pub start_time: u64,
}

/// Starts `argv` with `env` added to the inherited environment, in `workdir` (else ours).
/// The child handle is dropped:
/// the replica outlives this process (the CLI exits, the service keeps running), and tokio
/// reaps dropped children in the background.
pub(crate) fn spawn(
    argv: &[String],
    env: &BTreeMap<String, String>,
    workdir: Option<&Path>,
    log: &Path,
) -> Result<Spawned, String> {
    let (program, args) = argv.split_first().ok_or("the command is empty")?;
    let open_err = |e: io::Error| format!("opening {}: {}", log.display(), io_message(&e));
    let stdout = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(open_err)?;
    let stderr = stdout.try_clone().map_err(open_err)?;
    let mut command = tokio::process::Command::new(program);
    if let Some(dir) = workdir {
        command.current_dir(dir);
    }
    let child = command
        .args(args)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .map_err(|e| match workdir {
            Some(dir) => format!("{program} in {}: {}", dir.display(), io_message(&e)),
            None => format!("{program}: {}", io_message(&e)),
        })?;
    // Not yet reaped while we hold `child`, so its /proc entry is there even if it has exited.
    let pid = child
        .id()
        .ok_or_else(|| format!("{program}: exited before its pid was read"))?;
    let stat = ProcStat::read(pid).ok_or_else(|| format!("{program}: no /proc/{pid}/stat"))?;
    drop(child);
    Ok(Spawned {
        pid,
        start_time: stat.start_time,
    })
}

/// A port on 127.0.0.1 nothing listens on now. Another process may take it before the replica
/// binds it; the health check would then fail the deploy rather than route to a stranger.
pub(crate) fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Whether 127.0.0.1:`port` can be bound now. std sets SO_REUSEADDR, so a connection of a
/// stopped replica lingering in TIME_WAIT does not count as taking it.
pub(crate) fn port_is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// `No such file or directory`, without the `(os error 2)` the std formatting appends.
pub(crate) fn io_message(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => Errno::from_raw(code).desc().to_owned(),
        None => e.to_string(),
    }
}
