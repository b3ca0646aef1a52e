//! `GET /api/v1/deployments/{id}/events`: a server-sent event stream of one deployment.
//!
//! - Run by this serve: every engine event so far, then each as it happens (`event:` the
//!   event's name, `begin` … `done`), then `end` when the run is over.
//! - Run elsewhere (the CLI, an earlier serve): its journal, one `step` event per entry,
//!   polled every [`POLL`] while it runs, then `end`.
//!
//! Every `data:` is a JSON object with `"schema": 1` and `"deployment"`; `end`'s has `code`,
//! the exit code the CLI would have given (0 done, 1 failed and rolled back, 2, 3), and
//! `error`. The stream is fed
//! by a task that ends when the client goes away or the deployment ends.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use switchyard_engine::{DeploymentId, Outcome, Store};
use tokio::sync::{broadcast, mpsc};

use super::run::Item;
use super::{error, with_schema};
use crate::serve::{blocking, Daemon};

/// How often the journal of a deployment run elsewhere is read again.
pub const POLL: Duration = Duration::from_millis(250);

pub async fn stream(daemon: Arc<Daemon>, id: DeploymentId) -> Response {
    let (tx, rx) = mpsc::channel::<Sse>(64);
    if let Some(log) = daemon.api.runs.get(id) {
        let (replay, live) = log.subscribe();
        tokio::spawn(follow_run(id, replay, live, tx));
    } else {
        match blocking(&daemon, move |d| {
            d.store.lock().expect("store lock").deployment(id)
        })
        .await
        {
            Ok(Some(_)) => {}
            Ok(None) => return error(axum::http::StatusCode::NOT_FOUND, &no_such(id)),
            Err(e) => return error(axum::http::StatusCode::INTERNAL_SERVER_ERROR, &e),
        }
        tokio::spawn(follow_journal(daemon, id, tx));
    }
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    axum::response::Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

pub fn no_such(id: DeploymentId) -> String {
    format!("no deployment #{id}")
}

fn sse(name: &str, data: Value) -> Sse {
    Sse::default().event(name).data(data.to_string())
}

/// The SSE form of one item of a run's log; None for the end.
fn item_event(id: DeploymentId, item: &Item) -> Sse {
    match item {
        Item::Event(event) => {
            let value = serde_json::to_value(event).expect("events serialize");
            let name = value["event"].as_str().unwrap_or("event").to_owned();
            let mut data = with_schema(value);
            data["deployment"] = json!(id);
            sse(&name, data)
        }
        Item::End { code, error } => sse(
            "end",
            with_schema(json!({ "deployment": id, "code": code, "error": error })),
        ),
    }
}

async fn follow_run(
    id: DeploymentId,
    replay: Vec<Item>,
    mut live: broadcast::Receiver<Item>,
    tx: mpsc::Sender<Sse>,
) {
    for item in &replay {
        if tx.send(item_event(id, item)).await.is_err() {
            return;
        }
    }
    if matches!(replay.last(), Some(Item::End { .. })) {
        return;
    }
    loop {
        let item = match live.recv().await {
            Ok(item) => item,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                let lagged = with_schema(json!({ "deployment": id, "missed": n }));
                if tx.send(sse("lagged", lagged)).await.is_err() {
                    return;
                }
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let end = matches!(item, Item::End { .. });
        if tx.send(item_event(id, &item)).await.is_err() || end {
            return;
        }
    }
}

async fn follow_journal(daemon: Arc<Daemon>, id: DeploymentId, tx: mpsc::Sender<Sse>) {
    let mut sent = 0;
    loop {
        let read = blocking(&daemon, move |d| {
            d.store.lock().expect("store lock").deployment(id)
        })
        .await;
        let (record, journal) = match read {
            Ok(Some(found)) => found,
            Ok(None) => return,
            Err(e) => {
                let failed = with_schema(json!({ "deployment": id, "error": e }));
                let _ = tx.send(sse("end", failed)).await;
                return;
            }
        };
        for entry in journal.iter().skip(sent) {
            let mut data = with_schema(serde_json::to_value(entry).expect("entries serialize"));
            data["deployment"] = json!(id);
            if tx.send(sse("step", data)).await.is_err() {
                return;
            }
        }
        sent = journal.len();
        if record.outcome != Outcome::Running {
            let end = json!({
                "deployment": id,
                "code": i32::from(record.outcome != Outcome::Succeeded),
                "outcome": record.outcome,
                "message": record.message,
                "error": null,
            });
            let _ = tx.send(sse("end", with_schema(end))).await;
            return;
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}
