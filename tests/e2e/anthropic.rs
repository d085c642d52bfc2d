//! The Anthropic adapter, golden: recorded fixtures compared field by field through the gateway.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use smart_router_tests::{Gateway, root};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(root().join("tests/fixtures/anthropic").join(name)).expect("fixture")
}

/// A canned failure: status, body, extra headers.
type Failure = (u16, Value, Vec<(&'static str, &'static str)>);

#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<(HeaderMap, Value)>>,
    /// When set, every request is answered with this status and body.
    fail: Mutex<Option<Failure>>,
    /// When set, every request is answered 200 with this body, byte for byte.
    answer: Mutex<Option<&'static str>>,
}

async fn messages(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let stream = body["stream"] == true;
    seen.requests.lock().expect("lock").push((headers, body));
    if let Some((status, body, headers)) = seen.fail.lock().expect("lock").clone() {
        let mut resp = (
            axum::http::StatusCode::from_u16(status).expect("status"),
            axum::Json(body),
        )
            .into_response();
        for (k, v) in headers {
            resp.headers_mut()
                .insert(k, axum::http::HeaderValue::from_static(v));
        }
        return resp;
    }
    if let Some(answer) = *seen.answer.lock().expect("lock") {
        return ([("content-type", "application/json")], answer).into_response();
    }
    if stream {
        (
            [("content-type", "text/event-stream")],
            fixture("stream.anthropic.sse"),
        )
            .into_response()
    } else {
        (
            [("content-type", "application/json")],
            fixture("response.anthropic.json"),
        )
            .into_response()
    }
}

async fn setup() -> (Gateway, Arc<Seen>) {
    setup_with(&["anthropic"]).await
}

async fn setup_with(adapters: &[&str]) -> (Gateway, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route("/v1/messages", post(messages))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let gw = Gateway::builder()
        .providers(&format!(
            "providers:\n  anthropic:\n    adapter: anthropic\n    base_url: http://{addr}\n    api_key: sk-ant-secret-123456\n    options: {{anthropic_version: '2023-06-01'}}\n    channels: [{{model: claude-test}}]\n"
        ))
        .adapters(adapters)
        .start()
        .await;
    (gw, seen)
}

#[tokio::test]
async fn request_and_response_match_the_golden_fixtures() {
    let (gw, seen) = setup().await;
    let request: Value = serde_json::from_str(&fixture("request.openai.json")).expect("json");
    let resp = gw.chat(request).await;
    assert_eq!(resp.status(), 200);
    let got: Value = resp.json().await.expect("json");
    let want: Value = serde_json::from_str(&fixture("response.openai.json")).expect("json");
    assert_eq!(got, want);

    let (headers, sent) = seen.requests.lock().expect("lock")[0].clone();
    let want: Value = serde_json::from_str(&fixture("request.anthropic.json")).expect("json");
    assert_eq!(sent, want);
    assert_eq!(headers["x-api-key"], "sk-ant-secret-123456");
    assert_eq!(headers["anthropic-version"], "2023-06-01");
    assert!(!headers.contains_key("authorization"));
}

/// Plain-text turns are copied into the Anthropic body as the client wrote them (escapes and
/// all); system texts are joined, consecutive turns of one role merged, empty texts dropped, and
/// the turns that need building (content lists, tool calls) still are.
#[tokio::test]
async fn a_text_conversation_is_translated_with_its_escapes_intact() {
    let (gw, seen) = setup().await;
    let body = r#"{"model": "claude-test", "max_completion_tokens": 64, "user": "u-1",
        "messages": [
        {"role": "system", "content": "Be \"brief\".\nAlways."},
        {"role": "developer", "content": [{"type": "text", "text": "Caf\u00e9"}, {"type": "text", "text": "ok"}]},
        {"role": "system", "content": ""},
        {"content": "first \ud83d\ude00 \/ \\ done", "role": "user"},
        {"role": "user", "content": ""},
        {"role": "user", "content": "second"},
        {"role": "assistant", "content": "an answer", "tool_calls": null},
        {"role": "assistant", "content": [{"type": "text", "text": "more"}]},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "42"},
        {"role": "user", "content": "thanks"}
    ]}"#;
    let resp = gw.chat_raw(body).await;
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    let sent = seen.requests.lock().expect("lock")[0].1.clone();
    let text = |t: &str| json!({"type": "text", "text": t});
    assert_eq!(
        sent,
        json!({
            "model": "claude-test",
            "max_tokens": 64,
            "stream": false,
            "metadata": {"user_id": "u-1"},
            "system": "Be \"brief\".\nAlways.\n\nCaf\u{e9}\nok",
            "messages": [
                {"role": "user", "content": [text("first \u{1F600} / \\ done"), text("second")]},
                {"role": "assistant", "content": [
                    text("an answer"),
                    text("more"),
                    {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "42"},
                    text("thanks")
                ]}
            ]
        })
    );
    // Malformed conversations are refused with what is wrong with them.
    for (messages, says) in [
        (
            json!([{"role": "user", "content": "x"}, {"role": "narrator", "content": "y"}]),
            "messages[1]: unsupported role `narrator`",
        ),
        (
            json!([{"role": "user", "content": 5}]),
            "messages[0]: `content` must be a string or a list",
        ),
        (
            json!([{"role": 7, "content": "x"}]),
            "messages[0].role must be a string",
        ),
    ] {
        let resp = gw
            .chat(json!({"model": "claude-test", "messages": messages}))
            .await;
        assert_eq!(resp.status(), 400, "{messages}");
        let text = resp.text().await.expect("body");
        assert!(text.contains(says), "{messages}: {text}");
    }
    assert_eq!(seen.requests.lock().expect("lock").len(), 1);
}

