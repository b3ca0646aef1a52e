//! `POST /api/v1/services/{service}/{promote,abort,pause}`: a request to the service's
//! running canary, left in the store where the deploy picks it up at its next check, as
//! `switchyard promote` and `switchyard abort` do (whichever process runs the canary).
//! `pause` holds the canary at its current step (still judged) until promote or abort.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;
use switchyard_engine::deploy::{lock_is_stale, refuses_control};
use switchyard_engine::{Control, Host, Name, Store};

use super::{error, ok};
use crate::live::SystemHost;
use crate::serve::Daemon;

/// What `put` found: the answer's status and body.
type Answer = (StatusCode, serde_json::Value);

pub async fn control(daemon: Arc<Daemon>, service: Name, what: &str) -> Response {
    let control = match what {
        "promote" => Control::Promote,
        "abort" => Control::Abort,
        "pause" => Control::Pause,
        other => return error(StatusCode::NOT_FOUND, &format!("no action {other:?}")),
    };
    let put = tokio::task::spawn_blocking(move || put(&daemon, &service, control)).await;
    match put {
        Ok(Ok((status, body))) if status.is_success() => ok(status, &body),
        Ok(Ok((status, body))) => error(status, body["error"].as_str().unwrap_or("refused")),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("a serve task failed: {e}"),
        ),
    }
}

fn put(
    daemon: &Daemon,
    service: &Name,
    control: Control,
) -> Result<Answer, switchyard_engine::StoreError> {
    let refuse = |text: String| Ok((StatusCode::CONFLICT, json!({ "error": text })));
    let store = daemon.store.lock().expect("store lock");
    let Some((deployment, journal)) = store.unfinished(service)? else {
        return refuse(format!(
            "no deployment of {service} is running: nothing to {}",
            control.as_str()
        ));
    };
    if let Some(refused) = refuses_control(&deployment, &journal, service.as_str(), control) {
        return refuse(refused);
    }
    let host = SystemHost;
    let lock = store.lock(service)?;
    if lock
        .as_ref()
        .is_none_or(|l| lock_is_stale(l, &host, host.now_ms()))
    {
        return refuse(format!(
            "deployment #{} of {service} was interrupted: the next deploy or rollback settles it",
            deployment.id
        ));
    }
    store.put_control(deployment.id, control, host.now_ms())?;
    let step = journal.last().map_or("begin", |e| e.step.name());
    Ok((
        StatusCode::ACCEPTED,
        json!({
            "deployment": deployment.id,
            "control": control.as_str(),
            "step": step,
        }),
    ))
}
