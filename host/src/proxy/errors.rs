//! Provider errors: classes, the client's view of them, and keeping keys out of messages.

use axum::http::StatusCode;

use crate::components::adapter_api::exports::smart_router::gateway::translation::{
    ErrorClass, ProviderError,
};
use crate::config::Provider;
use crate::server::error::ApiError;

/// The client's error from a provider's verdict that the request itself is at fault.
pub(super) fn client_error(perr: &ProviderError, provider: &Provider) -> ApiError {
    let code = if perr.class == ErrorClass::ContentFiltered {
        Some("content_filter")
    } else {
        None
    };
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        code,
        format!(
            "The provider refused the request: {}",
            redact(&perr.message, provider)
        ),
    )
}

/// Never let a provider echo its key back to a client or a log.
pub fn redact(message: &str, provider: &Provider) -> String {
    let mut out: String = message.chars().take(1000).collect();
    if let Some(key) = &provider.api_key
        && key.expose().len() >= 4
    {
        out = out.replace(key.expose(), "<redacted>");
    }
    out
}

/// Used when the adapter cannot classify: the status decides.
pub(super) fn fallback_classification(status: u16, headers: &[(String, String)]) -> ProviderError {
    let class = match status {
        429 => ErrorClass::RateLimited,
        401 | 403 => ErrorClass::Auth,
        402 => ErrorClass::QuotaExhausted,
        404 => ErrorClass::ModelNotFound,
        400 | 422 => ErrorClass::BadRequest,
        408 | 504 => ErrorClass::Timeout,
        _ => ErrorClass::ServerError,
    };
    let retry_after_ms = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
        .and_then(|(_, v)| v.trim().parse::<f64>().ok())
        .map(|s| (s * 1000.0) as u64);
    ProviderError {
        class,
        temporary: status >= 500 || status == 429,
        retry_after_ms,
        message: format!("upstream status {status}"),
    }
}

pub fn class_name(c: ErrorClass) -> &'static str {
    match c {
        ErrorClass::RateLimited => "rate_limited",
        ErrorClass::Auth => "auth",
        ErrorClass::QuotaExhausted => "quota_exhausted",
        ErrorClass::ContextTooLong => "context_too_long",
        ErrorClass::ContentFiltered => "content_filtered",
        ErrorClass::BadRequest => "bad_request",
        ErrorClass::ModelNotFound => "model_not_found",
        ErrorClass::ServerError => "server_error",
        ErrorClass::Timeout => "timeout",
        ErrorClass::Unknown => "unknown",
        ErrorClass::Unsupported => "unsupported",
    }
}
