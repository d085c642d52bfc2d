//! Bearer authentication with gateway keys. Keys are only ever compared as SHA-256 hashes.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::app::App;

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `master`, or the key record's id.
    pub key_id: String,
    /// `None`: every model and group.
    pub allowed: Option<Vec<String>>,
    /// The key's budget.
    pub budget: crate::budget::Limits,
    /// Requests per minute; `None` = no limit.
    pub rpm_limit: Option<u32>,
    /// Tokens per minute; `None` = no limit.
    pub tpm_limit: Option<u32>,
    /// May use the admin API (the master key).
    pub admin: bool,
}

impl Caller {
    pub fn may_use(&self, model: &str) -> bool {
        self.allowed
            .as_ref()
            .is_none_or(|a| a.iter().any(|m| m == model))
    }
}

/// Compares without an early exit, so timing reveals nothing about where inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<App>,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .or_else(|| parts.headers.get("x-api-key").and_then(|v| v.to_str().ok()));
        let Some(raw) = header else {
            return Err(ApiError::unauthorized(
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
            ));
        };
        let key = raw
            .strip_prefix("Bearer ")
            .or_else(|| raw.strip_prefix("bearer "))
            .unwrap_or(raw)
            .trim();
        if key.is_empty() {
            return Err(ApiError::unauthorized(
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
            ));
        }
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        if let Some(master_hash) = app.master_hash()
            && constant_time_eq(&hash, master_hash)
        {
            return Ok(Caller {
                key_id: "master".into(),
                allowed: None,
                budget: crate::budget::Limits::default(),
                rpm_limit: None,
                tpm_limit: None,
                admin: true,
            });
        }
        match app.key_by_hash(hash).await {
            Ok(Some(rec)) => Ok(Caller {
                key_id: rec.id,
                allowed: rec.allowed_models,
                budget: rec.budget,
                rpm_limit: rec.rpm_limit,
                tpm_limit: rec.tpm_limit,
                admin: false,
            }),
            Ok(None) => Err(ApiError::unauthorized("Incorrect API key provided.")),
            Err(e) => {
                tracing::error!("key lookup failed: {e}");
                Err(ApiError::unavailable(
                    "The gateway cannot check keys right now.",
                ))
            }
        }
    }
}
