//! `POST /v1/chat/completions` and `POST /v1/embeddings`: plan, then try channels in order until
//! one answers.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::auth::Caller;
use super::error::ApiError;
use crate::app::{App, Counters};
use crate::proxy::{Failure, RequestScope, attempt};
use crate::router::{Endpoint, Facts, plan, request_facts};
use crate::stats::now_ms;
use crate::store::UsageRecord;

pub async fn completions(
    State(app): State<Arc<App>>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    serve(app, caller, body, Endpoint::Chat).await
}

pub async fn embeddings(
    State(app): State<Arc<App>>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    serve(app, caller, body, Endpoint::Embeddings).await
}

async fn serve(
    app: Arc<App>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
    endpoint: Endpoint,
) -> Response {
    Counters::bump(&app.counters.requests);
    let request_id = new_request_id();
    match handle(&app, caller, body, &request_id, endpoint).await {
        Ok(resp) => resp,
        Err(e) => {
            let mut resp = e.into_response();
            if let Ok(v) = axum::http::HeaderValue::from_str(&request_id) {
                resp.headers_mut().insert("x-request-id", v);
            }
            resp
        }
    }
}

async fn handle(
    app: &Arc<App>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
    request_id: &str,
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    let t0 = std::time::Instant::now();
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", Some("request_too_large"), "The request body is larger than the gateway accepts (system.yaml server.max_body_bytes).")
        } else {
            ApiError::invalid(format!("Could not read the request body: {e}"))
        }
    })?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::invalid("The request body is not valid UTF-8."))?;
    let facts = request_facts(text, endpoint)?;
    if !caller.may_use(&facts.model) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            Some("model_not_allowed"),
            format!("This key may not use the model `{}`.", facts.model),
        ));
    }
    let cfg = app.config.load_full();
    let comps = app.components.load_full();
    let started = now_ms();
    // Inline: a call into a warm strategy takes microseconds, and the epoch deadline bounds a
    // hostile one (which is quarantined after a few failures).
    let plan = match plan(app, &cfg, &comps, &facts) {
        Ok(p) => p,
        Err(e) => {
            record_unrouted(app, &caller.key_id, request_id, &facts, started, &e).await;
            return Err(e);
        }
    };
    let scope = Arc::new(RequestScope {
        app: app.clone(),
        cfg: cfg.clone(),
        comps,
        group: plan.group.clone(),
        facts,
        body: text.to_string(),
        request_id: request_id.to_string(),
        key_id: caller.key_id,
        key_budget: caller.budget,
        upstream_us: Default::default(),
    });

    let mut failures: Vec<(String, &'static str, String, Option<u64>)> = Vec::new();
    for (n, &idx) in plan
        .channels
        .iter()
        .take(cfg.system.max_attempts)
        .enumerate()
    {
        if n > 0 {
            Counters::bump(&app.counters.failovers);
        }
        match attempt(&scope, idx, n as u32 + 1).await {
            Ok(resp) => {
                let upstream = scope.upstream_us.load(std::sync::atomic::Ordering::Relaxed);
                app.counters
                    .overhead
                    .observe((t0.elapsed().as_micros() as u64).saturating_sub(upstream));
                return Ok(resp);
            }
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Retry {
                class,
                message,
                retry_after_ms,
            }) => {
                let id = cfg.channels[idx].id.clone();
                tracing::info!(request_id, channel = %id, class, "attempt failed: {message}");
                failures.push((id, class, message, retry_after_ms));
            }
        }
    }
    Err(all_failed(&failures))
}

/// The client's error when every channel tried failed.
fn all_failed(failures: &[(String, &'static str, String, Option<u64>)]) -> ApiError {
    let summary = failures
        .iter()
        .map(|(id, class, msg, _)| format!("{id}: {class} ({msg})"))
        .collect::<Vec<_>>()
        .join("; ");
    let retry_after = failures
        .iter()
        .filter_map(|f| f.3)
        .min()
        .map(|ms| ms.div_ceil(1000).max(1));
    let all = |c: &str| !failures.is_empty() && failures.iter().all(|f| f.1 == c);
    let limited = !failures.is_empty()
        && failures
            .iter()
            .all(|f| matches!(f.1, "rate_limited" | "cooling_down"));
    let message = format!("All {} channel(s) tried failed. {summary}", failures.len());
    if all("budget") {
        ApiError::new(
            StatusCode::PAYMENT_REQUIRED,
            "insufficient_quota",
            Some("budget_exceeded"),
            message,
        )
    } else if limited {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            Some("rate_limit_exceeded"),
            message,
        )
        .with_retry_after(retry_after.or(Some(10)))
    } else if all("timeout") {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_error",
            Some("upstream_timeout"),
            message,
        )
    } else if all("unsupported") {
        // No channel offers what the request asks for (`n: 3` where every channel answers one
        // choice, say): trying again will not help, so it is the client's error.
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("unsupported_by_channels"),
            message,
        )
    } else if all("daily_quota") {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            Some("daily_quota_exhausted"),
            message,
        )
    } else {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            Some("all_channels_failed"),
            message,
        )
        .with_retry_after(retry_after)
    }
}

/// A request that reached no channel still leaves a row.
async fn record_unrouted(
    app: &App,
    key_id: &str,
    request_id: &str,
    facts: &Facts,
    started: u64,
    e: &ApiError,
) {
    app.usage
        .record(UsageRecord {
            request_id: request_id.to_string(),
            attempt: 0,
            created_at_ms: started,
            key_id: key_id.to_string(),
            requested_model: facts.model.clone(),
            endpoint: facts.endpoint,
            is_stream: facts.is_stream,
            outcome: "error",
            error_class: Some(e.code.unwrap_or("no_channel").to_string()),
            error_message: Some(e.message.clone()),
            status: 0,
            ..UsageRecord::default()
        })
        .await;
}

/// `req_` and 24 hex digits: the millisecond clock, then 48 random bits. Ids sort by time, so
/// the usage table's index on them grows at its end instead of touching a random page per row.
fn new_request_id() -> String {
    format!(
        "req_{:012x}{:012x}",
        crate::stats::now_ms() & 0xffff_ffff_ffff,
        fastrand::u64(..) & 0xffff_ffff_ffff
    )
}
