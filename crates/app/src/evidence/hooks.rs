//! The hooks a deployment ran, read back from its journal: [`ran`] pairs each `hook`
//! intent with its `hook_ran` into a [`HookEvidence`] (point, outcome, summary, the tail of
//! what it printed or answered). Nothing is stored twice: the journal already holds it, with
//! secret values replaced when it was written ([`crate::hooks::HookRunner::redacting`]).

use serde::{Deserialize, Serialize};
use switchyard_engine::{JournalEntry, Step};

/// One hook of a deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HookEvidence {
    /// `pre_deploy`, `pre_traffic`, `post_deploy` or `on_rollback`.
    pub hook: String,
    /// When it began (ms since the epoch).
    pub at_ms: i64,
    /// How long it ran; None for one that never finished (switchyard stopped meanwhile).
    pub took_ms: Option<i64>,
    pub ok: bool,
    /// `exit 0`, `HTTP 500`, `timed out after 30s`, ...
    pub summary: String,
    /// The tail of what it printed (a command) or answered (a webhook).
    pub output: String,
}

/// Every hook of `journal`, in the order they ran.
pub fn ran(journal: &[JournalEntry]) -> Vec<HookEvidence> {
    let mut out = Vec::new();
    // A `hook` intent waiting for its `hook_ran`: (point, at_ms).
    let mut running: Option<(String, i64)> = None;
    for entry in journal {
        match &entry.step {
            Step::Hook { hook } => {
                out.extend(running.take().map(unfinished));
                running = Some((hook.as_str().to_owned(), entry.at_ms));
            }
            Step::HookRan {
                hook,
                ok,
                summary,
                output,
            } => {
                let point = hook.as_str().to_owned();
                let began = running.take_if(|(p, _)| *p == point).map(|(_, at)| at);
                out.extend(running.take().map(unfinished));
                out.push(HookEvidence {
                    hook: point,
                    at_ms: began.unwrap_or(entry.at_ms),
                    took_ms: began.map(|at| entry.at_ms - at),
                    ok: *ok,
                    summary: summary.clone(),
                    output: output.clone(),
                });
            }
            _ => {}
        }
    }
    out.extend(running.map(unfinished));
    out
}

fn unfinished((hook, at_ms): (String, i64)) -> HookEvidence {
    HookEvidence {
        hook,
        at_ms,
        took_ms: None,
        ok: false,
        summary: "did not finish: switchyard stopped while it ran".to_owned(),
        output: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_engine::HookPoint;

    fn entry(seq: i64, at_ms: i64, step: Step) -> JournalEntry {
        JournalEntry { seq, at_ms, step }
    }

    fn hook_ran(hook: HookPoint, ok: bool, summary: &str, output: &str) -> Step {
        Step::HookRan {
            hook,
            ok,
            summary: summary.into(),
            output: output.into(),
        }
    }

    #[test]
    fn each_hook_is_paired_with_how_it_ended_and_one_cut_short_says_so() {
        let journal = [
            entry(
                1,
                1_000,
                Step::Hook {
                    hook: HookPoint::PreDeploy,
                },
            ),
            entry(
                2,
                1_250,
                hook_ran(HookPoint::PreDeploy, true, "exit 0", "migrated\n"),
            ),
            entry(3, 1_300, Step::WaitHealthy),
            entry(
                4,
                2_000,
                Step::Hook {
                    hook: HookPoint::PreTraffic,
                },
            ),
            entry(
                5,
                2_900,
                hook_ran(HookPoint::PreTraffic, false, "exit 1", "smoke failed\n"),
            ),
            entry(
                6,
                3_000,
                Step::Hook {
                    hook: HookPoint::OnRollback,
                },
            ),
        ];
        let evidence = |hook: &str, at_ms, took_ms, ok, summary: &str, output: &str| HookEvidence {
            hook: hook.into(),
            at_ms,
            took_ms,
            ok,
            summary: summary.into(),
            output: output.into(),
        };
        assert_eq!(
            ran(&journal),
            [
                evidence("pre_deploy", 1_000, Some(250), true, "exit 0", "migrated\n"),
                evidence(
                    "pre_traffic",
                    2_000,
                    Some(900),
                    false,
                    "exit 1",
                    "smoke failed\n"
                ),
                evidence(
                    "on_rollback",
                    3_000,
                    None,
                    false,
                    "did not finish: switchyard stopped while it ran",
                    ""
                ),
            ]
        );
        assert!(ran(&journal[2..3]).is_empty());
    }
}
