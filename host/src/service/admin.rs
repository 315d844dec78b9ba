//! The admin HTTP API: health, metrics, plugin status, reloads, promotion,
//! and event injection.
//!
//! It listens on loopback unless configured otherwise. With a token
//! configured, every request but the two probes (`/healthz`, `/readyz`,
//! which reveal nothing and must work for orchestrators without secrets)
//! must carry `Authorization: Bearer <token>`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::handler::Handler as _;
use crate::runtime::{RunningPlugin, Runtime};
use crate::service::metrics::Scrape;
use crate::service::reload::{ReloadError, Reloaded};

/// What the handlers share.
pub struct Admin {
    pub runtime: Arc<Runtime>,
    /// The bearer token requests must carry; `None`: no check.
    pub token: Option<String>,
    /// The file `POST /config/reload` re-reads.
    pub config_path: Option<PathBuf>,
}

/// The API's routes over `admin`.
pub fn router(admin: Arc<Admin>) -> Router {
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .route("/plugins", get(list_plugins))
        .route("/plugins/{name}", get(show_plugin))
        .route("/plugins/{name}/reload", post(reload_plugin))
        .route("/plugins/{name}/promote", post(promote_plugin))
        .route("/config/reload", post(reload_config))
        .route("/events", post(inject_events))
        .route("/streams", get(list_streams))
        .route("/dead-letters", get(list_dead_letters))
        .route(
            "/dead-letters/{stream}/{id}",
            axum::routing::delete(delete_dead_letter),
        )
        .route(
            "/dead-letters/{stream}/{id}/replay",
            post(replay_dead_letter),
        )
        .layer(middleware::from_fn_with_state(admin.clone(), require_token));
    Router::new()
        // The page holds no data: every figure on it comes from the
        // guarded routes, with the token the operator types in.
        .route("/", get(dashboard))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .merge(guarded)
        .with_state(admin)
}

/// Serves the API on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    admin: Arc<Admin>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    axum::serve(listener, router(admin))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

async fn require_token(State(admin): State<Arc<Admin>>, request: Request, next: Next) -> Response {
    if let Some(token) = &admin.token {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !presented.is_some_and(|p| same_secret(p.as_bytes(), token.as_bytes())) {
            return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        }
    }
    next.run(request).await
}

/// Compares without stopping at the first difference, so response times do
/// not reveal how much of a guess was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn ready(State(admin): State<Arc<Admin>>) -> Response {
    let runtime = &admin.runtime;
    let ping = tokio::time::timeout(Duration::from_secs(2), runtime.broker.ping()).await;
    let backend = match ping {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err("backend did not answer within 2s".to_string()),
    };
    // A tripped plugin is reported, not a reason to be restarted: its own
    // dependency is what fails, and other plugins keep serving.
    let tripped: Vec<&str> = runtime
        .plugins
        .iter()
        .filter(|p| p.breaker.position() != crate::subscriber::breaker::Position::Closed)
        .map(|p| p.config.name.as_str())
        .collect();
    // A plugin whose subscriber cannot read (its group is being created,
    // the backend refuses it) is a reason: its events are not handled.
    let not_reading: Vec<Value> = runtime
        .plugins
        .iter()
        .filter(|p| !p.is_shadow())
        .filter_map(|p| {
            let why = p.health.problem()?;
            Some(json!({ "plugin": p.config.name, "streams": p.config.streams, "reason": why }))
        })
        .collect();
    let status = match (&backend, not_reading.is_empty()) {
        (Ok(()), true) => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = json!({
        "tripped": tripped,
        "backend": backend.as_ref().map_or_else(|e| e.as_str(), |_| "up"),
        "backend_reconnects": runtime.broker.reconnects(),
        "plugins": runtime.plugins.len(),
        "not_reading": not_reading,
    });
    (status, Json(body)).into_response()
}

