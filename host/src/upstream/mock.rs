//! The built-in mock provider (`base_url: mock://`): an in-process OpenAI-compatible upstream, so
//! the gateway answers out of the box with no network and no key.
//!
//! It echoes the last user message (under each of `n` choices), calls the first tool when the
//! request offers tools, streams word by word, reports usage, answers `/embeddings` with
//! deterministic unit vectors (the same text always gets the same vector), and fails on purpose
//! for models named `mock-error-<status>`. Requests to `…/messages` get Anthropic's Messages
//! format instead (answers, `tool_use`, and the event stream), and requests to
//! `…:generateContent` / `…:streamGenerateContent` Gemini's, so the `anthropic` and `gemini`
//! adapters run offline too.

use bytes::Bytes;
use serde_json::{Value, json};

use super::{UpstreamError, UpstreamResponse};
use crate::components::adapter_api::exports::smart_router::gateway::translation::HttpRequest;

pub fn respond(req: &HttpRequest) -> UpstreamResponse {
    let embeddings = req.path.ends_with("/embeddings");
    let anthropic = req.path.ends_with("/messages");
    let gemini =
        req.path.contains(":generateContent") || req.path.contains(":streamGenerateContent");
    if !embeddings && !anthropic && !gemini && !req.path.ends_with("/chat/completions") {
        return error(
            404,
            "not_found_error",
            &format!(
                "the mock serves /chat/completions and /embeddings, not {}",
                req.path
            ),
        );
    }
    let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
        return error(
            400,
            "invalid_request_error",
            "the mock received a body that is not JSON",
        );
    };
    if gemini {
        return generate(&req.path, &body);
    }
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock")
        .to_string();
    if let Some(code) = model
        .strip_prefix("mock-error-")
        .and_then(|c| c.parse::<u16>().ok())
    {
        return error(
            code,
            "mock_error",
            &format!("the mock fails with {code} for model {model}"),
        );
    }
    if embeddings {
        return embed(&body, &model);
    }
    if anthropic {
        return messages(&body, &model);
    }
    let prompt_tokens = (body
        .get("messages")
        .map(|m| m.to_string().len())
        .unwrap_or(0)
        / 4)
    .max(1) as u64;
    let tool = body
        .get("tools")
        .and_then(Value::as_array)
        .and_then(|t| t.first())
        .filter(|_| body.get("tool_choice").and_then(Value::as_str) != Some("none"))
        .and_then(|t| t.pointer("/function/name"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let said = last_user_text(&body);
    let text = format!("Hello from the built-in mock ({model}). You said: {said}");
    let words: Vec<String> = text.split_inclusive(' ').map(str::to_string).collect();
    // `n` answers: the same one under each index, as OpenAI numbers choices.
    let n = body
        .get("n")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .clamp(1, 128);
    let completion_tokens = n * if tool.is_some() {
        8
    } else {
        words.len() as u64
    };
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens});
    let id = format!("chatcmpl-mock{:016x}", fastrand::u64(..));
    let created = crate::stats::now_ms() / 1000;
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);

    if !stream {
        let message = match &tool {
            Some(name) => json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_mock_0", "type": "function", "function": {"name": name, "arguments": "{}"}}]}),
            None => json!({"role": "assistant", "content": text}),
        };
        let finish = if tool.is_some() { "tool_calls" } else { "stop" };
        let choices: Vec<Value> = (0..n)
            .map(|i| json!({"index": i, "message": message, "logprobs": null, "finish_reason": finish}))
            .collect();
        let out = json!({"id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": choices, "usage": usage});
        return ok("application/json", out.to_string());
    }

    let mut events = Vec::new();
    for i in 0..n {
        let chunk = |delta: Value, finish: Value| {
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": i, "delta": delta, "logprobs": null, "finish_reason": finish}]})
        };
        events.push(chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        ));
        match &tool {
            Some(name) => {
                events.push(chunk(
                    json!({"tool_calls": [{"index": 0, "id": "call_mock_0", "type": "function",
                "function": {"name": name, "arguments": ""}}]}),
                    Value::Null,
                ));
                for piece in ["{", "}"] {
                    events.push(chunk(
                        json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                        Value::Null,
                    ));
                }
                events.push(chunk(json!({}), json!("tool_calls")));
            }
            None => {
                events.extend(
                    words
                        .iter()
                        .map(|w| chunk(json!({"content": w}), Value::Null)),
                );
                events.push(chunk(json!({}), json!("stop")));
            }
        }
    }
    if body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true)
    {
        events.push(json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [], "usage": usage}));
    }
    let mut sse = String::new();
    for e in events {
        sse.push_str("data: ");
        sse.push_str(&e.to_string());
        sse.push_str("\n\n");
    }
    sse.push_str("data: [DONE]\n\n");
    ok("text/event-stream", sse)
}

