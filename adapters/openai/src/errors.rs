//! OpenAI-style error bodies and statuses → error classes.

use smart_router_sdk::json::Value;
use smart_router_sdk::{ErrorClass, ProviderError};

/// Classifies an error from its status, headers and body (`{"error": {…}}`, vLLM's
/// `{"object": "error", …}`, or anything else).
pub fn classify(status: u16, headers: &[(String, String)], body: &Value) -> ProviderError {
    let err = body.get("error").filter(|e| e.is_object()).unwrap_or(body);
    let text = |k: &str| {
        err.get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_ascii_lowercase()
    };
    let message = err
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| {
            body.get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| format!("upstream status {status}"));
    let code = text("code");
    let kind = text("type");
    let lower = message.to_ascii_lowercase();
    let has =
        |needle: &str| code.contains(needle) || kind.contains(needle) || lower.contains(needle);
    // vLLM and some proxies put the HTTP status in the body.
    let status = if status == 200 {
        err.get("code")
            .and_then(Value::as_u64)
            .map_or(500, |c| c as u16)
    } else {
        status
    };

    let class = if has("insufficient_quota")
        || has("billing")
        || has("credit")
        || has("quota exceeded")
        || status == 402
    {
        ErrorClass::QuotaExhausted
    } else if status == 429 || has("rate_limit") || has("rate limit") {
        ErrorClass::RateLimited
    } else if status == 401 || status == 403 || has("invalid_api_key") || has("authentication") {
        ErrorClass::Auth
    } else if has("context_length")
        || has("context length")
        || has("maximum context")
        || has("too many tokens")
    {
        ErrorClass::ContextTooLong
    } else if has("content_filter") || has("content_policy") || has("safety") {
        ErrorClass::ContentFiltered
    } else if status == 404 || has("model_not_found") || (has("model") && has("does not exist")) {
        ErrorClass::ModelNotFound
    } else if status == 408 || status == 504 || status == 524 || has("timeout") {
        ErrorClass::Timeout
    } else if (400..500).contains(&status) {
        ErrorClass::BadRequest
    } else if status >= 500 {
        ErrorClass::ServerError
    } else {
        ErrorClass::Unknown
    };
    let mut e = ProviderError::new(class, message);
    e.retry_after_ms = retry_after(headers);
    if class == ErrorClass::RateLimited && e.retry_after_ms.is_none() {
        // Groq and OpenAI say "Please try again in 1.5s" in the message.
        e.retry_after_ms = seconds_in_message(&lower);
    }
    e
}

/// `Retry-After` (seconds) or `retry-after-ms`.
fn retry_after(headers: &[(String, String)]) -> Option<u64> {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    };
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        return Some(ms.max(0.0) as u64);
    }
    get("retry-after")
        .and_then(|v| v.parse::<f64>().ok())
        .map(|s| (s.max(0.0) * 1000.0) as u64)
}

fn seconds_in_message(lower: &str) -> Option<u64> {
    let at = lower.find("try again in ")? + "try again in ".len();
    let rest = &lower[at..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let n: f64 = rest[..end].parse().ok()?;
    let unit = &rest[end..];
    Some(if unit.starts_with("ms") {
        n as u64
    } else {
        (n * 1000.0) as u64
    })
}
