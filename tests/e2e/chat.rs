//! The OpenAI surface: responses, streams, models, errors.

use serde_json::{Value, json};
use smart_router_tests::gateway::{KEY, channel_of, one_provider};
use smart_router_tests::{Gateway, MockUpstream};

async fn gateway_with(models: &[&str]) -> (Gateway, MockUpstream) {
    let mock = MockUpstream::start().await;
    let gw = Gateway::builder()
        .providers(&one_provider(&mock.base_url(), models))
        .groups("model_groups:\n  auto:test:\n    strategy: priority\n")
        .start()
        .await;
    (gw, mock)
}

/// Splits an SSE body into its `data:` payloads.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

/// The `data:` payloads as JSON, with `[DONE]` kept as the string `"[DONE]"`.
pub fn sse_values(body: &str) -> Vec<Value> {
    sse_data(body)
        .iter()
        .map(|d| {
            if d == "[DONE]" {
                json!("[DONE]")
            } else {
                serde_json::from_str(d).expect("chunk")
            }
        })
        .collect()
}

#[tokio::test]
async fn non_streaming_answer_is_openai_shaped() {
    let (gw, mock) = gateway_with(&["m1"]).await;
    let resp = gw
        .chat(json!({"model": "auto:test", "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-smart-router-channel"], "up/m1");
    assert!(
        resp.headers()["x-request-id"]
            .to_str()
            .expect("ascii")
            .starts_with("req_")
    );
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["content"], "reply from m1");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["total_tokens"], 18);
    // The upstream got the channel's model and the provider key, injected by the host.
    let call = &mock.calls("m1")[0];
    assert_eq!(
        call.headers["authorization"],
        "Bearer sk-upstream-secret-0123456789"
    );
    assert_eq!(call.body["messages"][0]["content"], "hi");
}

#[tokio::test]
async fn stream_with_include_usage_ends_with_usage_chunk_and_done() {
    let (gw, _mock) = gateway_with(&["m1"]).await;
    let resp = gw
        .chat(
            json!({"model": "auto:test", "stream": true, "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let data = sse_data(&resp.text().await.expect("body"));
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk json"))
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text.trim(), "reply from m1");
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "stop")
    );
    let last = chunks.last().expect("chunks");
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 7);
}