/// Anthropic's `POST /v1/messages`: the same echo in the Messages format.
fn messages(body: &Value, model: &str) -> UpstreamResponse {
    let said = last_user_text(body);
    let text = format!("Hello from the built-in mock ({model}). You said: {said}");
    let words: Vec<&str> = text.split_inclusive(' ').collect();
    let input_tokens = (body.to_string().len() / 4).max(1);
    let tool = body
        .pointer("/tools/0/name")
        .and_then(Value::as_str)
        .filter(|_| body.pointer("/tool_choice/type").and_then(Value::as_str) != Some("none"));
    let id = format!("msg_mock{:016x}", fastrand::u64(..));
    let output_tokens = if tool.is_some() { 8 } else { words.len() };
    let (content, stop) = match tool {
        Some(name) => (
            json!([{"type": "tool_use", "id": "toolu_mock_0", "name": name, "input": {}}]),
            "tool_use",
        ),
        None => (json!([{"type": "text", "text": text}]), "end_turn"),
    };
    if !body.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        let out = json!({"id": id, "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop, "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}});
        return ok("application/json", out.to_string());
    }
    let mut events = vec![
        (
            "message_start",
            json!({"type": "message_start", "message": {"id": id, "type": "message",
            "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1}}}),
        ),
        ("ping", json!({"type": "ping"})),
    ];
    match tool {
        Some(name) => {
            events.push(("content_block_start", json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "tool_use", "id": "toolu_mock_0", "name": name, "input": {}}})));
            for piece in ["{", "}"] {
                events.push((
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": piece}}),
                ));
            }
        }
        None => {
            events.push((
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
            ));
            for w in &words {
                events.push((
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": w}}),
                ));
            }
        }
    }
    events.push((
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(("message_delta", json!({"type": "message_delta",
        "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": output_tokens}})));
    events.push(("message_stop", json!({"type": "message_stop"})));
    let mut sse = String::new();
    for (event, data) in events {
        sse.push_str(&format!("event: {event}\ndata: {data}\n\n"));
    }
    ok("text/event-stream", sse)
}

/// Gemini's `models/{model}:generateContent` and `:streamGenerateContent?alt=sse`.
fn generate(path: &str, body: &Value) -> UpstreamResponse {
    let model = path
        .rsplit('/')
        .next()
        .and_then(|m| m.split(':').next())
        .unwrap_or("mock");
    let said = body
        .get("contents")
        .and_then(Value::as_array)
        .and_then(|c| {
            c.iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        })
        .and_then(|m| m.pointer("/parts/0/text"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .chars()
        .take(200)
        .collect::<String>();
    let text = format!("Hello from the built-in mock ({model}). You said: {said}");
    let tool = body
        .pointer("/tools/0/functionDeclarations/0/name")
        .and_then(Value::as_str);
    let prompt = (body.to_string().len() / 4).max(1);
    let words: Vec<&str> = text.split_inclusive(' ').collect();
    let output = if tool.is_some() { 8 } else { words.len() };
    let usage = json!({"promptTokenCount": prompt, "candidatesTokenCount": output, "totalTokenCount": prompt + output});
    let candidate = |parts: Value, finish: Option<&str>| {
        let mut c = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
        if let Some(f) = finish {
            c["finishReason"] = json!(f);
        }
        c
    };
    if !path.contains(":streamGenerateContent") {
        let parts = match tool {
            Some(name) => json!([{"functionCall": {"name": name, "args": {}}}]),
            None => json!([{"text": text}]),
        };
        let out = json!({"candidates": [candidate(parts, Some("STOP"))], "usageMetadata": usage, "modelVersion": model});
        return ok("application/json", out.to_string());
    }
    let mut chunks: Vec<Value> = match tool {
        Some(name) => vec![
            json!({"candidates": [candidate(json!([{"functionCall": {"name": name, "args": {}}}]), None)]}),
        ],
        None => words
            .iter()
            .map(|w| json!({"candidates": [candidate(json!([{"text": w}]), None)]}))
            .collect(),
    };
    chunks.push(json!({"candidates": [candidate(json!([{"text": ""}]), Some("STOP"))], "usageMetadata": usage, "modelVersion": model}));
    let mut sse = String::new();
    for c in chunks {
        sse.push_str(&format!("data: {c}\r\n\r\n"));
    }
    ok("text/event-stream", sse)
}

fn last_user_text(body: &Value) -> String {
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return String::new();
    };
    let Some(msg) = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
    else {
        return String::new();
    };
    let text = match msg.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    };
    text.chars().take(200).collect()
}

