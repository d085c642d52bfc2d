//! `/v1/embeddings`: the same groups, channels, adapters, failover and accounting as chat.

use serde_json::{Value, json};
use smart_router_tests::gateway::channel_of;
use smart_router_tests::{Behaviour, Gateway, MockUpstream};
use sqlx::Row;

/// One provider with a chat model and two embeddings models, and a group over the embeddings
/// ones (the cheap one first in priority).
async fn setup(extra_providers: &str, group_channels: &str) -> (Gateway, MockUpstream) {
    let mock = MockUpstream::start().await;
    let providers = format!(
        "providers:\n  up:\n    adapter: openai\n    base_url: {}\n    channels:\n      - {{ model: chat-a }}\n      - {{ model: embed-a, priority: 1, input_cost_per_1k: 0.0001, capabilities: [embeddings] }}\n      - {{ model: embed-b, priority: 2, input_cost_per_1k: 0.0002, capabilities: [embeddings] }}\n{extra_providers}",
        mock.base_url()
    );
    let gw = Gateway::builder()
        .providers(&providers)
        .groups(&format!(
            "model_groups:\n  auto:embed:\n    strategy: priority\n    channels:\n{group_channels}"
        ))
        .strategies(&["priority"])
        .adapters(&["openai", "legacy"])
        .start()
        .await;
    (gw, mock)
}

const GROUP: &str = "      - { channel: up/embed-a }\n      - { channel: up/embed-b }\n";

#[tokio::test]
async fn embeddings_route_through_a_group_and_are_billed() {
    let (gw, mock) = setup("", GROUP).await;
    let resp = gw
        .embeddings(json!({"model": "auto:embed", "input": ["alpha", "beta gamma"]}))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(channel_of(&resp), "up/embed-a");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][1]["embedding"], json!([1.0, 10.0, 1.0]));
    assert_eq!(body["usage"]["prompt_tokens"], 10);
    // The channel's model went upstream, to the embeddings path, with the input untouched.
    let sent = mock.calls("embed-a");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].path, "/v1/embeddings");
    assert_eq!(sent[0].body["input"], json!(["alpha", "beta gamma"]));

    let rows = gw
        .rows("SELECT endpoint, group_name, channel_id, prompt_tokens, completion_tokens, cost_micros, outcome FROM usage")
        .await;
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r.get::<String, _>("endpoint"), "embeddings");
    assert_eq!(
        r.get::<Option<String>, _>("group_name").as_deref(),
        Some("auto:embed")
    );
    assert_eq!(r.get::<i64, _>("prompt_tokens"), 10);
    assert_eq!(r.get::<i64, _>("completion_tokens"), 0);
    // 10 tokens at $0.0001 per 1,000 = $0.000001.
    assert_eq!(r.get::<i64, _>("cost_micros"), 1);
    assert_eq!(r.get::<String, _>("outcome"), "success");
}

#[tokio::test]
async fn a_failing_embeddings_channel_fails_over() {
    let (gw, mock) = setup("", GROUP).await;
    mock.set(
        "embed-a",
        Behaviour::Fail {
            status: 503,
            body: json!({"error": {"message": "overloaded", "type": "server_error"}}),
            headers: vec![],
        },
    );
    let resp = gw
        .embeddings(json!({"model": "auto:embed", "input": "x"}))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(channel_of(&resp), "up/embed-b");
    let rows = gw
        .rows("SELECT attempt, outcome, endpoint FROM usage ORDER BY attempt")
        .await;
    let seen: Vec<(i64, String, String)> = rows
        .iter()
        .map(|r| (r.get("attempt"), r.get("outcome"), r.get("endpoint")))
        .collect();
    assert_eq!(
        seen,
        [
            (1, "error".to_string(), "embeddings".to_string()),
            (2, "success".to_string(), "embeddings".to_string())
        ]
    );
}

#[tokio::test]
async fn chat_and_embeddings_models_are_kept_apart() {
    let (gw, mock) = setup("", GROUP).await;
    let resp = gw
        .chat(json!({"model": "auto:embed", "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.expect("json");
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no chat models")),
        "{err}"
    );
    let resp = gw
        .embeddings(json!({"model": "chat-a", "input": "hi"}))
        .await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.expect("json");
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no embeddings models")),
        "{err}"
    );
    assert_eq!(mock.total_calls(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn bad_embeddings_input_gets_an_openai_error() {
    let (gw, mock) = setup("", GROUP).await;
    for (body, why) in [
        (json!({"model": "auto:embed"}), "missing"),
        (json!({"model": "auto:embed", "input": ""}), "empty string"),
        (json!({"model": "auto:embed", "input": []}), "empty array"),
        (json!({"model": "auto:embed", "input": [1, "a"]}), "mixed"),
        (json!({"model": "auto:embed", "input": {"a": 1}}), "object"),
    ] {
        let resp = gw.embeddings(body).await;
        assert_eq!(resp.status(), 400, "{why}");
        let err: Value = resp.json().await.expect("json");
        assert_eq!(err["error"]["param"], "input", "{why}: {err}");
        assert_eq!(err["error"]["type"], "invalid_request_error", "{why}");
    }
    // Token ids are valid input.
    let resp = gw
        .embeddings(json!({"model": "auto:embed", "input": [[1, 2, 3], [4]]}))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(mock.total_calls(), 1);
}

/// An adapter built against the 0.1.0 contract, which predates embeddings, keeps serving chat;
/// for embeddings the host answers `unsupported` for it and the request moves on without
/// marking the channel unhealthy.
#[tokio::test]
async fn an_adapter_from_before_embeddings_is_skipped_for_them() {
    let mock2 = MockUpstream::start().await;
    let extra = format!(
        "  old:\n    adapter: legacy\n    base_url: {}\n    channels:\n      - {{ model: old-embed, capabilities: [embeddings] }}\n      - {{ model: old-chat }}\n",
        mock2.base_url()
    );
    let (gw, mock) = setup(
        &extra,
        "      - { channel: old/old-embed }\n      - { channel: up/embed-a }\n",
    )
    .await;
    let resp = gw
        .embeddings(json!({"model": "auto:embed", "input": "x"}))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(channel_of(&resp), "up/embed-a");
    assert_eq!(mock2.total_calls(), 0, "the old adapter sent nothing");
    assert_eq!(mock.calls("embed-a").len(), 1);
    // The legacy adapter still serves chat.
    assert_eq!(
        gw.served_by(json!({"model": "old-chat", "messages": [{"role": "user", "content": "hi"}]}))
            .await,
        "old/old-chat"
    );
    assert_eq!(mock2.calls("old-chat").len(), 1);
    let old = gw.channel_health("old/old-embed").await;
    assert_eq!(old["consecutive_failures"], 0, "{old}");
}
