//! The nginx master and its workers, read from `/proc`: [`read_pid`], [`workers`],
//! [`is_worker`], [`alive`].
//!
//! Old workers are "the master's children that existed before the reload"; a reload is
//! drained when none of them is still a live child of the master.

use std::path::Path;

use nix::sys::signal::kill;
use nix::unistd::Pid;

/// The pid in an nginx pid file, if the file exists and holds one.
pub fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether a process with `pid` exists (zombies included).
pub fn alive(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(|p| kill(Pid::from_raw(p), None).is_ok())
}

/// The live (non-zombie) children of `master`.
pub fn workers(master: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&pid| is_worker(master, pid))
        .collect();
    pids.sort_unstable();
    pids
}

/// Whether `pid` is a live child of `master`.
pub fn is_worker(master: u32, pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return false;
    };
    let mut fields = rest.split_whitespace();
    let state = fields.next();
    let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
    state != Some("Z") && ppid == Some(master)
}

/// Whether `pid` is an nginx master process (a pid file can outlive its nginx, and the pid
/// be reused by anything).
pub fn is_nginx_master(pid: u32) -> bool {
    let title = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    alive(pid) && String::from_utf8_lossy(&title).starts_with("nginx: master process")
}

/// Whether `pid` is a worker of `master` that still accepts connections: alive, and not
/// yet retitled "nginx: worker process is shutting down" (set before it closes its
/// listening sockets).
pub fn accepting(master: u32, pid: u32) -> bool {
    if !is_worker(master, pid) {
        return false;
    }
    let title = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    !String::from_utf8_lossy(&title).contains("shutting down")
}

/// The version `nginx -v` printed (`nginx version: nginx/1.22.1`), as numbers.
pub fn nginx_version(text: &str) -> Option<(u32, u32, u32)> {
    let version = text.split("nginx/").nth(1)?.split_whitespace().next()?;
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_versions_are_read_and_ordered() {
        assert_eq!(
            nginx_version("nginx version: nginx/1.22.1\n"),
            Some((1, 22, 1))
        );
        assert_eq!(
            nginx_version("nginx version: nginx/1.27.4 (Ubuntu)"),
            Some((1, 27, 4))
        );
        assert!(nginx_version("nginx version: nginx/1.27.4").unwrap() >= (1, 27, 4));
        assert!(nginx_version("nginx version: nginx/1.27.3").unwrap() < (1, 27, 4));
        assert_eq!(nginx_version("openresty"), None);
    }

    #[test]
    fn children_of_this_process_are_found_and_exited_ones_are_not() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let me = std::process::id();
        assert!(workers(me).contains(&child.id()));
        assert!(is_worker(me, child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!is_worker(me, child.id()));
        assert!(!workers(me).contains(&child.id()));
    }
}