#[tokio::test]
async fn stream_without_include_usage_has_no_usage_chunk_but_usage_is_still_recorded() {
    let (gw, mock) = gateway_with(&["m1"]).await;
    let resp = gw
        .chat(
            json!({"model": "m1", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    let data = sse_data(&resp.text().await.expect("body"));
    assert!(
        data.iter().all(|d| !d.contains("\"usage\"")),
        "no usage chunk: {data:?}"
    );
    // The adapter asked the upstream for usage anyway…
    assert_eq!(
        mock.calls("m1")[0].body["stream_options"]["include_usage"],
        true
    );
    // …so accounting has the real numbers.
    let rows = gw
        .rows("SELECT prompt_tokens, completion_tokens, ttft_ms FROM usage")
        .await;
    use sqlx::Row;
    assert_eq!(rows[0].get::<i64, _>("prompt_tokens"), 11);
    assert_eq!(rows[0].get::<i64, _>("completion_tokens"), 7);
    assert!(rows[0].get::<Option<i64>, _>("ttft_ms").is_some());
}

#[tokio::test]
async fn builtin_mock_streams_tool_call_deltas() {
    let gw = Gateway::builder()
        .providers("providers:\n  mock:\n    adapter: openai\n    base_url: mock://\n    channels: [{model: mock-small}]\n")
        .start()
        .await;
    let resp = gw
        .chat(json!({"model": "mock-small", "stream": true, "messages": [{"role": "user", "content": "weather?"}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]}))
        .await;
    assert_eq!(resp.status(), 200);
    let data = sse_data(&resp.text().await.expect("body"));
    let chunks: Vec<Value> = data
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("json"))
        .collect();
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert_eq!(calls[0]["index"], 0);
    let args: String = calls
        .iter()
        .filter_map(|c| c["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, "{}");
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "tool_calls")
    );
}

#[tokio::test]
async fn models_lists_groups_and_served_models() {
    let (gw, _mock) = gateway_with(&["m1", "m2"]).await;
    let resp = gw
        .client
        .get(gw.url("/v1/models"))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["object"], "list");
    let ids: Vec<&str> = body["data"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, vec!["auto:test", "m1", "m2"]);
}

#[tokio::test]
async fn a_model_is_retrieved_as_openai_answers_it() {
    let mock = MockUpstream::start().await;
    let providers =
        one_provider(&mock.base_url(), &["m1"]) + "      - { model: m2, enabled: false }\n";
    let gw = Gateway::builder()
        .providers(&providers)
        .groups("model_groups:\n  auto:test:\n    strategy: priority\n")
        .start()
        .await;
    let hash = smart_router::app::hex(&<sha2::Sha256 as sha2::Digest>::digest(b"sk-only-m1"));
    gw.app
        .store
        .create_key("key_m1", "m1 only", &hash, Some("m1"), Default::default())
        .await
        .expect("key");
    let get = |path: &str, key: &'static str| gw.client.get(gw.url(path)).bearer_auth(key).send();
    // A group, a served model, and a channel id: as is, and percent-encoded as newer SDKs send it.
    for (path, id, owner) in [
        ("/v1/models/auto:test", "auto:test", "smart-router"),
        ("/v1/models/m1", "m1", "up"),
        ("/models/m1", "m1", "up"),
        ("/v1/models/up/m1", "up/m1", "up"),
        ("/v1/models/up%2Fm1", "up/m1", "up"),
    ] {
        let resp = get(path, KEY).await.expect("send");
        assert_eq!(resp.status(), 200, "{path}");
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["id"], id, "{path}");
        assert_eq!(body["object"], "model", "{path}");
        assert_eq!(body["owned_by"], owner, "{path}");
    }
    // Unknown, served only by a disabled channel, or not this key's: OpenAI's 404, the same one.
    for (path, key) in [
        ("/v1/models/nope", KEY),
        ("/v1/models/m2", KEY),
        ("/v1/models/up/m2", KEY),
        ("/v1/models/auto:test", "sk-only-m1"),
    ] {
        let resp = get(path, key).await.expect("send");
        assert_eq!(resp.status(), 404, "{path}");
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["error"]["code"], "model_not_found", "{path}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{path}");
        assert_eq!(body["error"]["param"], "model", "{path}");
    }
    let mine = get("/v1/models/m1", "sk-only-m1").await.expect("send");
    assert_eq!(mine.status(), 200);
    let list: Value = get("/v1/models", "sk-only-m1")
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(
        get("/v1/models/m1", "sk-wrong")
            .await
            .expect("send")
            .status(),
        401
    );
}

#[tokio::test]
async fn errors_use_the_openai_shape_and_status() {
    let (gw, _mock) = gateway_with(&["m1"]).await;
    let url = gw.url("/v1/chat/completions");
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (gw.client.post(&url).body("{}"), 401, "invalid_api_key"),
        (gw.client.post(&url).bearer_auth("sk-wrong").body("{}"), 401, "invalid_api_key"),
        (gw.client.post(&url).bearer_auth(KEY).body("{not json"), 400, ""),
        (gw.client.post(&url).bearer_auth(KEY).body(r#"{"model": "m1", "temperature": 1e400, "messages": [{"role": "user", "content": "x"}]}"#), 400, ""),
        (gw.client.post(&url).bearer_auth(KEY).body(r#"[{"model": "m1"}]"#), 400, ""),
        (gw.client.post(&url).bearer_auth(KEY).json(&json!({"model": "m1"})), 400, ""),
        (gw.client.post(&url).bearer_auth(KEY).json(&json!({"model": 5, "messages": []})), 400, ""),
        (gw.client.post(&url).bearer_auth(KEY).json(&json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]})), 404, "model_not_found"),
        (gw.client.post(&url).bearer_auth(KEY).json(&json!({"model": "m1", "stream": "yes", "messages": [{"role": "user", "content": "x"}]})), 400, ""),
        (gw.client.get(gw.url("/v1/nothing-here")).bearer_auth(KEY), 404, "unknown_url"),
        (gw.client.post(gw.url("/v1/models")).bearer_auth(KEY), 405, "method_not_allowed"),
    ];
    for (req, status, code) in cases {
        let resp = req.send().await.expect("send");
        assert_eq!(resp.status().as_u16(), status);
        let body: Value = resp.json().await.expect("error body is JSON");
        let err = &body["error"];
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        assert!(err["type"].is_string(), "{body}");
        if !code.is_empty() {
            assert_eq!(err["code"], code, "{body}");
        }
    }
    // A wrong method still says which ones the URL takes.
    let resp = gw.client.get(&url).send().await.expect("send");
    assert_eq!(resp.status().as_u16(), 405);
    assert_eq!(
        resp.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("POST")
    );
    let body: Value = resp.json().await.expect("error body is JSON");
    assert_eq!(body["error"]["code"], "method_not_allowed");
    assert_eq!(
        body["error"]["message"],
        "Invalid method for URL (GET /v1/chat/completions)"
    );
}

