//! Deploys and rollbacks run detached inside serve: [`start`] runs one on serve's own tokio
//! runtime (on the blocking pool: a deploy holds a SQLite connection, which is not `Sync`)
//! and answers as soon as the engine names the deployment (`Event::Begin`, or
//! `Event::Resume` when it first finishes an interrupted one), or with the error that
//! stopped it before (the lock held: 409). [`Runs`] keeps what each deployment run here
//! said ([`RunLog`]: every event so far and a broadcast of the next ones), which
//! `events.rs` streams.
//!
//! Stopping serve interrupts the runs still going at their next await, as a killed CLI
//! deploy is interrupted: the journal has every step before it was acted on, and the next
//! deploy or rollback settles it.
//!
//! A deploy here is the CLI's: fresh live clients from the same config (secrets read now,
//! the runtime checked), the managed nginx started if down, the same [`Deployer`] and so the
//! same lock in the store.
//!
//! [`Deployer`]: switchyard_engine::deploy::Deployer

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use axum::response::Response;
use switchyard_engine::config::StrategyKind;
use switchyard_engine::deploy::{DeployError, DeployReport};
use switchyard_engine::{DeploymentId, Event, Observer, Version};
use tokio::sync::{broadcast, oneshot};

use super::{error, ok};
use crate::evidence::Recorder;
use crate::live::Live;
use crate::notify::{Notifier, Trigger, FLUSH_WITHIN};
use crate::serve::Daemon;
use crate::AppError;

/// How many deployments' event logs serve keeps; older ones are replayed from the journal.
const KEPT: usize = 64;
/// Events a slow stream may fall behind by before it is told it lagged.
const BROADCAST: usize = 1024;

/// What an API call asked for.
#[derive(Debug, Clone)]
pub enum Action {
    Deploy {
        version: Version,
        strategy: Option<StrategyKind>,
    },
    Rollback,
}

/// One item of a deployment's log: an engine event, or the end of the run.
#[derive(Debug, Clone)]
pub enum Item {
    Event(Event),
    /// The run is over: `code` is the exit code the CLI would have given (0 done, 1 failed
    /// and rolled back, 2 refused, 3 environment), `error` why it stopped if not 0.
    End {
        code: i32,
        error: Option<String>,
    },
}

/// What one deployment run in this serve said.
pub struct RunLog {
    items: Mutex<Vec<Item>>,
    tx: broadcast::Sender<Item>,
}

impl RunLog {
    fn new() -> RunLog {
        RunLog {
            items: Mutex::new(Vec::new()),
            tx: broadcast::channel(BROADCAST).0,
        }
    }

    fn push(&self, item: Item) {
        let mut items = self.items.lock().expect("run log lock");
        if matches!(items.last(), Some(Item::End { .. })) {
            return;
        }
        items.push(item.clone());
        // Under the lock: a subscriber sees each item once, in the replay or live.
        let _ = self.tx.send(item);
    }

    /// Everything said so far and a receiver of what comes next, with no gap between them.
    pub fn subscribe(&self) -> (Vec<Item>, broadcast::Receiver<Item>) {
        let items = self.items.lock().expect("run log lock");
        (items.clone(), self.tx.subscribe())
    }
}

#[derive(Default)]
pub struct Runs {
    logs: Mutex<BTreeMap<DeploymentId, Arc<RunLog>>>,
}

impl Runs {
    pub fn get(&self, id: DeploymentId) -> Option<Arc<RunLog>> {
        self.logs.lock().expect("runs lock").get(&id).cloned()
    }

    fn open(&self, id: DeploymentId) -> Arc<RunLog> {
        let mut logs = self.logs.lock().expect("runs lock");
        let log = Arc::clone(logs.entry(id).or_insert_with(|| Arc::new(RunLog::new())));
        while logs.len() > KEPT {
            logs.pop_first();
        }
        log
    }
}

/// The observer of one detached run: fans events out to the deployment they belong to and
/// names the first deployment to the waiting request.
struct Fanout<'r> {
    runs: &'r Runs,
    current: Mutex<Option<Arc<RunLog>>>,
    named: Mutex<Option<oneshot::Sender<DeploymentId>>>,
}

impl Fanout<'_> {
    fn end(&self, stopped: Option<&Stopped>) {
        if let Some(log) = self.current.lock().expect("fanout lock").take() {
            log.push(Item::End {
                code: stopped.map_or(0, Stopped::code),
                error: stopped.map(Stopped::message),
            });
        }
    }
}