/// A plain text answer is copied with its escapes intact; answers of several blocks are built;
/// both come out as the same OpenAI completion shape.
#[tokio::test]
async fn text_answers_keep_their_escapes_and_every_shape_translates() {
    let (gw, seen) = setup().await;
    let usage = |p: u64, c: u64| {
        json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
               "prompt_tokens_details": {"cached_tokens": 0}})
    };
    let completion = |id: &str, model: &str, content: Value, finish: Value, usage: Value| {
        json!({"id": id, "object": "chat.completion", "created": 0, "model": model,
               "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                            "logprobs": null, "finish_reason": finish}],
               "usage": usage})
    };
    let cases = [
        (
            r#"{"id": "msg_\"1", "type": "message", "model": "claude-x", "content": [{"type": "text", "text": "Caf\u00e9 \"ok\"\n\ud83d\ude00 \/"}], "stop_reason": "max_tokens", "usage": {"input_tokens": 3, "output_tokens": 4}}"#,
            completion(
                "chatcmpl-msg_\"1",
                "claude-x",
                json!("Caf\u{e9} \"ok\"\n\u{1F600} /"),
                json!("length"),
                usage(3, 4),
            ),
        ),
        (
            r#"{"content": [], "usage": null}"#,
            completion(
                "chatcmpl-",
                "claude-test",
                Value::Null,
                Value::Null,
                usage(0, 0),
            ),
        ),
        (
            r#"{"id": "m2", "model": 7, "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "stop_reason": "end_turn"}"#,
            completion(
                "chatcmpl-m2",
                "claude-test",
                json!("ab"),
                json!("stop"),
                usage(0, 0),
            ),
        ),
        (
            r#"{"id": "m3", "content": [{"type": "text", "text": ""}], "stop_reason": "refusal", "usage": {"input_tokens": 1, "cache_read_input_tokens": 2, "output_tokens": 0}}"#,
            completion(
                "chatcmpl-m3",
                "claude-test",
                json!(""),
                json!("content_filter"),
                json!({"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3,
                       "prompt_tokens_details": {"cached_tokens": 2}}),
            ),
        ),
    ];
    for (answer, want) in cases {
        *seen.answer.lock().expect("lock") = Some(answer);
        let resp = gw
            .chat(json!({"model": "claude-test", "messages": [{"role": "user", "content": "hi"}]}))
            .await;
        assert_eq!(resp.status(), 200, "{answer}");
        let text = resp.text().await.expect("body");
        let got: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(got, want, "{answer}");
        if answer.contains("Caf") {
            // Copied, not decoded and encoded again.
            assert!(
                text.contains(r#""Caf\u00e9 \"ok\"\n\ud83d\ude00 \/""#),
                "{text}"
            );
        }
    }
}