#[tokio::test]
async fn tool_requests_never_reach_text_only_channels() {
    let mock = MockUpstream::start().await;
    let providers = format!(
        "providers:\n  up:\n    adapter: openai\n    base_url: {}\n    channels:\n      - {{ model: text-only, priority: 1, capabilities: [code] }}\n      - {{ model: tool-user, priority: 2, capabilities: [function_calling] }}\n",
        mock.base_url()
    );
    let gw = Gateway::builder()
        .providers(&providers)
        .groups("model_groups:\n  g: {strategy: priority}\n")
        .start()
        .await;
    let resp = gw
        .chat(
            json!({"model": "g", "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-smart-router-channel"], "up/tool-user");
    assert!(mock.calls("text-only").is_empty());
    let plain = gw
        .chat(json!({"model": "g", "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(plain.headers()["x-smart-router-channel"], "up/text-only");
}

#[tokio::test]
async fn metrics_report_counters_overhead_and_channel_state() {
    let (gw, _mock) = gateway_with(&["m1", "m2"]).await;
    for stream in [false, true, false] {
        let resp = gw.chat(json!({"model": "auto:test", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})).await;
        assert_eq!(resp.status(), 200);
        let _ = resp.text().await;
    }
    let text = gw.get_text("/metrics").await;
    assert!(text.contains("smart_router_requests_total 3\n"), "{text}");
    assert!(
        text.contains("smart_router_overhead_seconds_count 3\n"),
        "{text}"
    );
    assert!(
        text.contains("smart_router_channel_available{channel=\"up/m1\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("smart_router_channel_in_flight{channel=\"up/m2\"} 0\n"),
        "{text}"
    );
    assert!(
        !text.contains("sk-upstream-secret"),
        "no secrets in metrics"
    );
}

#[tokio::test]
async fn browser_pages_may_call_the_gateway_as_they_call_openai() {
    let (gw, _mock) = gateway_with(&["m1"]).await;
    let url = gw.url("/v1/chat/completions");
    let page = "http://localhost:3000";
    // The browser's preflight carries no key; it is answered before routing and auth.
    let pre = gw
        .client
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", page)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,x-stainless-os",
        )
        .send()
        .await
        .expect("send");
    assert_eq!(pre.status().as_u16(), 204);
    let h = pre.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    assert_eq!(h["access-control-allow-methods"], "GET, POST, OPTIONS");
    assert_eq!(
        h["access-control-allow-headers"],
        "authorization,content-type,x-stainless-os"
    );
    assert!(h.contains_key("access-control-max-age"));
    // The request itself, and an error, both readable by the page.
    let chat = |key: &str, origin: Option<&str>| {
        let mut req = gw.client.post(&url).bearer_auth(key);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.json(&json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    let ok = chat(KEY, Some(page)).await.expect("send");
    assert_eq!(ok.status().as_u16(), 200);
    assert_eq!(ok.headers()["access-control-allow-origin"], "*");
    let exposed = ok.headers()["access-control-expose-headers"]
        .to_str()
        .expect("ascii");
    assert!(exposed.contains("x-request-id"), "{exposed}");
    let refused = chat("sk-wrong", Some(page)).await.expect("send");
    assert_eq!(refused.status().as_u16(), 401);
    assert_eq!(refused.headers()["access-control-allow-origin"], "*");
    // Without an Origin (every SDK, curl, a server) nothing changes.
    let plain = chat(KEY, None).await.expect("send");
    assert_eq!(plain.status().as_u16(), 200);
    assert!(!plain.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn only_the_listed_origins_get_cors_answers() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::builder()
        .providers(&one_provider(&mock.base_url(), &["m1"]))
        .system(
            "components_dir: components\nserver:\n  cors_origins: [\"https://chat.example.com\"]\n",
        )
        .start()
        .await;
    let url = gw.url("/v1/chat/completions");
    let preflight = |origin: &str| {
        gw.client
            .request(reqwest::Method::OPTIONS, &url)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
    };
    let listed = preflight("https://chat.example.com").await.expect("send");
    assert_eq!(listed.status().as_u16(), 204);
    assert_eq!(
        listed.headers()["access-control-allow-origin"],
        "https://chat.example.com"
    );
    assert_eq!(listed.headers()["vary"], "origin");
    assert_eq!(
        listed.headers()["access-control-allow-headers"],
        "authorization, content-type"
    );
    // Another page gets no CORS headers: its browser keeps the answer from it.
    let other = preflight("https://elsewhere.example").await.expect("send");
    assert_eq!(other.status().as_u16(), 405);
    assert!(!other.headers().contains_key("access-control-allow-origin"));
    let body: Value = other.json().await.expect("error body is JSON");
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

/// `n: 2` asks for two choices. Anthropic's API gives one, so its adapter answers `unsupported`
/// and the request moves on to a channel that gives two, leaving the first channel's health
/// alone; when no channel can, the client gets a 400 that says why, not a 502.
#[tokio::test]
async fn a_request_for_several_choices_goes_to_a_channel_that_gives_them() {
    let gw = Gateway::builder()
        .providers(
            "providers:\n  claude:\n    adapter: anthropic\n    base_url: mock://\n    channels: [{model: claude-x, priority: 1}]\n  oa:\n    adapter: openai\n    base_url: mock://\n    channels: [{model: gpt-x, priority: 2}]\n",
        )
        .groups("model_groups:\n  auto:both:\n    strategy: priority\n    channels: [{channel: claude/claude-x}, {channel: oa/gpt-x}]\n")
        .adapters(&["anthropic", "openai"])
        .start()
        .await;
    let ask = |model: &str, n: u32, stream: bool| json!({"model": model, "n": n, "stream": stream, "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(
        gw.served_by(ask("auto:both", 1, false)).await,
        "claude/claude-x"
    );

    let resp = gw.chat(ask("auto:both", 2, false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(channel_of(&resp), "oa/gpt-x");
    let body: Value = resp.json().await.expect("json");
    let indexes: Vec<u64> = body["choices"]
        .as_array()
        .expect("choices")
        .iter()
        .filter_map(|c| c["index"].as_u64())
        .collect();
    assert_eq!(indexes, [0, 1], "{body}");

    let resp = gw.chat(ask("auto:both", 2, true)).await;
    assert_eq!(channel_of(&resp), "oa/gpt-x");
    let text = resp.text().await.expect("body");
    for i in 0..2 {
        let said: String = sse_values(&text)
            .iter()
            .filter(|c| c["choices"][0]["index"] == i)
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        assert!(said.ends_with("You said: hi"), "choice {i}: {said}");
    }

    let resp = gw.chat(ask("claude-x", 3, false)).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["code"], "unsupported_by_channels");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("one choice, not `n: 3`"), "{message}");

    let claude = gw.channel_health("claude/claude-x").await;
    assert_eq!(claude["consecutive_failures"], 0, "{claude}");
    assert_eq!(claude["breaker"]["state"], "closed", "{claude}");
}
