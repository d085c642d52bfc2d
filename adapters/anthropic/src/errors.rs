//! Anthropic error bodies and statuses → error classes.

use smart_router_sdk::json::Value;
use smart_router_sdk::{ErrorClass, ProviderError};

/// Classifies an error from its status, headers and body: Anthropic's
/// `{"type": "error", "error": {"type": …, "message": …}}`, or anything else (`Null` when the
/// body is not JSON). In-body and in-stream errors pass status 200.
pub fn classify(status: u16, headers: &[(String, String)], body: &Value) -> ProviderError {
    let err = body.get("error").filter(|e| e.is_object()).unwrap_or(body);
    let kind = err.get("type").and_then(Value::as_str).unwrap_or("");
    let message = err
        .get("message")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .map_or_else(|| fallback_message(status, kind), str::to_string);
    let lower = message.to_ascii_lowercase();
    let timed_out = status == 408 || status == 504;

    let class = if kind == "billing_error" || lower.contains("credit balance") {
        ErrorClass::QuotaExhausted
    } else {
        match kind {
            "rate_limit_error" => ErrorClass::RateLimited,
            "overloaded_error" => ErrorClass::ServerError,
            "api_error" if !timed_out => ErrorClass::ServerError,
            "authentication_error" | "permission_error" => ErrorClass::Auth,
            "not_found_error" => ErrorClass::ModelNotFound,
            "request_too_large" => ErrorClass::ContextTooLong,
            "timeout_error" => ErrorClass::Timeout,
            "invalid_request_error" if too_long(&lower) => ErrorClass::ContextTooLong,
            "invalid_request_error" => ErrorClass::BadRequest,
            _ => by_status(status),
        }
    };
    let mut e = ProviderError::new(class, message);
    e.retry_after_ms = retry_after(headers);
    e
}

/// "prompt is too long: 215000 tokens > 200000 maximum", or input plus `max_tokens` over the
/// context window.
fn too_long(lower: &str) -> bool {
    lower.contains("prompt is too long") || lower.contains("exceed context limit")
}

fn by_status(status: u16) -> ErrorClass {
    match status {
        429 => ErrorClass::RateLimited,
        401 | 403 => ErrorClass::Auth,
        402 => ErrorClass::QuotaExhausted,
        404 => ErrorClass::ModelNotFound,
        413 => ErrorClass::ContextTooLong,
        408 | 504 => ErrorClass::Timeout,
        400..=499 => ErrorClass::BadRequest,
        // 529 is Anthropic's "overloaded".
        500..=599 => ErrorClass::ServerError,
        _ => ErrorClass::Unknown,
    }
}

fn fallback_message(status: u16, kind: &str) -> String {
    if kind.is_empty() {
        format!("upstream status {status}")
    } else {
        format!("upstream status {status}: {kind}")
    }
}

/// `retry-after` in seconds, as Anthropic sends it.
fn retry_after(headers: &[(String, String)]) -> Option<u64> {
    let (_, value) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))?;
    let secs = value.trim().parse::<f64>().ok()?;
    Some((secs.max(0.0) * 1000.0) as u64)
}
