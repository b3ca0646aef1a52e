//! `[[notify]]` delivery: [`Notifier`], an engine `Observer` that wraps the deploy's own
//! observer, turns its events into [`Notification`]s ([`Tally`], a pure mapping) and posts
//! them to each webhook that chose them, in the background.
//!
//! What an event means:
//! - `Begin` → `started`;
//! - `Done` succeeded → `promoted` first when a canary step had been live, then `succeeded`
//!   (`rolled_back` first for a `switchyard rollback`);
//! - `RolledBack` (a canary routed back) → `rolled_back`; a `Done` failed after traffic had
//!   moved (a rolling batch restored) → `rolled_back` too, once; then `failed`;
//! - a deploy that returned an error without finishing its deployment → `failed`
//!   ([`Notifier::finish`]).
//!
//! Delivery never blocks or fails a deploy: each webhook has one queue, worked in order by a
//! task of its own; an attempt is bounded by the webhook's `timeout`, a failed one is tried
//! again ([`TRIES`] in all, backing off from [`BACKOFF`]) and logged with the URL's host
//! only (a URL may carry a token; the body is never logged). [`Notifier::finish`] waits a
//! bounded time for what is still queued, so a CLI run does not exit before its
//! notifications leave.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use switchyard_engine::config::{NotifyEvent, NotifyFormat, NotifySpec};
use switchyard_engine::{DeploymentId, Event, Observer, Outcome};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Attempts per notification.
pub const TRIES: u32 = 3;
/// The wait after the first failed attempt; doubled after each further one.
pub const BACKOFF: Duration = Duration::from_millis(250);
/// How long [`Notifier::finish`] waits by default for notifications still queued.
pub const FLUSH_WITHIN: Duration = Duration::from_secs(5);

/// What kind of run is observed: a rollback's success is a `rolled_back`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Deploy,
    Rollback,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Deploy => "deploy",
            Trigger::Rollback => "rollback",
        }
    }
}

/// One thing to tell: the JSON body of `format = "json"`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notification {
    #[serde(serialize_with = "event_name")]
    pub event: NotifyEvent,
    pub service: String,
    pub deployment: Option<DeploymentId>,
    /// `deploy` or `rollback`.
    pub kind: &'static str,
    pub from: Option<String>,
    pub to: Option<String>,
    pub message: String,
    /// Milliseconds since the epoch.
    pub at_ms: u64,
}

impl Notification {
    /// The body for `format`: this notification as JSON, or `{"text": …}` for Slack.
    pub fn body(&self, format: NotifyFormat) -> serde_json::Value {
        match format {
            NotifyFormat::Json => serde_json::to_value(self).expect("serializable"),
            NotifyFormat::Slack => serde_json::json!({ "text": self.text() }),
        }
    }

    /// One line for a chat: `switchyard: web v1 -> v2 failed (deployment #3): why`.
    pub fn text(&self) -> String {
        let from = self.from.as_deref().unwrap_or("nothing");
        let to = self.to.as_deref().unwrap_or("?");
        let id = self
            .deployment
            .map_or(String::new(), |d| format!(" (deployment #{d})"));
        let what = self.event.as_str().replace('_', " ");
        let mut text = format!("switchyard: {} {from} -> {to} {what}{id}", self.service);
        let why: String = self
            .message
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(300)
            .collect();
        if !why.is_empty() {
            text.push_str(": ");
            text.push_str(&why);
        }
        text
    }
}

fn event_name<S: serde::Serializer>(event: &NotifyEvent, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(event.as_str())
}

/// The mapping from engine events to notifications, with what it needs to remember.
#[derive(Debug)]
pub struct Tally {
    service: String,
    trigger: Trigger,
    deployment: Option<DeploymentId>,
    from: Option<String>,
    to: Option<String>,
    /// A canary step was live.
    shifted: bool,
    /// A confirmed route change happened (traffic reached the new version).
    moved: bool,
    rolled_back: bool,
    done: bool,
}

impl Tally {
    pub fn new(service: &str, trigger: Trigger) -> Tally {
        Tally {
            service: service.to_owned(),
            trigger,
            deployment: None,
            from: None,
            to: None,
            shifted: false,
            moved: false,
            rolled_back: false,
            done: false,
        }
    }

    /// What `event` is worth telling, in order.
    pub fn event(&mut self, event: &Event) -> Vec<Notification> {
        match event {
            Event::Begin {
                deployment,
                service,
                from,
                to,
                ..
            } => {
                self.deployment = Some(*deployment);
                self.service = service.clone();
                self.from = from.clone();
                self.to = Some(to.clone());
                vec![self.say(NotifyEvent::Started, String::new())]
            }
            Event::Resume { deployment, .. } => {
                self.deployment = Some(*deployment);
                vec![]
            }
            Event::Shifted { .. } => {
                self.shifted = true;
                self.moved = true;
                vec![]
            }
            Event::Reloaded { .. } => {
                self.moved = true;
                vec![]
            }
            Event::RolledBack { reason, .. } => self.rolled_back(reason.clone()),
            Event::Done {
                deployment,
                outcome,
                message,
            } => {
                self.deployment = Some(*deployment);
                self.done = true;
                self.done_with(*outcome, message)
            }
            _ => vec![],
        }
    }

    /// A run that returned `error` without finishing a deployment it began: `failed`.
    pub fn unfinished(&mut self, error: &str) -> Vec<Notification> {
        if self.deployment.is_none() || self.done {
            return vec![];
        }
        self.done = true;
        vec![self.say(NotifyEvent::Failed, error.to_owned())]
    }

