//! `/api/v1`: serve's authenticated JSON API. [`Api`] holds the bearer token (read from
//! `[serve] token_file` at start; without one every route answers 401 saying so) and the
//! logs of the deployments run here ([`run::Runs`]); [`routes`] mounts:
//!
//! - `GET status`: what `/api/status` gives;
//! - `GET history?service=&limit=`: deployments, newest first (20 unless `limit`), each with
//!   its disruption at the proxy;
//! - `GET deployments/{id}`: the deployment row (with its disruption), its journal, the
//!   hooks it ran with their output, its outcome, a canary's thresholds in the config and,
//!   for a failure, its evidence;
//! - `GET deployments/{id}/events`: a server-sent event stream of its steps (`events.rs`);
//! - `POST services/{service}/deploy` with `{"version": "v2", "strategy": "canary"}`
//!   (strategy optional) and `POST services/{service}/rollback`: run detached, 202
//!   `{"deployment": id}` at once (`run.rs`), 409 while another deploy holds the lock;
//! - `POST services/{service}/promote|abort|pause` (`control.rs`).
//!
//! Every request needs `Authorization: Bearer <token>` ([`auth`], compared in constant
//! time); a refused one changes nothing. Every body is JSON with `"schema": 1`, errors
//! `{"schema": 1, "error": "…"}`.

pub mod auth;
mod control;
mod events;
mod run;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::{json, Value};
use switchyard_engine::config::StrategyKind;
use switchyard_engine::{Config, DeploymentId, Name, Store, Version};

use super::{blocking, status, Daemon};
use crate::AppError;

pub const SCHEMA: u32 = 1;
/// The most deployments one `history` answer lists.
const HISTORY_MAX: usize = 1000;

/// The API's state inside the daemon.
pub struct Api {
    token: Option<auth::Token>,
    runs: run::Runs,
    /// Set when serve stops: the runs still going are interrupted (each holds a receiver).
    stopping: tokio::sync::watch::Sender<bool>,
}

impl Api {
    /// Reads `[serve] token_file`, if the config names one.
    pub fn new(config: &Config) -> Result<Api, AppError> {
        let token = match &config.serve.token_file {
            Some(file) => Some(auth::Token::read(file)?),
            None => None,
        };
        Ok(Api {
            token,
            runs: run::Runs::default(),
            stopping: tokio::sync::watch::channel(false).0,
        })
    }

    /// Whether a token was configured (else every route answers 401).
    pub fn is_open(&self) -> bool {
        self.token.is_some()
    }

    /// Interrupts the deploys still running here, as a killed CLI would be: each stops at
    /// its next await, its journal left for the next deploy or rollback to settle. Waits
    /// at most `grace` for them to let go.
    pub async fn stop(&self, grace: std::time::Duration) {
        self.stopping.send_replace(true);
        let since = std::time::Instant::now();
        while self.stopping.receiver_count() > 0 && since.elapsed() < grace {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Interrupts them without waiting (a dropped server).
    pub fn interrupt(&self) {
        self.stopping.send_replace(true);
    }
}

pub fn routes(daemon: Arc<Daemon>) -> axum::Router {
    axum::Router::new()
        .route("/api/v1/status", get(api_status))
        .route("/api/v1/history", get(history))
        .route("/api/v1/deployments/{id}", get(deployment))
        .route("/api/v1/deployments/{id}/events", get(deployment_events))
        .route("/api/v1/services/{service}/deploy", post(deploy))
        .route("/api/v1/services/{service}/rollback", post(rollback))
        .route("/api/v1/services/{service}/{control}", post(control))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&daemon),
            authorized,
        ))
        .with_state(daemon)
}

/// 401 unless the request carries our bearer token; nothing else runs before this.
async fn authorized(State(daemon): State<Arc<Daemon>>, request: Request, next: Next) -> Response {
    let header = request.headers().get(header::AUTHORIZATION);
    match auth::authorize(daemon.api.token.as_ref(), header) {
        Ok(()) => next.run(request).await,
        Err(denied) => {
            let mut response = error(StatusCode::UNAUTHORIZED, denied.message());
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            response
        }
    }
}

/// `value` (an object) with `"schema": 1`.
pub fn with_schema(value: Value) -> Value {
    match value {
        Value::Object(mut map) => {
            map.insert("schema".into(), json!(SCHEMA));
            Value::Object(map)
        }
        other => json!({ "schema": SCHEMA, "value": other }),
    }
}

pub fn ok(status: StatusCode, body: &impl Serialize) -> Response {
    let value = with_schema(serde_json::to_value(body).expect("API bodies serialize"));
    let text = serde_json::to_string_pretty(&value).expect("a JSON value prints");
    (status, [(header::CONTENT_TYPE, "application/json")], text).into_response()
}

pub fn error(status: StatusCode, message: &str) -> Response {
    ok(status, &json!({ "error": message }))
}

/// A request refused before it did anything: the status and what to say.
type Refusal = (StatusCode, String);

fn refused((status, message): Refusal) -> Response {
    error(status, &message)
}

fn service_name(daemon: &Daemon, service: &str) -> Result<Name, Refusal> {
    if daemon.config.service(service).is_none() {
        let known = daemon.services.join(", ");
        return Err((
            StatusCode::NOT_FOUND,
            format!("no service {service:?} in the config (services: {known})"),
        ));
    }
    Name::parse(service).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))
}

fn deployment_id(id: &str) -> Result<DeploymentId, Refusal> {
    id.parse().map_err(|_| {
        (
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a deployment id"),
        )
    })
}

