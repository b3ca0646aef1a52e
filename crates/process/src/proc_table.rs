//! What the host's process table says about a replica: [`ProcStat`] (state and start time from
//! `/proc/<pid>/stat`), [`is_ours`] (alive, not a zombie, and the process we spawned) and
//! [`stop_process`], the SIGTERM-then-SIGKILL sequence behind `Runtime::stop`.

use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// How often `stop` looks whether the process has gone.
const POLL: Duration = Duration::from_millis(20);
/// How long a SIGKILLed process may take to disappear before `stop` gives up on it.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// The two fields of `/proc/<pid>/stat` the runtime needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// `R`, `S`, `D`, `T`, `Z`, ...
    pub state: char,
    /// Field 22: clock ticks after boot when the process started. With the pid it names one
    /// process for the life of the host, so a reused pid is never mistaken for ours.
    pub start_time: u64,
}

impl ProcStat {
    pub fn read(pid: u32) -> Option<ProcStat> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        ProcStat::parse(&text)
    }

    /// `comm` (field 2) is in parentheses and may itself hold spaces and `)`, so the fields are
    /// counted from the last `)`.
    pub fn parse(text: &str) -> Option<ProcStat> {
        let rest = &text[text.rfind(')')? + 1..];
        let mut fields = rest.split_whitespace();
        let state = fields.next()?.chars().next()?;
        // `state` is field 3, so field 22 is the 19th after it.
        let start_time = fields.nth(18)?.parse().ok()?;
        Some(ProcStat { state, start_time })
    }
}

/// Whether `pid` is still the process spawned at `start_time` and has not exited. A zombie has
/// exited: only its parent's bookkeeping is left.
pub(crate) fn is_ours(pid: u32, start_time: u64) -> bool {
    ProcStat::read(pid).is_some_and(|s| s.start_time == start_time && !matches!(s.state, 'Z' | 'X'))
}

/// SIGTERM to the process, SIGKILL to its process group after `timeout`. Once the leader has
/// gone, whatever is left of its group (children that would keep the port) is SIGKILLed too, as
/// a container's processes die with its init.
pub(crate) async fn stop_process(
    pid: u32,
    start_time: u64,
    timeout: Duration,
) -> Result<(), String> {
    if !is_ours(pid, start_time) {
        return Ok(());
    }
    signal(pid, false, Signal::SIGTERM)?;
    let deadline = Instant::now() + timeout;
    while is_ours(pid, start_time) && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
    }
    // The group id stays allocated while any member lives, so it still names our processes.
    signal(pid, true, Signal::SIGKILL)?;
    let deadline = Instant::now() + KILL_GRACE;
    while is_ours(pid, start_time) {
        if Instant::now() >= deadline {
            return Err(format!(
                "pid {pid} still running {}s after SIGKILL",
                KILL_GRACE.as_secs()
            ));
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// Sends `sig` to `pid`, or to the process group it leads. A process already gone is fine.
pub(crate) fn signal(pid: u32, group: bool, sig: Signal) -> Result<(), String> {
    let raw = i32::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?;
    let target = Pid::from_raw(raw);
    let sent = if group {
        killpg(target, sig)
    } else {
        kill(target, sig)
    };
    match sent {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(format!("sending {sig} to pid {pid}: {}", e.desc())),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{is_ours, ProcStat};

    #[test]
    fn proc_stat_counts_fields_from_the_last_parenthesis() {
        let stat = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 \
                    8192 100 18446744073709551615";
        assert_eq!(
            ProcStat::parse(stat),
            Some(ProcStat {
                state: 'S',
                start_time: 987654
            })
        );
        assert_eq!(ProcStat::parse("4242 (truncated"), None);
    }

    #[test]
    fn a_zombie_is_not_running() {
        // std's Child is not reaped until waited for, so `true` stays a zombie meanwhile.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let start_time = ProcStat::read(child.id()).unwrap().start_time;
        let deadline = Instant::now() + Duration::from_secs(5);
        while ProcStat::read(child.id()).unwrap().state != 'Z' {
            assert!(Instant::now() < deadline, "`true` never became a zombie");
            std::thread::sleep(Duration::from_millis(20));
        }
        let zombie = is_ours(child.id(), start_time);
        child.wait().unwrap();
        assert!(!zombie, "a zombie was taken for a running process");
    }
}
