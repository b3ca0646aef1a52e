//! Human-readable progress for deploys: [`Progress`], an engine `Observer` that prints one
//! line per event (health waits are summarised) and remembers when each phase happened,
//! which the demo and the benchmarks use to measure cutover latency.

use std::sync::Mutex;
use std::time::Instant;

use switchyard_engine::judge::Verdict;
use switchyard_engine::{Event, Observer};

pub struct Progress {
    start: Instant,
    print: bool,
    pub healthy_at: Mutex<Option<Instant>>,
    pub reloaded_at: Mutex<Option<Instant>>,
    pub drained_at: Mutex<Option<Instant>>,
    last_failure: Mutex<String>,
}

impl Progress {
    /// `print = false` records timestamps only.
    pub fn new(print: bool) -> Progress {
        Progress {
            start: Instant::now(),
            print,
            healthy_at: Mutex::new(None),
            reloaded_at: Mutex::new(None),
            drained_at: Mutex::new(None),
            last_failure: Mutex::new(String::new()),
        }
    }

    fn line(&self, text: String) {
        if self.print {
            eprintln!("  {:>6.2}s  {text}", self.start.elapsed().as_secs_f64());
        }
    }
}

/// `525` hundredths of a percent as `5.25`.
pub fn percent(weight_bp: u32) -> String {
    let text = format!("{}.{:02}", weight_bp / 100, weight_bp % 100);
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// The last lines of a hook's output worth printing: the journal keeps the rest.
const HOOK_LINES: usize = 10;

fn hook_output_tail(output: &str) -> Vec<&str> {
    let lines: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(HOOK_LINES)..].to_vec()
}

fn mark(slot: &Mutex<Option<Instant>>) {
    *slot.lock().expect("progress lock") = Some(Instant::now());
}

impl Observer for Progress {
    fn event(&self, event: &Event) {
        match event {
            Event::Begin {
                deployment,
                service,
                from,
                to,
                color,
            } => {
                let from = from.as_deref().unwrap_or("nothing");
                self.line(format!(
                    "deployment #{deployment}: {service} {from} -> {to} ({} slot)",
                    color.as_str()
                ))
            }
            Event::Resume { reason, .. } => self.line(format!("resuming: {reason}")),
            Event::Started {
                instance,
                addr,
                reused,
            } => {
                let how = if *reused { "restarted" } else { "started" };
                self.line(format!("{how} {instance} on {addr}"))
            }
            // A line when a replica passes, and one per new failure text: a 60 s wait polled
            // every 200 ms stays readable.
            Event::Waiting {
                instance,
                passes,
                needed,
                last,
            } => {
                if passes == needed {
                    self.line(format!("{instance} healthy ({needed} passes in a row)"))
                } else if *passes == 0 {
                    let mut seen = self.last_failure.lock().expect("progress lock");
                    if *seen != *last {
                        self.line(format!("{instance} not healthy yet: {last}"));
                        *seen = last.clone();
                    }
                }
            }
            Event::Healthy { waited_ms } => {
                mark(&self.healthy_at);
                self.line(format!("all replicas healthy after {waited_ms} ms"))
            }
            Event::Reloaded {
                generation,
                confirm_ms,
            } => {
                mark(&self.reloaded_at);
                self.line(format!(
                    "traffic moved: generation {generation} live (confirmed in {confirm_ms} ms)"
                ))
            }
            Event::Drained {
                waited_ms,
                lingering,
            } => {
                mark(&self.drained_at);
                match lingering {
                    None => self.line(format!("old traffic drained after {waited_ms} ms")),
                    Some(left) => self.line(format!("{left} after {waited_ms} ms (drain timeout)")),
                }
            }
                        Event::Shifted { weight_bp, generation, confirm_ms } => {
                mark(&self.reloaded_at);
                self.line(format!("canary at {}% (generation {generation}, confirmed in {confirm_ms} ms)", percent(*weight_bp)))
            }
            Event::Analysis { weight_bp, verdict, .. } => {
                let (what, why) = match verdict {
                    Verdict::Pass(r) => ("pass", r),
                    Verdict::NoData(r) => ("no data", r),
                    Verdict::Inconclusive(r) => ("inconclusive", r),
                    Verdict::Fail(r) => ("FAIL", r),
                };
                match *weight_bp {
                    // The post-cutover watch judges the version that has all the traffic.
                    10_000 => self.line(format!("watch: {what}: {why}")),
                    _ => self.line(format!("canary at {}%: {what}: {why}", percent(*weight_bp))),
                }
            }
            Event::Watching { for_ms, kept } => {
                let previous = match kept {
                    0 => "the previous version stopped and kept, as the strategy's bounds require".to_owned(),
                    n => format!("the previous version kept running on {n} replica(s)"),
                };
                self.line(format!(
                    "watching the new version for {:?} after cutover, {previous}: a failed check routes back at once",
                    std::time::Duration::from_millis(*for_ms)
                ))
            }
            Event::Watched { checks, promoted } => match promoted {
                true => self.line(format!("watch ended by `switchyard promote` after {checks} check(s)")),
                false => self.line(format!("watch passed: {checks} check(s) without a failure")),
            },
            Event::Paused { weight_bp } => self.line(format!(
                "canary at {}% paused: run `switchyard promote` to go on or `switchyard abort` to roll back",
                percent(*weight_bp)
            )),
            Event::RolledBack { generation, reason } => {
                self.line(format!("rolled back: all traffic on the stable version (generation {generation}): {reason}"))
            }
            Event::Stopped { instance } => {
                self.line(format!("stopped {instance} (kept for rollback)"))
            }
            Event::Removed { instance } => self.line(format!("removed {instance}")),
            Event::Hook {
                hook,
                ok,
                summary,
                output,
                elapsed_ms,
            } => {
                let how = if *ok { "ran" } else { "FAILED" };
                self.line(format!(
                    "{} hook {how}: {summary} ({elapsed_ms} ms)",
                    hook.as_str()
                ));
                for line in hook_output_tail(output) {
                    self.line(format!("  | {line}"));
                }
            }
            Event::Done {
                deployment,
                outcome,
                message,
            } => self.line(format!(
                "deployment #{deployment} {}: {message}",
                outcome.as_str()
            )),
        }
    }
}
