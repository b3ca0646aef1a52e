//! The seams a deploy runs against, wrapped to remember what a failure needs afterwards:
//! [`RecordingRuntime`] keeps the replicas this command started and, before the engine stops
//! or removes one, a [`ReplicaSnapshot`] of it (the tail of its log, how it ended), since a
//! removed container's log is gone; [`EventLog`] passes every event on and keeps each new
//! replica's last health response and the judge's checks. Neither changes what the engine
//! does or sees.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use switchyard_engine::judge::{Measurement, Verdict};
use switchyard_engine::*;

use crate::live::AnyRuntime;

/// Lines of a replica's output kept.
pub const LOG_LINES: usize = 50;

/// A replica as it was just before the engine stopped or removed it (or when the deploy
/// ended, for one left running).
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaSnapshot {
    pub instance: Instance,
    /// `exited`, `running`, `missing`, or Docker's word for its state.
    pub state: String,
    pub exit_code: Option<i64>,
    /// None where the runtime cannot tell (processes).
    pub oom_killed: Option<bool>,
    /// The runtime's own error starting it (Docker), or why it could not be asked.
    pub runtime_error: Option<String>,
    /// Restarts by Docker's restart policy, which clear the exit code of the run before.
    pub restarts: Option<i64>,
    pub log_tail: String,
}

/// [`AnyRuntime`], remembering the replicas started through it and a snapshot of each
/// before its first stop or removal.
pub struct RecordingRuntime<'a> {
    inner: &'a AnyRuntime,
    started: Mutex<Vec<Instance>>,
    snapshots: Mutex<BTreeMap<String, ReplicaSnapshot>>,
    /// The exit code the engine saw when it found one of ours exited: Docker forgets it when
    /// its restart policy starts the container again.
    exits: Mutex<BTreeMap<String, Option<i64>>>,
}

impl<'a> RecordingRuntime<'a> {
    pub fn new(inner: &'a AnyRuntime) -> RecordingRuntime<'a> {
        RecordingRuntime {
            inner,
            started: Mutex::new(Vec::new()),
            snapshots: Mutex::new(BTreeMap::new()),
            exits: Mutex::new(BTreeMap::new()),
        }
    }

    /// The replicas started (or restarted) through this runtime, in order.
    pub fn started(&self) -> Vec<Instance> {
        self.started.lock().expect("recording lock").clone()
    }

    /// Every started replica's snapshot: the one taken before it was stopped or removed,
    /// else one taken now.
    pub async fn snapshots(&self) -> Vec<ReplicaSnapshot> {
        let mut out = Vec::new();
        for instance in self.started() {
            let kept = self
                .snapshots
                .lock()
                .expect("recording lock")
                .get(&instance.id)
                .cloned();
            match kept {
                Some(s) => out.push(s),
                None => out.push(self.snapshot(&instance).await),
            }
        }
        out
    }

    /// Takes `instance`'s snapshot if it is one of ours and has none yet.
    async fn before_ending(&self, instance: &Instance) {
        let ours = self.is_ours(instance);
        let taken = self
            .snapshots
            .lock()
            .expect("recording lock")
            .contains_key(&instance.id);
        if ours && !taken {
            let s = self.snapshot(instance).await;
            self.snapshots
                .lock()
                .expect("recording lock")
                .insert(instance.id.clone(), s);
        }
    }

    /// The runtime's snapshot, with the exit the engine saw if the runtime lost it since.
    async fn snapshot(&self, instance: &Instance) -> ReplicaSnapshot {
        let mut s = snapshot(self.inner, instance).await;
        let seen = self
            .exits
            .lock()
            .expect("recording lock")
            .get(&instance.id)
            .copied();
        if let Some(code) = seen {
            if s.exit_code.is_none() || matches!(s.state.as_str(), "running" | "restarting") {
                s.exit_code = code.or(s.exit_code);
                if s.state == "running" {
                    // Docker's flag is the new run's: the one that exited is not known.
                    s.oom_killed = None;
                }
                s.state = format!("exited (then {})", s.state);
            }
        }
        s
    }

    fn is_ours(&self, instance: &Instance) -> bool {
        self.started
            .lock()
            .expect("recording lock")
            .iter()
            .any(|i| i.id == instance.id)
    }

    fn remember(&self, instance: &Instance) {
        let mut started = self.started.lock().expect("recording lock");
        if !started.iter().any(|i| i.id == instance.id) {
            started.push(instance.clone());
        }
        // A restarted replica gets a fresh snapshot when it ends again.
        self.snapshots
            .lock()
            .expect("recording lock")
            .remove(&instance.id);
        self.exits
            .lock()
            .expect("recording lock")
            .remove(&instance.id);
    }
}

/// What the runtime says of `instance` now: its state, exit code, OOM kill and log tail.
async fn snapshot(runtime: &AnyRuntime, instance: &Instance) -> ReplicaSnapshot {
    let log_tail = runtime.logs(instance, LOG_LINES).await;
    let mut s = ReplicaSnapshot {
        instance: instance.clone(),
        state: "unknown".into(),
        exit_code: None,
        oom_killed: None,
        runtime_error: None,
        restarts: None,
        log_tail,
    };
    match runtime {
        AnyRuntime::Docker(lazy) => match lazy.get().await {
            Ok(docker) => match docker.exit_state(instance).await {
                Ok(Some(exit)) => {
                    s.state = exit.state;
                    s.exit_code = (!exit.running).then_some(exit.exit_code).flatten();
                    s.oom_killed = Some(exit.oom_killed);
                    s.runtime_error = exit.error;
                    s.restarts = Some(exit.restarts);
                }
                Ok(None) => s.state = "missing".into(),
                Err(e) => s.runtime_error = Some(e.to_string()),
            },
            Err(e) => s.runtime_error = Some(e.to_string()),
        },
        AnyRuntime::Process(_) => match runtime.status(instance).await {
            Ok(InstanceStatus::Running { .. }) => s.state = "running".into(),
            Ok(InstanceStatus::Exited { code }) => {
                s.state = "exited".into();
                s.exit_code = code;
            }
            Ok(InstanceStatus::Missing) => s.state = "missing".into(),
            Err(e) => s.runtime_error = Some(e.to_string()),
        },
    }
    s
}

impl Runtime for RecordingRuntime<'_> {
    async fn prepare(&self, spec: &InstanceSpec) -> Result<(), RuntimeError> {
        self.inner.prepare(spec).await
    }
    async fn start(&self, spec: &InstanceSpec) -> Result<Instance, RuntimeError> {
        let instance = self.inner.start(spec).await?;
        self.remember(&instance);
        Ok(instance)
    }
    async fn restart(&self, instance: &Instance) -> Result<Instance, RuntimeError> {
        let instance = self.inner.restart(instance).await?;
        self.remember(&instance);
        Ok(instance)
    }
    async fn status(&self, instance: &Instance) -> Result<InstanceStatus, RuntimeError> {
        let status = self.inner.status(instance).await;
        if let Ok(InstanceStatus::Exited { code }) = &status {
            if self.is_ours(instance) {
                let mut exits = self.exits.lock().expect("recording lock");
                exits.entry(instance.id.clone()).or_insert(*code);
            }
        }
        status
    }
    async fn stop(&self, instance: &Instance, timeout: Duration) -> Result<(), RuntimeError> {
        self.before_ending(instance).await;
        self.inner.stop(instance, timeout).await
    }
    async fn remove(&self, instance: &Instance) -> Result<(), RuntimeError> {
        self.before_ending(instance).await;
        self.inner.remove(instance).await
    }
    async fn logs(&self, instance: &Instance, lines: usize) -> String {
        self.inner.logs(instance, lines).await
    }
    async fn list(&self, service: &Name) -> Result<Vec<Instance>, RuntimeError> {
        self.inner.list(service).await
    }
}