    fn done_with(&mut self, outcome: Outcome, message: &str) -> Vec<Notification> {
        let mut out = Vec::new();
        match outcome {
            Outcome::Succeeded => {
                match self.trigger {
                    Trigger::Rollback => out.extend(self.rolled_back(message.to_owned())),
                    Trigger::Deploy if self.shifted => {
                        out.push(self.say(NotifyEvent::Promoted, message.to_owned()))
                    }
                    Trigger::Deploy => {}
                }
                out.push(self.say(NotifyEvent::Succeeded, message.to_owned()));
            }
            Outcome::Failed => {
                if self.moved && self.trigger == Trigger::Deploy {
                    out.extend(self.rolled_back(message.to_owned()));
                }
                out.push(self.say(NotifyEvent::Failed, message.to_owned()));
            }
            Outcome::Running => {}
        }
        out
    }

    fn rolled_back(&mut self, message: String) -> Vec<Notification> {
        if std::mem::replace(&mut self.rolled_back, true) {
            return vec![];
        }
        vec![self.say(NotifyEvent::RolledBack, message)]
    }

    fn say(&self, event: NotifyEvent, message: String) -> Notification {
        Notification {
            event,
            service: self.service.clone(),
            deployment: self.deployment,
            kind: self.trigger.as_str(),
            from: self.from.clone(),
            to: self.to.clone(),
            message,
            at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }
}

/// One webhook's queue and the task that works it.
struct Queue {
    spec: NotifySpec,
    sender: mpsc::UnboundedSender<serde_json::Value>,
}

/// An `Observer` that passes every event on to `inner` and notifies the webhooks.
pub struct Notifier<'a> {
    inner: &'a dyn Observer,
    tally: Mutex<Tally>,
    queues: Mutex<Vec<Queue>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl<'a> Notifier<'a> {
    /// Notifies `targets` about a run of `trigger` on `service`. Outside a tokio runtime
    /// (nothing to deliver from) it only passes events on.
    pub fn new(
        targets: &[NotifySpec],
        inner: &'a dyn Observer,
        service: &str,
        trigger: Trigger,
    ) -> Notifier<'a> {
        let runtime = tokio::runtime::Handle::try_current().ok();
        let client = reqwest::Client::new();
        let (mut queues, mut workers) = (Vec::new(), Vec::new());
        for spec in targets {
            let Some(runtime) = &runtime else {
                tracing::warn!(host = %spec.host, "no async runtime: notifications are not sent");
                continue;
            };
            let (sender, receiver) = mpsc::unbounded_channel();
            workers.push(runtime.spawn(work(client.clone(), spec.clone(), receiver)));
            queues.push(Queue {
                spec: spec.clone(),
                sender,
            });
        }
        Notifier {
            inner,
            tally: Mutex::new(Tally::new(service, trigger)),
            queues: Mutex::new(queues),
            workers: Mutex::new(workers),
        }
    }

    fn send(&self, notifications: Vec<Notification>) {
        let queues = self.queues.lock().expect("notify queues");
        for n in notifications {
            for q in queues.iter().filter(|q| q.spec.events.contains(&n.event)) {
                // A closed queue means finish() ran: nothing more is sent.
                let _ = q.sender.send(n.body(q.spec.format));
            }
        }
    }

    /// Call once the run returned: says `failed` if it began a deployment and returned
    /// `error` before finishing it, then waits up to `within` for what is still queued.
    /// What is left after that is dropped, with a warning naming the host.
    pub async fn finish(&self, error: Option<&str>, within: Duration) {
        if let Some(error) = error {
            let unfinished = self.tally.lock().expect("notify tally").unfinished(error);
            self.send(unfinished);
        }
        let hosts: Vec<String> = std::mem::take(&mut *self.queues.lock().expect("notify queues"))
            .into_iter()
            .map(|q| q.spec.host)
            .collect();
        let workers = std::mem::take(&mut *self.workers.lock().expect("notify workers"));
        let deadline = tokio::time::Instant::now() + within;
        for (host, mut worker) in hosts.into_iter().zip(workers) {
            if tokio::time::timeout_at(deadline, &mut worker)
                .await
                .is_err()
            {
                worker.abort();
                tracing::warn!(%host, "notifications still undelivered after {within:?}: dropped");
            }
        }
    }
}

impl Observer for Notifier<'_> {
    fn event(&self, event: &Event) {
        self.inner.event(event);
        let notifications = self.tally.lock().expect("notify tally").event(event);
        if !notifications.is_empty() {
            self.send(notifications);
        }
    }
}

/// Delivers `spec`'s queue in order until it is closed.
async fn work(
    client: reqwest::Client,
    spec: NotifySpec,
    mut queue: mpsc::UnboundedReceiver<serde_json::Value>,
) {
    while let Some(body) = queue.recv().await {
        deliver(&client, &spec, &body).await;
    }
}

/// Up to [`TRIES`] attempts; every failure is logged with the host only.
async fn deliver(client: &reqwest::Client, spec: &NotifySpec, body: &serde_json::Value) {
    let bytes = serde_json::to_vec(body).expect("serializable");
    let mut wait = BACKOFF;
    for attempt in 1..=TRIES {
        let sent = client
            .post(&spec.url)
            .timeout(spec.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(bytes.clone())
            .send()
            .await;
        let failure = match sent {
            Ok(response) if response.status().is_success() => return,
            Ok(response) => format!("answered {}", response.status().as_u16()),
            // The error names the URL unless told not to; its causes do not.
            Err(e) => switchyard_engine::error_chain(&e.without_url()),
        };
        tracing::warn!(
            host = %spec.host,
            attempt,
            tries = TRIES,
            "notification not delivered: {failure}"
        );
        if attempt < TRIES {
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    }
}
