//! The HTTP surface: `/v1/chat/completions`, `/v1/models`, `/health`.

mod admin;
mod auth;
mod chat;
pub mod error;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::app::App;
use auth::Caller;
use error::ApiError;

/// The gateway's routes; shared by `main` and the tests.
pub fn router(app: Arc<App>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .route("/chat/completions", post(chat::completions))
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .route("/health", get(health))
        .route("/admin/stats", get(admin::stats))
        .route("/admin/stats/daily", get(admin::daily))
        .route("/admin/channels", get(admin::channels))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(app)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "invalid_request_error",
        Some("unknown_url"),
        format!("Unknown request URL: {}", uri.path()),
    )
}

/// `GET /v1/models`: the model groups, then the plain model names channels serve.
async fn models(State(app): State<Arc<App>>, caller: Caller) -> Response {
    let cfg = app.config.load();
    let mut data = Vec::new();
    for g in cfg.groups.values() {
        if caller.may_use(&g.name) {
            data.push(
                json!({"id": g.name, "object": "model", "created": 0, "owned_by": "smart-router",
                "display_name": g.display_name, "description": g.description}),
            );
        }
    }
    for (name, members) in &cfg.models {
        let served_directly = members.iter().any(|m| {
            cfg.channels[m.channel].model == *name && cfg.channels[m.channel].disabled.is_none()
        });
        if served_directly && !cfg.groups.contains_key(name) && caller.may_use(name) {
            let owner = &cfg.channels[members[0].channel].provider;
            data.push(json!({"id": name, "object": "model", "created": 0, "owned_by": owner}));
        }
    }
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// `GET /health`: liveness plus what is loaded and a few counters. No secrets.
async fn health(State(app): State<Arc<App>>) -> Response {
    let cfg = app.config.load();
    let comps = app.components.load();
    let c = &app.counters;
    let mut strategies: Vec<&String> = comps.strategies.keys().collect();
    strategies.sort();
    let mut adapters: Vec<&String> = comps.adapters.keys().collect();
    adapters.sort();
    axum::Json(json!({
        "status": "ok",
        "groups": cfg.groups.len(),
        "channels": cfg.channels.len(),
        "strategies": strategies,
        "adapters": adapters,
        "counters": {
            "requests": c.requests.load(Ordering::Relaxed),
            "failovers": c.failovers.load(Ordering::Relaxed),
            "strategy_failures": c.strategy_failures.load(Ordering::Relaxed),
            "adapter_failures": c.adapter_failures.load(Ordering::Relaxed),
            "upstream_failures": c.upstream_failures.load(Ordering::Relaxed),
        }
    }))
    .into_response()
}
