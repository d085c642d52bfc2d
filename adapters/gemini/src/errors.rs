//! Google API error bodies and statuses → error classes.

use smart_router_sdk::json::Value;
use smart_router_sdk::{ErrorClass, ProviderError};

const RETRY_INFO: &str = "type.googleapis.com/google.rpc.RetryInfo";
const QUOTA_FAILURE: &str = "type.googleapis.com/google.rpc.QuotaFailure";

/// Classifies an error from its status, headers and body: Google's
/// `{"error": {"code": 429, "message": …, "status": "RESOURCE_EXHAUSTED", "details": […]}}`
/// (also inside a one-element list), or anything else (`Null` when the body is not JSON).
/// In-body and in-stream errors pass status 200; the body's `code` stands in for it then.
pub fn classify(status: u16, headers: &[(String, String)], body: &Value) -> ProviderError {
    let body = body
        .as_array()
        .and_then(|list| list.first())
        .unwrap_or(body);
    let err = body.get("error").filter(|e| e.is_object()).unwrap_or(body);
    let code = err
        .get("code")
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok());
    let status = match (status, code) {
        (200, Some(code)) => code,
        (200, None) => 500,
        _ => status,
    };
    let rpc_status = err.get("status").and_then(Value::as_str).unwrap_or("");
    let message = err
        .get("message")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .map_or_else(|| fallback_message(status, rpc_status), str::to_string);
    let lower = message.to_ascii_lowercase();
    let details = err
        .get("details")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);

    let key_invalid = details
        .iter()
        .any(|d| d.get("reason").and_then(Value::as_str) == Some("API_KEY_INVALID"))
        || lower.contains("api key not valid")
        || lower.contains("api key expired");
    let mut temporary = None;
    let class = if key_invalid {
        ErrorClass::Auth
    } else if rpc_status == "FAILED_PRECONDITION" {
        // Billing not enabled, or the API is not available in the caller's location.
        temporary = Some(false);
        ErrorClass::QuotaExhausted
    } else {
        match http_status(rpc_status).unwrap_or(status) {
            429 if quota_gone(details, &lower) => ErrorClass::QuotaExhausted,
            429 => ErrorClass::RateLimited,
            401 | 403 => ErrorClass::Auth,
            402 => ErrorClass::QuotaExhausted,
            404 => ErrorClass::ModelNotFound,
            413 => ErrorClass::ContextTooLong,
            400 | 422 if too_long(&lower) => ErrorClass::ContextTooLong,
            408 | 504 => ErrorClass::Timeout,
            400..=499 => ErrorClass::BadRequest,
            500..=599 => ErrorClass::ServerError,
            _ => ErrorClass::Unknown,
        }
    };
    let mut e = ProviderError::new(class, message);
    if let Some(t) = temporary {
        e.temporary = t;
    }
    e.retry_after_ms = retry_delay(details).or_else(|| retry_after(headers));
    e
}

/// The HTTP status Google maps each RPC status to.
fn http_status(rpc_status: &str) -> Option<u16> {
    Some(match rpc_status {
        "INVALID_ARGUMENT" | "OUT_OF_RANGE" => 400,
        "UNAUTHENTICATED" => 401,
        "PERMISSION_DENIED" => 403,
        "NOT_FOUND" => 404,
        "RESOURCE_EXHAUSTED" => 429,
        "INTERNAL" | "UNKNOWN" | "DATA_LOSS" => 500,
        "UNAVAILABLE" => 503,
        "DEADLINE_EXCEEDED" => 504,
        _ => return None,
    })
}

/// A 429 that waiting a minute will not fix: a daily quota, or the plan / billing. Google's
/// `QuotaFailure` details name the quota (`GenerateRequestsPerDayPerProjectPerModel-FreeTier`);
/// without them the message decides.
fn quota_gone(details: &[Value], lower: &str) -> bool {
    let quotas: Vec<String> = details
        .iter()
        .filter(|d| d.get("@type").and_then(Value::as_str) == Some(QUOTA_FAILURE))
        .filter_map(|d| d.get("violations").and_then(Value::as_array))
        .flatten()
        .flat_map(|v| ["quotaId", "quotaMetric"].map(|k| v.get(k).and_then(Value::as_str)))
        .flatten()
        .map(str::to_ascii_lowercase)
        .collect();
    if !quotas.is_empty() {
        return quotas
            .iter()
            .any(|q| q.contains("perday") || q.contains("per_day"));
    }
    ["per day", "daily", "billing", "credit", "your plan"]
        .iter()
        .any(|needle| lower.contains(needle))
}

/// "The input token count (1234567) exceeds the maximum number of tokens allowed (1048576)."
fn too_long(lower: &str) -> bool {
    lower.contains("exceeds the maximum number of tokens")
        || (lower.contains("token count") && lower.contains("exceed"))
        || lower.contains("too many tokens")
        || lower.contains("context length")
}

fn fallback_message(status: u16, rpc_status: &str) -> String {
    if rpc_status.is_empty() {
        format!("upstream status {status}")
    } else {
        format!("upstream status {status}: {rpc_status}")
    }
}

/// `RetryInfo.retryDelay`, a protobuf duration such as `"7s"` or `"1.500s"`.
fn retry_delay(details: &[Value]) -> Option<u64> {
    let delay = details
        .iter()
        .filter(|d| d.get("@type").and_then(Value::as_str) == Some(RETRY_INFO))
        .find_map(|d| d.get("retryDelay").and_then(Value::as_str))?;
    let secs = delay.trim().strip_suffix('s')?.parse::<f64>().ok()?;
    Some((secs.max(0.0) * 1000.0) as u64)
}

/// `retry-after` in seconds.
fn retry_after(headers: &[(String, String)]) -> Option<u64> {
    let (_, value) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))?;
    let secs = value.trim().parse::<f64>().ok()?;
    Some((secs.max(0.0) * 1000.0) as u64)
}
