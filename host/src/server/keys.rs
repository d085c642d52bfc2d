//! Gateway keys over the admin API (master key), as `smart-router keys` manages them from a shell:
//!
//! - `POST /admin/keys` — creates a key: `{"name": "…", "models": ["…"], "daily_budget": 5.0,
//!   "monthly_budget": 100.0, "rpm_limit": 60, "tpm_limit": 100000}` (all but `name` optional).
//!   The answer holds the key itself, once; only its SHA-256 is stored.
//! - `GET /admin/keys` — every key: id, name, models, budgets, when created, whether revoked.
//! - `DELETE /admin/keys/{id}` — revokes a key: this instance refuses it from the next request,
//!   others sharing the database once their 30-second key cache lets it go.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::admin::admin_only;
use super::auth::Caller;
use super::error::ApiError;
use crate::app::App;
use crate::budget::Limits;
use crate::store::{KeyInfo, KeyLimits, KeyRecord, StoreError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    name: String,
    models: Option<Vec<String>>,
    daily_budget: Option<f64>,
    monthly_budget: Option<f64>,
    rpm_limit: Option<u32>,
    tpm_limit: Option<u32>,
}

fn store_failed(e: StoreError) -> ApiError {
    tracing::error!("key store failed: {e}");
    ApiError::unavailable("The gateway cannot reach its database right now.")
}

/// Dollars as integer micro-dollars; a budget must be a finite amount, zero or more.
fn micros(param: &'static str, dollars: Option<f64>) -> Result<Option<u64>, ApiError> {
    match dollars {
        None => Ok(None),
        Some(d) if (0.0..1e12).contains(&d) => Ok(Some((d * 1e6).round() as u64)),
        Some(d) => Err(ApiError::invalid_param(
            param,
            format!("`{param}` must be an amount of US dollars, zero or more, not {d}."),
        )),
    }
}

fn key_object(key: &KeyRecord, created_at_ms: u64, revoked: bool) -> Value {
    let dollars = |m: Option<u64>| m.map(|m| m as f64 / 1e6);
    json!({
        "id": key.id,
        "object": "gateway.key",
        "name": key.name,
        "models": key.allowed_models,
        "daily_budget": dollars(key.budget.daily_micros),
        "monthly_budget": dollars(key.budget.monthly_micros),
        "rpm_limit": key.rpm_limit,
        "tpm_limit": key.tpm_limit,
        "created_at": created_at_ms / 1000,
        "revoked": revoked,
    })
}

pub async fn create(
    State(app): State<Arc<App>>,
    caller: Caller,
    body: Result<Json<NewKey>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    admin_only(&caller)?;
    let Json(new) =
        body.map_err(|e| ApiError::invalid(format!("Bad key request: {}", e.body_text())))?;
    let name = new.name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(ApiError::invalid_param(
            "name",
            "`name` must be 1 to 200 characters.",
        ));
    }
    let models = match new.models {
        None => None,
        Some(m) if m.is_empty() || m.iter().any(|m| m.trim().is_empty() || m.contains(',')) => {
            return Err(ApiError::invalid_param(
                "models",
                "`models` must list at least one model or group name (without commas); leave it out for every model.",
            ));
        }
        Some(m) => Some(m.iter().map(|m| m.trim().to_string()).collect::<Vec<_>>()),
    };
    let budget = Limits {
        daily_micros: micros("daily_budget", new.daily_budget)?,
        monthly_micros: micros("monthly_budget", new.monthly_budget)?,
    };
    for (param, limit, unit) in [
        ("rpm_limit", new.rpm_limit, "request"),
        ("tpm_limit", new.tpm_limit, "token"),
    ] {
        if limit == Some(0) {
            return Err(ApiError::invalid_param(
                param,
                format!(
                    "`{param}` must be at least 1 {unit} per minute; leave it out for no limit."
                ),
            ));
        }
    }
    let (id, key, hash) = crate::app::mint_key();
    let joined = models.as_ref().map(|m| m.join(","));
    let limits = KeyLimits {
        budget,
        rpm: new.rpm_limit,
        tpm: new.tpm_limit,
    };
    app.store
        .create_key(&id, name, &hash, joined.as_deref(), limits)
        .await
        .map_err(store_failed)?;
    tracing::info!(key_id = %id, name, "created a gateway key");
    let record = KeyRecord {
        id,
        name: name.to_string(),
        allowed_models: models,
        budget,
        rpm_limit: new.rpm_limit,
        tpm_limit: new.tpm_limit,
    };
    let mut out = key_object(&record, crate::stats::now_ms(), false);
    out["key"] = Value::String(key);
    Ok(Json(out))
}

pub async fn list(State(app): State<Arc<App>>, caller: Caller) -> Result<Json<Value>, ApiError> {
    admin_only(&caller)?;
    let keys = app.store.list_keys().await.map_err(store_failed)?;
    let data: Vec<Value> = keys
        .iter()
        .map(
            |KeyInfo {
                 key,
                 created_at_ms,
                 revoked,
             }| key_object(key, *created_at_ms, *revoked),
        )
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

pub async fn revoke(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    admin_only(&caller)?;
    if !app.store.revoke_key(&id).await.map_err(store_failed)? {
        return Err(ApiError {
            param: Some("id"),
            ..ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("key_not_found"),
                format!("There is no key with the id `{id}`: GET /admin/keys lists them."),
            )
        });
    }
    app.forget_key(&id);
    tracing::info!(key_id = %id, "revoked a gateway key");
    Ok(Json(
        json!({"id": id, "object": "gateway.key", "deleted": true}),
    ))
}
