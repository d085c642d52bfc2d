//! The admin API (master key): statistics for dashboards and the live state of every channel.
//!
//! - `GET /admin/stats?window=24h&by=channel` — volume, success rate, latency and TTFT
//!   percentiles, tokens and cost per `channel`, `group`, `provider`, `key` or `model`.
//! - `GET /admin/stats/daily?days=30[&by=group]` — cost, requests and tokens per local day.
//! - `GET /admin/channels` — breaker, cooldown, in-flight, EWMAs and today's quota use.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Caller;
use super::error::ApiError;
use crate::app::App;
use crate::stats::{Breaker, now_ms};
use crate::store::StatRow;

#[derive(Deserialize)]
pub struct StatsQuery {
    window: Option<String>,
    by: Option<String>,
}

#[derive(Deserialize)]
pub struct DailyQuery {
    days: Option<u32>,
    by: Option<String>,
}

pub(super) fn admin_only(caller: &Caller) -> Result<(), ApiError> {
    if caller.admin {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            Some("admin_required"),
            "The admin API needs the master key.",
        ))
    }
}

/// `30m`, `24h`, `7d` → milliseconds.
fn parse_window(w: &str) -> Option<u64> {
    let (n, unit) = w.split_at(w.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    let ms = match unit {
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(ms)
}

/// The dimension value a row belongs to.
fn dimension(by: &str) -> Result<fn(&StatRow) -> Option<String>, ApiError> {
    Ok(match by {
        "channel" => |r| r.channel_id.clone(),
        "provider" => |r| r.provider.clone(),
        "group" => |r| r.group_name.clone(),
        "key" => |r| Some(r.key_id.clone()),
        "model" => |r| Some(r.requested_model.clone()),
        other => {
            return Err(ApiError::invalid_param(
                "by",
                format!("`by` must be channel, provider, group, key or model, not `{other}`"),
            ));
        }
    })
}

fn percentiles(mut v: Vec<u64>) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    json!({"p50": at(0.5), "p95": at(0.95), "p99": at(0.99), "max": v[v.len() - 1]})
}

/// Totals for one group of rows.
fn summarize(rows: &[&StatRow]) -> Value {
    let requests: HashSet<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
    let ok: HashSet<&str> = rows
        .iter()
        .filter(|r| r.success)
        .map(|r| r.request_id.as_str())
        .collect();
    let attempts = rows.iter().filter(|r| r.channel_id.is_some()).count();
    let cost: i64 = rows.iter().map(|r| r.cost_micros).sum();
    json!({
        "requests": requests.len(),
        "successful_requests": ok.len(),
        "success_rate": if requests.is_empty() { 1.0 } else { ok.len() as f64 / requests.len() as f64 },
        "attempts": attempts,
        "failed_attempts": rows.iter().filter(|r| r.channel_id.is_some() && !r.success).count(),
        "latency_ms": percentiles(rows.iter().filter(|r| r.success).map(|r| r.latency_ms).collect()),
        "ttft_ms": percentiles(rows.iter().filter(|r| r.success).filter_map(|r| r.ttft_ms).collect()),
        "prompt_tokens": rows.iter().map(|r| r.prompt_tokens).sum::<u64>(),
        "completion_tokens": rows.iter().map(|r| r.completion_tokens).sum::<u64>(),
        "cost_micros": cost,
        "cost_usd": cost as f64 / 1e6,
    })
}

/// `GET /admin/stats`.
pub async fn stats(
    State(app): State<Arc<App>>,
    caller: Caller,
    Query(q): Query<StatsQuery>,
) -> Result<Response, ApiError> {
    admin_only(&caller)?;
    let window = q.window.as_deref().unwrap_or("24h");
    let window_ms = parse_window(window).ok_or_else(|| {
        ApiError::invalid_param(
            "window",
            format!("`window` must look like 30m, 24h or 7d, not `{window}`"),
        )
    })?;
    let by = q.by.as_deref().unwrap_or("channel");
    let key_of = dimension(by)?;
    let since = now_ms().saturating_sub(window_ms);
    let rows = app
        .store
        .rows_since(since)
        .await
        .map_err(|e| ApiError::unavailable(format!("statistics are unavailable: {e}")))?;
    let mut groups: BTreeMap<String, Vec<&StatRow>> = BTreeMap::new();
    for r in &rows {
        if let Some(k) = key_of(r) {
            groups.entry(k).or_default().push(r);
        }
    }
    let all: Vec<&StatRow> = rows.iter().collect();
    let data: Vec<Value> = groups
        .iter()
        .map(|(k, rows)| {
            let mut v = summarize(rows);
            v[by] = json!(k);
            v
        })
        .collect();
    Ok(axum::Json(json!({"window": window, "since_ms": since, "by": by, "total": summarize(&all), "data": data})).into_response())
}

/// `GET /admin/stats/daily`.
pub async fn daily(
    State(app): State<Arc<App>>,
    caller: Caller,
    Query(q): Query<DailyQuery>,
) -> Result<Response, ApiError> {
    admin_only(&caller)?;
    let days = q.days.unwrap_or(30).clamp(1, 366);
    let key_of = q.by.as_deref().map(dimension).transpose()?;
    let cfg = app.config.load();
    let (today, _) = cfg.clock.day(now_ms());
    let since = today
        .start_ms
        .saturating_sub(u64::from(days - 1) * 86_400_000);
    let rows = app
        .store
        .rows_since(since)
        .await
        .map_err(|e| ApiError::unavailable(format!("statistics are unavailable: {e}")))?;
    let mut buckets: BTreeMap<(String, String), Vec<&StatRow>> = BTreeMap::new();
    for r in &rows {
        let dim = match key_of {
            Some(f) => match f(r) {
                Some(k) => k,
                None => continue,
            },
            None => String::new(),
        };
        buckets
            .entry((cfg.clock.date_of(r.created_at_ms), dim))
            .or_default()
            .push(r);
    }
    let data: Vec<Value> = buckets
        .iter()
        .map(|((date, dim), rows)| {
            let requests: HashSet<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
            let cost: i64 = rows.iter().map(|r| r.cost_micros).sum();
            let mut v = json!({"date": date, "requests": requests.len(),
                "tokens": rows.iter().map(|r| r.prompt_tokens + r.completion_tokens).sum::<u64>(),
                "cost_micros": cost, "cost_usd": cost as f64 / 1e6});
            if let Some(by) = q.by.as_deref() {
                v[by] = json!(dim);
            }
            v
        })
        .collect();
    Ok(axum::Json(json!({"days": days, "by": q.by, "data": data})).into_response())
}

/// `GET /admin/channels`.
pub async fn channels(State(app): State<Arc<App>>, caller: Caller) -> Result<Response, ApiError> {
    admin_only(&caller)?;
    let cfg = app.config.load();
    let now = now_ms();
    let (day, _) = cfg.clock.day(now);
    let data: Vec<Value> = cfg
        .channels
        .iter()
        .map(|ch| {
            let s = app.stats.channel(&ch.id);
            let snap = s.snapshot();
            let breaker = match s.breaker(now) {
                Breaker::Closed => json!({"state": "closed"}),
                Breaker::Open(until) => json!({"state": "open", "until_ms": until}),
                Breaker::HalfOpen => json!({"state": "half_open"}),
            };
            json!({
                "id": ch.id, "provider": ch.provider, "model": ch.model,
                "disabled": ch.disabled, "breaker": breaker, "cooling_until_ms": s.cooling(now),
                "in_flight": snap.in_flight, "success_rate": snap.success_rate,
                "consecutive_failures": snap.consecutive_failures,
                "latency_ms": snap.latency_ms, "ttft_ms": snap.ttft_ms, "tokens_per_second": snap.tokens_per_second,
                "today": {
                    "requests": s.quota.requests.used(day.id), "daily_limit": ch.daily_limit,
                    "tokens": s.quota.tokens.used(day.id), "daily_token_limit": ch.daily_token_limit,
                    "cost_micros": s.quota.cost_micros.used(day.id), "daily_cost_limit_micros": ch.daily_cost_limit_micros,
                },
            })
        })
        .collect();
    Ok(axum::Json(json!({"data": data})).into_response())
}