fn ok(content_type: &str, body: String) -> UpstreamResponse {
    UpstreamResponse {
        status: 200,
        headers: vec![("content-type".into(), content_type.into())],
        body: Box::pin(futures_util::stream::iter([Ok::<_, UpstreamError>(
            Bytes::from(body),
        )])),
    }
}

fn error(status: u16, kind: &str, message: &str) -> UpstreamResponse {
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
        .to_string();
    UpstreamResponse {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: Box::pin(futures_util::stream::iter([Ok::<_, UpstreamError>(
            Bytes::from(body),
        )])),
    }
}

/// Faults the HTTP mock injects, for benchmarks of failover: shares of requests, in percent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Answered `500` with an OpenAI error body.
    pub error_percent: u8,
    /// Answered `429` with `Retry-After: 1`.
    pub rate_limit_percent: u8,
}

/// The built-in mock as a real HTTP server (`smart-router mock-upstream`), for benchmarks and
/// demos: `POST /v1/chat/completions`, `/v1/embeddings` and (Anthropic's format)
/// `/v1/messages`, answering after `delay` when one is set, failing a share of requests as
/// `faults` says.
pub fn router(delay: std::time::Duration, faults: Faults) -> axum::Router {
    use axum::body::{Body, Bytes};
    use axum::response::{IntoResponse, Response};

    let handler = move |uri: axum::http::Uri, body: Bytes| async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let roll = fastrand::u8(0..100);
        if roll < faults.error_percent {
            let up = error(
                500,
                "server_error",
                "injected by mock-upstream --error-percent",
            );
            return (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                Body::from_stream(up.body),
            )
                .into_response();
        }
        if roll
            < faults
                .error_percent
                .saturating_add(faults.rate_limit_percent)
        {
            let up = error(
                429,
                "rate_limit_error",
                "injected by mock-upstream --rate-limit-percent",
            );
            return (
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1")],
                Body::from_stream(up.body),
            )
                .into_response();
        }
        let req = HttpRequest {
            method: "POST".into(),
            path: uri.path().to_string(),
            headers: Vec::new(),
            body: body.to_vec(),
            auth: crate::components::adapter_api::exports::smart_router::gateway::translation::Auth::None,
        };
        let up = respond(&req);
        let mut resp = Response::new(Body::from_stream(up.body));
        *resp.status_mut() = axum::http::StatusCode::from_u16(up.status)
            .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        for (k, v) in up.headers {
            if let (Ok(k), Ok(v)) = (
                axum::http::HeaderName::from_bytes(k.as_bytes()),
                axum::http::HeaderValue::from_str(&v),
            ) {
                resp.headers_mut().insert(k, v);
            }
        }
        resp.into_response()
    };
    axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(handler))
        .route("/chat/completions", axum::routing::post(handler))
        .route("/v1/embeddings", axum::routing::post(handler))
        .route("/v1/messages", axum::routing::post(handler))
}

/// `POST /embeddings`: one unit vector per input (`dimensions` long, 8 by default), derived from
/// the input's text.
fn embed(body: &Value, model: &str) -> UpstreamResponse {
    let inputs: Vec<String> = match body.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
            .collect(),
        _ => return error(400, "invalid_request_error", "`input` is required"),
    };
    let dims = body
        .get("dimensions")
        .and_then(Value::as_u64)
        .unwrap_or(8)
        .clamp(1, 4096) as usize;
    let mut prompt_tokens = 0u64;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| {
            prompt_tokens += text.len() as u64 / 4 + 1;
            // FNV-1a of the text seeds a small generator; the vector is scaled to length 1.
            let mut state = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
            let raw: Vec<f64> = (0..dims)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
                })
                .collect();
            let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
            let vector: Vec<f64> = raw.iter().map(|x| x / norm).collect();
            json!({"object": "embedding", "index": index, "embedding": vector})
        })
        .collect();
    let out = json!({"object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}});
    ok("application/json", out.to_string())
}