async fn metrics(State(admin): State<Arc<Admin>>) -> Response {
    let text = Scrape::take(&admin.runtime).await.render();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn list_plugins(State(admin): State<Arc<Admin>>) -> Json<Value> {
    Json(Value::Array(
        admin.runtime.plugins.iter().map(describe).collect(),
    ))
}

async fn show_plugin(State(admin): State<Arc<Admin>>, Path(name): Path<String>) -> Response {
    match admin.runtime.plugins.iter().find(|p| p.config.name == name) {
        Some(p) => Json(describe(p)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no plugin is named {name:?}"),
        ),
    }
}

/// A plugin as `GET /plugins` shows it.
fn describe(p: &RunningPlugin) -> Value {
    let version = p.live.current();
    let status = p.live.status();
    let s = p.stats.snapshot();
    let shadow = p.live.shadow().map(|sh| {
        let a = sh.stats.agreement();
        json!({
            "plugin": sh.name,
            "agreed": a.agreed,
            "disagreed": a.disagreed,
            "skipped": a.skipped,
            "last_difference": sh.stats.last_difference(),
        })
    });
    let state = if p.is_shadow() {
        "shadow"
    } else if p.breaker.position() != crate::subscriber::breaker::Position::Closed {
        "breaker open"
    } else if version.on_probation() {
        "on probation"
    } else {
        "serving"
    };
    json!({
        "name": p.config.name,
        "version": version.sha256,
        "state": state,
        "latency": {
            "calls": s.calls,
            "seconds": s.call_nanos as f64 / 1e9,
        },
        "loaded_at": rfc3339(version.loaded_at),
        "streams": p.config.streams,
        "shadow_of": p.config.shadow_of,
        "counters": {
            "handled": s.handled,
            "retried": s.retried,
            "failed": s.failed,
            "dead_lettered": s.dead_lettered,
            "skipped": s.skipped,
            "deduplicated": s.deduplicated,
            "traps": s.traps,
        },
        "instances_alive": p.live.instances_alive(),
        "breaker": p.breaker.position().as_str(),
        "breaker_trips": p.breaker.trips(),
        "reloads": status.reloads,
        "reloads_refused": status.refused,
        "last_reload_at": status.last_reload_at.map(rfc3339),
        "last_error": status.last_error,
        "shadow": shadow,
    })
}

fn rfc3339(t: SystemTime) -> String {
    let nanos = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .map(crate::event::format_rfc3339_nano)
        .unwrap_or_default()
}

fn reload_response(result: Result<Reloaded, ReloadError>) -> Response {
    match result {
        Ok(Reloaded::Swapped { from, to }) => {
            Json(json!({ "outcome": "swapped", "from": from, "to": to })).into_response()
        }
        Ok(Reloaded::Unchanged { version }) => {
            Json(json!({ "outcome": "unchanged", "version": version })).into_response()
        }
        Err(e @ ReloadError::UnknownPlugin(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ ReloadError::Refused(_)) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    }
}

async fn reload_plugin(State(admin): State<Arc<Admin>>, Path(name): Path<String>) -> Response {
    match &admin.runtime.reloader {
        Some(reloader) => reload_response(reloader.reload(&name).await),
        None => error(
            StatusCode::CONFLICT,
            "these plugins are not reloadable files",
        ),
    }
}

async fn promote_plugin(State(admin): State<Arc<Admin>>, Path(name): Path<String>) -> Response {
    match &admin.runtime.reloader {
        Some(reloader) => reload_response(reloader.promote(&name).await),
        None => error(
            StatusCode::CONFLICT,
            "these plugins are not reloadable files",
        ),
    }
}

async fn reload_config(State(admin): State<Arc<Admin>>) -> Response {
    let (Some(reloader), Some(path)) = (&admin.runtime.reloader, &admin.config_path) else {
        return error(
            StatusCode::CONFLICT,
            "this host was not started from a config file",
        );
    };
    match Config::load(path) {
        Ok(config) => Json(json!({ "report": reloader.apply(&config).await })).into_response(),
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    }
}

/// Body: NDJSON, one event per line, as `runnel run --input` reads.
async fn inject_events(State(admin): State<Arc<Admin>>, body: String) -> Response {
    let events = match crate::commands::input::parse(&body) {
        Ok(events) => events,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e:#}")),
    };
    let ids: Vec<String> = events.iter().map(|e| e.event.id.clone()).collect();
    match admin.runtime.inject(events).await {
        Ok(()) => (StatusCode::ACCEPTED, Json(json!({ "published": ids }))).into_response(),
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}")),
    }
}

/// The operator's page (`GET /`): one file, shipped in the binary, that
/// draws everything from the routes below with the token typed into it.
async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Nothing from elsewhere: the page works offline and a script
            // injected into a dead letter's text could not call out.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
            ),
        ],
        include_str!("dashboard.html"),
    )
        .into_response()
}

/// Each plugin's source and replay streams with the group's backlog
/// (`null` where it cannot be told: the group is missing, the backend
/// does not answer).
async fn list_streams(State(admin): State<Arc<Admin>>) -> Json<Value> {
    let runtime = &admin.runtime;
    let mut out = Vec::new();
    for p in runtime.plugins.iter().filter(|p| !p.is_shadow()) {
        let group = runtime.config.group_of(&p.config);
        for stream in &p.config.streams {
            let backlog = runtime.broker.backlog(stream, &group).await.ok();
            out.push(json!({
                "plugin": p.config.name,
                "stream": stream,
                "group": group,
                "backlog": backlog,
                "dead_letters": runtime.config.dead_letter_stream(stream),
            }));
        }
    }
    Json(Value::Array(out))
}

/// The dead letters of every plugin's streams, oldest first, up to 100 per
/// dead-letter stream: why and where each was given up on, and the raw
/// entry.
async fn list_dead_letters(State(admin): State<Arc<Admin>>) -> Response {
    let runtime = &admin.runtime;
    let streams = runtime.dead_letter_streams();
    let mut out = Vec::new();
    for stream in streams {
        let entries = match runtime.broker.range(&stream, None, None, 100).await {
            Ok(entries) => entries,
            Err(e) => return error(StatusCode::BAD_GATEWAY, format!("{e:#}")),
        };
        let letters: Vec<Value> = entries.iter().map(crate::dead_letter::describe).collect();
        out.push(json!({ "stream": stream, "letters": letters }));
    }
    Json(Value::Array(out)).into_response()
}

/// Hands one dead letter back to the group that failed it, as `runnel dlq
/// replay --id` does.
async fn replay_dead_letter(
    State(admin): State<Arc<Admin>>,
    Path((stream, id)): Path<(String, String)>,
) -> Response {
    let broker = admin.runtime.broker.as_ref();
    match crate::commands::tools::dlq_replay(
        broker,
        &stream,
        std::slice::from_ref(&id),
        None,
        &|_, _| {},
    )
    .await
    {
        Ok(n) => Json(json!({ "replayed": n })).into_response(),
        Err(e) if e.to_string().contains("no dead letter") => {
            error(StatusCode::NOT_FOUND, format!("{e:#}"))
        }
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}")),
    }
}

/// Removes one dead letter for good.
async fn delete_dead_letter(
    State(admin): State<Arc<Admin>>,
    Path((stream, id)): Path<(String, String)>,
) -> Response {
    match admin
        .runtime
        .broker
        .delete(&stream, std::slice::from_ref(&id))
        .await
    {
        Ok(()) => Json(json!({ "deleted": id })).into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, format!("{e:#}")),
    }
}