/// Called directly (as any host may call it, without the gateway's own checks first), the
/// adapter says what is wrong with a malformed request rather than failing on it.
#[test]
fn malformed_requests_called_directly_get_precise_errors() {
    use smart_router::components::adapter_api::exports::smart_router::gateway::translation::{
        ErrorClass, RequestContext,
    };
    use smart_router::components::{Kind, Loaded, Runtime, load_bytes};
    let rt = Runtime::new(std::time::Duration::from_secs(1), 64 << 20, None).expect("runtime");
    let bytes =
        std::fs::read(smart_router_tests::component("adapters", "anthropic")).expect("read");
    let Ok(Loaded::Adapter(adapter)) = load_bytes(&rt, Kind::Adapter, "anthropic", &bytes) else {
        panic!("the anthropic adapter loads");
    };
    let ctx = RequestContext {
        model: "claude-test".into(),
        is_stream: false,
        include_usage: false,
        options: "{}".into(),
    };
    for (body, says) in [
        ("[1]", "the request body is not a JSON object"),
        (r#"{"model": "m"}"#, "`messages` must be an array"),
        (r#"{"messages": "hi"}"#, "`messages` must be an array"),
        (r#"{"messages": [5]}"#, "messages[0] must be an object"),
        (
            r#"{"messages": [{"role": "user", "content": "x"}, null]}"#,
            "messages[1] must be an object",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "x"}, {"role": 7}]}"#,
            "messages[1]: unsupported role ``",
        ),
    ] {
        let mut session = adapter.session(&rt).expect("session");
        let err = session
            .translate_request(&ctx, body)
            .expect("no trap")
            .expect_err(body);
        assert!(matches!(err.class, ErrorClass::BadRequest), "{body}");
        assert_eq!(err.message, says, "{body}");
    }
    // A request the first pass reads needs no second one, and comes out the same.
    let mut session = adapter.session(&rt).expect("session");
    let ok = session
        .translate_request(
            &ctx,
            r#"{"messages": [{"role": "user", "content": "x", "name": null}], "max_tokens": 5}"#,
        )
        .expect("no trap")
        .expect("translated");
    let sent: Value = serde_json::from_slice(&ok.body).expect("json");
    assert_eq!(
        sent,
        json!({"model": "claude-test", "max_tokens": 5, "stream": false,
               "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]})
    );
}

#[tokio::test]
async fn the_stream_matches_the_golden_fixture() {
    let (gw, _seen) = setup().await;
    let mut request: Value = serde_json::from_str(&fixture("request.openai.json")).expect("json");
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let resp = gw.chat(request).await;
    assert_eq!(resp.status(), 200);
    let parse = crate::chat::sse_values;
    let got = parse(&resp.text().await.expect("body"));
    let want = parse(&fixture("stream.openai.sse"));
    assert_eq!(got, want);
}

#[tokio::test]
async fn anthropic_errors_are_classified() {
    let (gw, seen) = setup().await;
    let ask = || {
        gw.chat(json!({"model": "claude-test", "messages": [{"role": "user", "content": "hi"}]}))
    };

    *seen.fail.lock().expect("lock") = Some((
        529,
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        vec![],
    ));
    let resp = ask().await;
    assert_eq!(resp.status(), 502);
    let body: Value = resp.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("server_error"),
        "{body}"
    );

    *seen.fail.lock().expect("lock") = Some((
        400,
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": "messages: roles must alternate"}}),
        vec![],
    ));
    let resp = ask().await;
    assert_eq!(resp.status(), 400, "the client's fault comes back as 400");

    *seen.fail.lock().expect("lock") = Some((
        429,
        json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Number of requests has exceeded your rate limit"}}),
        vec![("retry-after", "9")],
    ));
    let resp = ask().await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "9");
}

#[tokio::test]
async fn an_adapter_dropped_in_at_runtime_makes_its_provider_usable() {
    let (gw, _seen) = setup_with(&["openai"]).await;
    let ask = || {
        gw.chat(json!({"model": "claude-test", "messages": [{"role": "user", "content": "hi"}]}))
    };
    assert_eq!(
        ask().await.status(),
        503,
        "no adapter yet: the channel is skipped"
    );
    assert!(smart_router_tests::logs().contains("names adapter `anthropic`, which is not loaded"));

    let started = std::time::Instant::now();
    std::fs::copy(
        smart_router_tests::component("adapters", "anthropic"),
        gw.components("adapters").join("anthropic.wasm"),
    )
    .expect("copy");
    let served = gw
        .eventually(std::time::Duration::from_secs(5), || async {
            ask().await.status() == 200
        })
        .await;
    assert!(served, "the provider serves once its adapter is dropped in");
    eprintln!(
        "adapter drop-in to first served request: {:?}",
        started.elapsed()
    );
}

/// The built-in `mock://` provider speaks Anthropic's Messages format too, so the `anthropic`
/// adapter runs end to end offline: plain, streamed and tool-calling answers arrive in OpenAI's
/// shape.
#[tokio::test]
async fn the_builtin_mock_serves_the_anthropic_adapter_offline() {
    let gw = smart_router_tests::Gateway::builder()
        .providers("providers:\n  claude:\n    adapter: anthropic\n    base_url: mock://\n    channels: [{ model: mock-claude }]\n")
        .adapters(&["anthropic"])
        .start()
        .await;
    let resp = gw
        .chat(serde_json::json!({"model": "mock-claude", "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "ping"}]}))
        .await;
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .is_some_and(|t| t.ends_with("You said: ping")),
        "{v}"
    );
    assert!(v["usage"]["prompt_tokens"].as_u64().is_some_and(|n| n > 0));

    let resp = gw
        .chat(serde_json::json!({"model": "mock-claude", "stream": true, "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "ping"}]}))
        .await;
    let chunks = crate::chat::sse_values(&resp.text().await.expect("body"));
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(text.ends_with("You said: ping"), "{text}");
    assert_eq!(chunks.last(), Some(&serde_json::json!("[DONE]")));

    let resp = gw
        .chat(serde_json::json!({"model": "mock-claude", "messages": [{"role": "user", "content": "weather?"}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]}))
        .await;
    let v: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
}