impl Observer for Fanout<'_> {
    fn event(&self, event: &Event) {
        if let Event::Begin { deployment, .. } | Event::Resume { deployment, .. } = event {
            let mut current = self.current.lock().expect("fanout lock");
            // A resumed deployment settled, then a new one began: the first one's log ends.
            if let Some(previous) = current.take() {
                previous.push(Item::End {
                    code: 0,
                    error: None,
                });
            }
            *current = Some(self.runs.open(*deployment));
            if let Some(named) = self.named.lock().expect("fanout lock").take() {
                let _ = named.send(*deployment);
            }
        }
        if let Some(log) = &*self.current.lock().expect("fanout lock") {
            log.push(Item::Event(event.clone()));
        }
    }
}

/// Why a run stopped.
enum Stopped {
    Deploy(DeployError),
    App(AppError),
}

impl Stopped {
    fn message(&self) -> String {
        match self {
            Stopped::Deploy(e) => e.to_string(),
            Stopped::App(e) => e.message.clone(),
        }
    }

    /// The answer when it stopped before a deployment was named: 409 while another deploy
    /// holds the lock, 400 for what the caller can fix, 503 when nginx, the runtime or the
    /// store failed.
    fn code(&self) -> i32 {
        match self {
            Stopped::Deploy(e) => e.exit_code(),
            Stopped::App(e) => e.code,
        }
    }

    fn response(&self) -> Response {
        let status = match (self, self.code()) {
            (Stopped::Deploy(DeployError::Locked { .. }), _) => StatusCode::CONFLICT,
            (_, 2) => StatusCode::BAD_REQUEST,
            (_, 3) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        error(status, &self.message())
    }
}

/// Starts `action` on `service` detached and answers 202 `{"deployment": id}` once the
/// engine names it, or the error that stopped it first.
pub async fn start(daemon: Arc<Daemon>, service: String, action: Action) -> Response {
    let (named, name) = oneshot::channel();
    let handle = tokio::runtime::Handle::current();
    let what = match &action {
        Action::Deploy { version, .. } => format!("deploy of {service} {version}"),
        Action::Rollback => format!("rollback of {service}"),
    };
    let mut stopping = daemon.api.stopping.subscribe();
    let run = tokio::task::spawn_blocking(move || {
        let fanout = Fanout {
            runs: &daemon.api.runs,
            current: Mutex::new(None),
            named: Mutex::new(Some(named)),
        };
        let result = handle.block_on(async {
            tokio::select! {
                result = run(&daemon, &service, action, &fanout) => result,
                _ = stopping.wait_for(|stop| *stop) => Err(Stopped::App(AppError::environment(
                    "serve stopped: the deployment was interrupted; the next deploy or rollback settles it",
                ))),
            }
        });
        drop(stopping);
        fanout.end(result.as_ref().err());
        result
    });
    if let Ok(id) = name.await {
        // The run goes on without this request.
        tokio::spawn(async move {
            match run.await {
                Ok(Ok(report)) => tracing::info!(
                    "API {what}: deployment #{} done in {} ms",
                    report.deployment,
                    report.total_ms
                ),
                Ok(Err(e)) => tracing::warn!("API {what}: {}", e.message()),
                Err(e) => tracing::warn!("API {what}: the task failed: {e}"),
            }
        });
        return ok(
            StatusCode::ACCEPTED,
            &serde_json::json!({ "deployment": id }),
        );
    }
    match run.await {
        Ok(Ok(report)) => ok(
            StatusCode::OK,
            &serde_json::json!({ "deployment": report.deployment }),
        ),
        Ok(Err(stopped)) => stopped.response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("the {what} task failed: {e}"),
        ),
    }
}

async fn run(
    daemon: &Daemon,
    service: &str,
    action: Action,
    observer: &dyn Observer,
) -> Result<DeployReport, Stopped> {
    let live = Live::open(daemon.config.clone())
        .await
        .map_err(Stopped::App)?;
    let spec = live.spec(service).map_err(Stopped::App)?;
    live.ensure_nginx().await.map_err(Stopped::App)?;
    // The same wrappers as a CLI deploy: notifications, and the evidence and disruption
    // kept for `history` and `deployments/{id}`.
    let trigger = match action {
        Action::Rollback => Trigger::Rollback,
        Action::Deploy { .. } => Trigger::Deploy,
    };
    let notifier = Notifier::new(&live.config.notify, observer, service, trigger);
    let recorder = Recorder::new(&live, &notifier);
    let deployer = recorder.deployer();
    let result = match action {
        Action::Rollback => deployer.rollback(spec).await,
        Action::Deploy { version, strategy } => {
            let kind = strategy.unwrap_or(spec.strategy);
            let metrics = live.deploy_metrics(spec, kind).map_err(Stopped::App)?;
            deployer.run(spec, &version, kind, &metrics).await
        }
    };
    let kept = recorder.keep(spec, &result).await;
    for warning in &kept.warnings {
        tracing::warn!("API {service}: evidence: {warning}");
    }
    let error = result.as_ref().err().map(|e| e.to_string());
    notifier.finish(error.as_deref(), FLUSH_WITHIN).await;
    result.map_err(Stopped::Deploy)
}