/// A replica's last health check during the deploy, from `Event::Waiting`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSeen {
    pub passes: u32,
    pub needed: u32,
    pub last: String,
}

/// One judgement of a canary step, from `Event::Analysis`.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub weight_bp: u32,
    pub verdict: Verdict,
    pub measurement: Measurement,
}

/// An observer that passes every event to `inner` and keeps what evidence needs.
pub struct EventLog<'a> {
    inner: &'a dyn Observer,
    health: Mutex<BTreeMap<String, HealthSeen>>,
    checks: Mutex<Vec<Check>>,
}

/// The judge's checks kept: a long canary checks every few seconds for an hour.
const CHECKS_KEPT: usize = 50;

impl<'a> EventLog<'a> {
    pub fn new(inner: &'a dyn Observer) -> EventLog<'a> {
        EventLog {
            inner,
            health: Mutex::new(BTreeMap::new()),
            checks: Mutex::new(Vec::new()),
        }
    }

    /// The last health check of the replica named `instance`, if it had one.
    pub fn health(&self, instance: &str) -> Option<HealthSeen> {
        self.health
            .lock()
            .expect("event log lock")
            .get(instance)
            .cloned()
    }

    /// The judge's last checks, oldest first.
    pub fn checks(&self) -> Vec<Check> {
        self.checks.lock().expect("event log lock").clone()
    }
}

impl Observer for EventLog<'_> {
    fn event(&self, event: &Event) {
        match event {
            Event::Waiting {
                instance,
                passes,
                needed,
                last,
            } => {
                let seen = HealthSeen {
                    passes: *passes,
                    needed: *needed,
                    last: last.clone(),
                };
                self.health
                    .lock()
                    .expect("event log lock")
                    .insert(instance.clone(), seen);
            }
            Event::Analysis {
                weight_bp,
                verdict,
                measurement,
            } => {
                let mut checks = self.checks.lock().expect("event log lock");
                if checks.len() == CHECKS_KEPT {
                    checks.remove(0);
                }
                checks.push(Check {
                    weight_bp: *weight_bp,
                    verdict: verdict.clone(),
                    measurement: *measurement,
                });
            }
            _ => {}
        }
        self.inner.event(event);
    }
}
