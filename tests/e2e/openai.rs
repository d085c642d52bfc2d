//! The `openai` adapter against the quirks of OpenAI-compatible providers.

use serde_json::{Value, json};
use smart_router_tests::gateway::one_provider;
use smart_router_tests::{Behaviour, Gateway, MockUpstream};

async fn setup(models: &[&str]) -> (Gateway, MockUpstream) {
    let mock = MockUpstream::start().await;
    let gw = Gateway::builder()
        .providers(&one_provider(&mock.base_url(), models))
        .start()
        .await;
    (gw, mock)
}

fn sse(events: &[Value]) -> String {
    let mut s = String::from(": OPENROUTER PROCESSING\n\n");
    for e in events {
        s.push_str(&format!("data: {e}\n\n"));
    }
    s.push_str("data: [DONE]\n\n");
    s
}

#[tokio::test]
async fn vllm_errors_inside_a_200_body_are_errors() {
    let (gw, mock) = setup(&["vllm"]).await;
    mock.set("vllm", Behaviour::Raw { status: 200, content_type: "application/json",
        body: json!({"object": "error", "message": "This model's maximum context length is 4096 tokens", "type": "BadRequestError", "param": null, "code": 400}).to_string() });
    let resp = gw
        .chat(json!({"model": "vllm", "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(
        resp.status(),
        502,
        "a context-length error tries elsewhere; with nowhere else, a gateway error"
    );
    let body: Value = resp.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("context_too_long"),
        "{body}"
    );
}

#[tokio::test]
async fn deepseek_reasoning_content_streams_through_and_counts_as_output() {
    let (gw, mock) = setup(&["deepseek-reasoner"]).await;
    let chunk = |delta: Value, finish: Value| json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "deepseek-reasoner", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    mock.set("deepseek-reasoner", Behaviour::Raw { status: 200, content_type: "text/event-stream", body: sse(&[
        chunk(json!({"role": "assistant", "content": null, "reasoning_content": ""}), Value::Null),
        chunk(json!({"reasoning_content": "Let me think."}), Value::Null),
        chunk(json!({"content": "42"}), Value::Null),
        chunk(json!({}), json!("stop")),
        json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "deepseek-reasoner", "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14, "completion_tokens_details": {"reasoning_tokens": 4}, "prompt_tokens_details": {"cached_tokens": 1}}}),
    ]) });
    let resp = gw.chat(json!({"model": "deepseek-reasoner", "stream": true, "messages": [{"role": "user", "content": "x"}]})).await;
    assert_eq!(resp.status(), 200);
    let data = crate::chat::sse_data(&resp.text().await.expect("body"));
    let chunks: Vec<Value> = data
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("json"))
        .collect();
    let reasoning: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["reasoning_content"].as_str())
        .collect();
    assert_eq!(reasoning, "Let me think.");
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "the client did not ask for usage"
    );
    use sqlx::Row;
    let rows = gw
        .rows("SELECT completion_tokens, reasoning_tokens, cached_tokens FROM usage")
        .await;
    assert_eq!(
        (
            rows[0].get::<i64, _>("completion_tokens"),
            rows[0].get::<i64, _>("reasoning_tokens"),
            rows[0].get::<i64, _>("cached_tokens")
        ),
        (9, 4, 1)
    );
}

#[tokio::test]
async fn the_body_passes_through_with_the_channels_model() {
    let (gw, mock) = setup(&["m"]).await;
    let resp = gw
        .chat(json!({"model": "m", "max_completion_tokens": 77, "temperature": 0.3, "seed": 7, "logit_bias": {"50256": -100}, "user": "u1",
            "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(resp.status(), 200);
    let sent = &mock.calls("m")[0].body;
    assert_eq!(sent["max_completion_tokens"], 77);
    assert_eq!(sent["seed"], 7);
    assert_eq!(sent["logit_bias"]["50256"], -100);
    assert_eq!(sent["user"], "u1");
}

/// Only the top level is rebuilt: nested members reach the provider byte for byte as the client
/// wrote them (spacing, number spelling, escapes), with the channel's model, and for a stream
/// `include_usage` merged into the client's own `stream_options`.
#[tokio::test]
async fn nested_members_reach_the_provider_byte_for_byte() {
    let (gw, mock) = setup(&["m"]).await;
    let messages = r#"[ {"role": "user",   "content": "caf\u00e9 \"q\"", "x_n": 1.50e2} ]"#;
    let body = format!(
        r#"{{"model": "m", "stream": true, "stream_options": {{"x_keep": 1}}, "messages": {messages}, "temperature": 0.70}}"#
    );
    let resp = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(smart_router_tests::gateway::KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    resp.text().await.expect("stream");
    let sent = &mock.calls("m")[0];
    assert!(
        sent.raw.contains(&format!(r#""messages":{messages}"#)),
        "messages unchanged: {}",
        sent.raw
    );
    assert!(sent.raw.contains(r#""temperature":0.70"#), "{}", sent.raw);
    assert_eq!(sent.body["model"], "m");
    assert_eq!(
        sent.body["stream_options"],
        json!({"x_keep": 1, "include_usage": true})
    );
    assert_eq!(sent.body["messages"][0]["content"], "caf\u{e9} \"q\"");
}

/// Recorded streams from Groq (usage inside `x_groq`) and OpenRouter (comment keep-alives, extra
/// fields, usage on a chunk with choices) reach the client unchanged, and their usage is recorded.
#[tokio::test]
async fn groq_and_openrouter_streams_match_the_golden_fixtures() {
    use sqlx::Row;
    let fixture = |name: &str| {
        std::fs::read_to_string(
            smart_router_tests::root()
                .join("tests/fixtures/openai")
                .join(name),
        )
        .expect("fixture")
    };
    for (model, prompt, completion) in [("groq", 12, 3), ("openrouter", 14, 2)] {
        let (gw, mock) = setup(&[model]).await;
        mock.set(
            model,
            Behaviour::Raw {
                status: 200,
                content_type: "text/event-stream",
                body: fixture(&format!("{model}.upstream.sse")),
            },
        );
        let resp = gw
            .chat(json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
            .await;
        assert_eq!(resp.status(), 200);
        let parse = crate::chat::sse_values;
        assert_eq!(
            parse(&resp.text().await.expect("body")),
            parse(&fixture(&format!("{model}.client.sse"))),
            "{model}"
        );
        let rows = gw
            .rows("SELECT prompt_tokens, completion_tokens, outcome FROM usage")
            .await;
        assert_eq!(rows[0].get::<String, _>("outcome"), "success", "{model}");
        assert_eq!(rows[0].get::<i64, _>("prompt_tokens"), prompt, "{model}");
        assert_eq!(
            rows[0].get::<i64, _>("completion_tokens"),
            completion,
            "{model}"
        );
    }
}
