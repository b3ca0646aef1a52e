//! The nginx master and its workers, read from `/proc`: [`read_pid`], [`workers`],
//! [`is_worker`], [`alive`], and [`listen_holders`], the nginx processes that hold a
//! listening socket (the orphaned workers of a master that was killed).
//!
//! Old workers are "the master's children that existed before the reload"; a reload is
//! drained when none of them is still a live child of the master.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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

/// Whether `pid` exists and has not exited (a zombie waiting for its parent has).
pub fn running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    state.is_some_and(|s| s != "Z")
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

/// Whether `pid` is an nginx process other than a master whose parent is not a running
/// nginx master: a worker (or cache process) left behind by a master that was killed.
pub fn is_orphaned_worker(pid: u32) -> bool {
    let title = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let title = String::from_utf8_lossy(&title);
    if !title.starts_with("nginx:") || title.starts_with("nginx: master process") {
        return false;
    }
    !parent(pid).is_some_and(|ppid| is_nginx_master(ppid) && running(ppid))
}

/// The parent of `pid`, from `/proc/<pid>/stat`.
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
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

/// The nginx processes (any title starting `nginx:`) that hold a socket listening on `addr`.
/// A master killed with SIGKILL leaves its workers running, reparented, still holding every
/// listening socket, so a new master cannot bind until they are gone. Only processes this
/// user may inspect are seen, which are the only ones it could signal anyway.
pub fn listen_holders(addr: SocketAddr) -> Vec<u32> {
    let inodes = listening_inodes(addr);
    if inodes.is_empty() {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&pid: &u32| {
            let title = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            title.starts_with(b"nginx:") && holds_socket(pid, &inodes)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// The inodes of the TCP sockets in LISTEN state bound to `addr` (or to its port on the
/// unspecified address), from `/proc/net/tcp` and `/proc/net/tcp6`.
fn listening_inodes(addr: SocketAddr) -> Vec<u64> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            let (Some(local), Some(&"0A"), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let Some(bound) = parse_proc_addr(local) else {
                continue;
            };
            let ip_matches = bound.ip() == addr.ip() || bound.ip().is_unspecified();
            if bound.port() == addr.port() && ip_matches {
                out.extend(inode.parse::<u64>().ok().filter(|&i| i != 0));
            }
        }
    }
    out
}

/// `0100007F:1F90` (127.0.0.1:8080) or the 32-digit IPv6 form: each 32-bit word is printed
/// in host byte order, the port in network order.
fn parse_proc_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..ip.len() / 8)
        .map(|i| u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<_>>()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn holds_socket(pid: u32, inodes: &[u64]) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok).any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            let target = target.to_string_lossy();
            target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
                .is_some_and(|inode| inodes.contains(&inode))
        })
    })
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
    fn proc_net_addresses_are_read_in_their_byte_order() {
        assert_eq!(
            parse_proc_addr("0100007F:1F90"),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            parse_proc_addr("00000000000000000000000001000000:0050"),
            Some("[::1]:80".parse().unwrap())
        );
        assert_eq!(parse_proc_addr("zz:1"), None);
    }

    #[test]
    fn a_listening_socket_is_found_by_its_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let inodes = listening_inodes(addr);
        assert_eq!(inodes.len(), 1, "{addr}");
        assert!(holds_socket(std::process::id(), &inodes));
        // This test binary is not nginx: it is not an nginx holder.
        assert!(listen_holders(addr).is_empty());
        drop(listener);
        assert!(listening_inodes(addr).is_empty());
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
