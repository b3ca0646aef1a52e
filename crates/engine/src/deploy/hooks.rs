//! A service's deploy hooks (`[service.hooks]`) at their four points, through the [`Hooks`]
//! seam: [`Deployer::pre_deploy`] before any replica starts (a failure finishes the deploy
//! with nothing started), [`Rollout::pre_traffic`] after each batch of new replicas is
//! healthy and before it gets traffic (a failure is a failed move: the batch is taken
//! away), and [`Rollout::after_hook`] for `post_deploy` and `on_rollback`, whose failure is
//! a warning: what they follow is already done.
//!
//! Every hook is journaled before it runs (`hook`) and after (`hook_ran`, with its summary
//! and the tail of its output), and reported to the observer. The fold ignores both: a hook
//! moves no traffic. A deploy resumed forward runs `pre_deploy` first unless its journal
//! shows it passed ([`passed`]), `pre_traffic` on the batches it still starts, and
//! `post_deploy` when done; a rollback, explicit, automatic or a resume's, runs `on_rollback`.

use tokio::time::Instant;

use super::rollout::Rollout;
use super::{DeployError, Deployer};
use crate::config::{ServiceSpec, StrategyKind};
use crate::model::*;
use crate::names::Version;
use crate::seams::*;

impl<R: Runtime, P: Prober, N: Router, S: Store, H: Host> Deployer<'_, R, P, N, S, H> {
    /// Runs the hook `call.hook` of `spec`, if it has one: journaled, run, journaled, told.
    pub(super) async fn run_hook(
        &self,
        spec: &ServiceSpec,
        call: &HookCall,
    ) -> Result<Option<HookRun>, DeployError> {
        let Some(hook) = spec.hooks.at(call.hook) else {
            return Ok(None);
        };
        self.journal(call.deployment, &spec.name, Step::Hook { hook: call.hook })?;
        let started = Instant::now();
        let run = self.hooks.run(hook, call).await;
        let step = Step::HookRan {
            hook: call.hook,
            ok: run.ok,
            summary: run.summary.clone(),
            output: run.output.clone(),
        };
        self.journal(call.deployment, &spec.name, step)?;
        self.observer.event(&Event::Hook {
            hook: call.hook,
            ok: run.ok,
            summary: run.summary.clone(),
            output: run.output.clone(),
            elapsed_ms: started.elapsed().as_millis() as u64,
        });
        Ok(Some(run))
    }

    /// `pre_deploy`, before any replica of deployment `id` starts. A failure journals
    /// `failing` and finishes the deployment as failed: nothing started, traffic untouched.
    pub(super) async fn pre_deploy(
        &self,
        spec: &ServiceSpec,
        id: DeploymentId,
        strategy: StrategyKind,
        old: Option<&Slot>,
        version: &Version,
    ) -> Result<(), DeployError> {
        let call = HookCall {
            hook: HookPoint::PreDeploy,
            service: spec.name.to_string(),
            version: version.to_string(),
            previous: old.map(|s| s.version.to_string()),
            deployment: id,
            strategy: strategy.as_str().to_owned(),
            replicas: vec![],
        };
        let Some(run) = self.run_hook(spec, &call).await? else {
            return Ok(());
        };
        if run.ok {
            return Ok(());
        }
        let failure = hook_failure(HookPoint::PreDeploy, &run);
        let step = Step::Failing {
            cause: failure.cause,
            reason: failure.message.clone(),
        };
        self.journal(id, &spec.name, step)?;
        self.finish(id, Outcome::Failed, &failure.message)?;
        Err(DeployError::Failed {
            deployment: id,
            service: spec.name.clone(),
            stays_on: old.map_or("no version (nothing was live)".to_owned(), |s| {
                s.version.to_string()
            }),
            cause: failure.cause,
            message: format!("{}; no replica was started", failure.message),
        })
    }
}

impl Rollout<'_> {
    /// What a hook at `point` is told: this rollout's service, target, previous version,
    /// deployment and strategy, and `replicas`.
    pub(super) fn hook_call(&self, point: HookPoint, replicas: &[Instance]) -> HookCall {
        HookCall {
            hook: point,
            service: self.spec.name.to_string(),
            version: self.target.to_string(),
            previous: self.previous.as_ref().map(|v| v.to_string()),
            deployment: self.id,
            strategy: self.kind.as_str().to_owned(),
            replicas: replicas.iter().map(Instance::addr).collect(),
        }
    }

    /// `pre_traffic` for a deploy's batch of healthy new replicas, `added`, which nginx does
    /// not route to yet. The failure, if it failed (the caller takes the batch away).
    pub(super) async fn pre_traffic<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
        &self,
        d: &Deployer<'_, R, P, N, S, H>,
        added: &[Instance],
    ) -> Result<Option<Failure>, DeployError> {
        if !self.smoke || added.is_empty() {
            return Ok(None);
        }
        let call = self.hook_call(HookPoint::PreTraffic, added);
        Ok(match d.run_hook(self.spec, &call).await? {
            Some(run) if !run.ok => Some(hook_failure(HookPoint::PreTraffic, &run)),
            _ => None,
        })
    }

    /// `post_deploy` or `on_rollback`, once the deployment is finished: told what nginx
    /// serves now. A failure becomes a warning of the deployment.
    pub(super) async fn after_hook<R: Runtime, P: Prober, N: Router, S: Store, H: Host>(
        &self,
        d: &Deployer<'_, R, P, N, S, H>,
        point: HookPoint,
    ) -> Result<(), DeployError> {
        let call = self.hook_call(point, &self.serving);
        if let Some(run) = d.run_hook(self.spec, &call).await? {
            if !run.ok {
                let warning = hook_failure(point, &run).message;
                self.warnings.borrow_mut().push(warning);
            }
        }
        Ok(())
    }
}

/// Whether `journal` records a `pre_deploy` hook that passed.
pub(super) fn passed(journal: &[JournalEntry]) -> bool {
    journal.iter().any(|e| {
        matches!(
            e.step,
            Step::HookRan {
                hook: HookPoint::PreDeploy,
                ok: true,
                ..
            }
        )
    })
}

/// A failed hook as a failure: its summary and the last line it printed.
fn hook_failure(point: HookPoint, run: &HookRun) -> Failure {
    let last = run.output.lines().rev().find(|l| !l.trim().is_empty());
    let message = match last {
        Some(line) => {
            let line: String = line.trim().chars().take(200).collect();
            format!("{} hook failed: {}: {line}", point.as_str(), run.summary)
        }
        None => format!("{} hook failed: {}", point.as_str(), run.summary),
    };
    Failure::new(Cause::Hook, message)
}