async fn api_status(State(daemon): State<Arc<Daemon>>) -> Response {
    match blocking(&daemon, Daemon::status).await {
        Ok(mut report) => {
            status::check_listens(&mut report, &daemon.config).await;
            ok(StatusCode::OK, &report)
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

/// `service` and `limit` of a query string.
fn history_query(query: Option<&str>) -> Result<(Option<Name>, usize), String> {
    let mut service = None;
    let mut limit = 20;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "service" => service = Some(Name::parse(value).map_err(|e| format!("service: {e}"))?),
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=HISTORY_MAX).contains(n))
                    .ok_or_else(|| {
                        format!("limit: {value:?} is not a number from 1 to {HISTORY_MAX}")
                    })?
            }
            other => {
                return Err(format!(
                    "unknown parameter {other:?}: use service and limit"
                ))
            }
        }
    }
    Ok((service, limit))
}

async fn history(State(daemon): State<Arc<Daemon>>, RawQuery(query): RawQuery) -> Response {
    let (service, limit) = match history_query(query.as_deref()) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let read = blocking(&daemon, move |d| {
        let store = d.store.lock().expect("store lock");
        let mut rows = Vec::new();
        for record in store.history(service.as_ref(), limit)? {
            let disruption = store.evidence(record.id)?.and_then(|k| k.disruption);
            rows.push(with_disruption(json!(record), disruption));
        }
        Ok(rows)
    })
    .await;
    match read {
        Ok(deployments) => ok(StatusCode::OK, &json!({ "deployments": deployments })),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

/// A deployment row with what it cost at the proxy, as stored and as one line
/// (`disruption_summary`: "0 of 5,123 (before 0 of 4,980)"), as `history` prints it.
fn with_disruption(
    mut row: serde_json::Value,
    disruption: Option<serde_json::Value>,
) -> serde_json::Value {
    let summary = disruption
        .clone()
        .and_then(|v| serde_json::from_value::<crate::evidence::Disruption>(v).ok())
        .map(|d| d.summary());
    if let Some(fields) = row.as_object_mut() {
        fields.insert("disruption".into(), json!(disruption));
        fields.insert("disruption_summary".into(), json!(summary));
    }
    row
}

async fn deployment(State(daemon): State<Arc<Daemon>>, Path(id): Path<String>) -> Response {
    let id = match deployment_id(&id) {
        Ok(id) => id,
        Err(refusal) => return refused(refusal),
    };
    let read = blocking(&daemon, move |d| {
        let store = d.store.lock().expect("store lock");
        let Some(found) = store.deployment(id)? else {
            return Ok(None);
        };
        Ok(Some((found, store.evidence(id)?)))
    })
    .await;
    match read {
        Ok(Some(((record, journal), kept))) => {
            // What a canary is judged against: serve's config (a failure's evidence keeps the
            // thresholds it was held to).
            let thresholds = daemon
                .config
                .service(record.service.as_str())
                .filter(|_| record.strategy == "canary")
                .map(|spec| crate::evidence::Thresholds::from(&spec.canary.policy));
            ok(
                StatusCode::OK,
                &json!({
                    "thresholds": thresholds,
                    "outcome": record.outcome,
                    "message": record.message,
                    "deployment": with_disruption(
                        json!(record),
                        kept.as_ref().and_then(|k| k.disruption.clone()),
                    ),
                    "hooks": crate::evidence::hooks::ran(&journal),
                    "journal": journal,
                    "evidence": kept.and_then(|k| k.failure),
                }),
            )
        }
        Ok(None) => error(StatusCode::NOT_FOUND, &events::no_such(id)),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

async fn deployment_events(State(daemon): State<Arc<Daemon>>, Path(id): Path<String>) -> Response {
    match deployment_id(&id) {
        Ok(id) => events::stream(daemon, id).await,
        Err(refusal) => refused(refusal),
    }
}

/// The body of `POST …/deploy`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    version: String,
    strategy: Option<String>,
}

fn deploy_action(body: &[u8]) -> Result<run::Action, String> {
    let body: DeployBody = serde_json::from_slice(body)
        .map_err(|e| format!("the body must be {{\"version\": \"v2\", \"strategy\": \"canary\"}} (strategy optional): {e}"))?;
    let version = Version::parse(&body.version).map_err(|e| format!("version: {e}"))?;
    let strategy = body
        .strategy
        .as_deref()
        .map(|s| StrategyKind::parse(s).map_err(|e| format!("strategy: {e}")))
        .transpose()?;
    Ok(run::Action::Deploy { version, strategy })
}

async fn deploy(
    State(daemon): State<Arc<Daemon>>,
    Path(service): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(refusal) = service_name(&daemon, &service) {
        return refused(refusal);
    }
    match deploy_action(&body) {
        Ok(action) => run::start(daemon, service, action).await,
        Err(e) => error(StatusCode::BAD_REQUEST, &e),
    }
}

async fn rollback(State(daemon): State<Arc<Daemon>>, Path(service): Path<String>) -> Response {
    if let Err(refusal) = service_name(&daemon, &service) {
        return refused(refusal);
    }
    run::start(daemon, service, run::Action::Rollback).await
}

async fn control(
    State(daemon): State<Arc<Daemon>>,
    Path((service, what)): Path<(String, String)>,
) -> Response {
    match service_name(&daemon, &service) {
        Ok(name) => control::control(daemon, name, &what).await,
        Err(refusal) => refused(refusal),
    }
}
