//! Failover: temporary failures move on to the next channel; the client's own errors do not.

use serde_json::{Value, json};
use smart_router_tests::gateway::one_provider;
use smart_router_tests::{Behaviour, Gateway, MockUpstream};

fn msg() -> Value {
    json!([{"role": "user", "content": "hello"}])
}

async fn setup(models: &[&str]) -> (Gateway, MockUpstream) {
    let mock = MockUpstream::start().await;
    let gw = Gateway::builder()
        .providers(&one_provider(&mock.base_url(), models))
        .groups("model_groups:\n  g:\n    strategy: priority\n")
        .start()
        .await;
    (gw, mock)
}

fn fail(status: u16, kind: &str) -> Behaviour {
    Behaviour::Fail {
        status,
        body: json!({"error": {"message": format!("{kind} happened"), "type": kind}}),
        headers: vec![],
    }
}

#[tokio::test]
async fn server_error_fails_over_to_the_next_channel() {
    let (gw, mock) = setup(&["a", "b"]).await;
    mock.set("a", fail(500, "server_error"));
    let resp = gw.chat(json!({"model": "g", "messages": msg()})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-smart-router-channel"], "up/b");
    assert_eq!(mock.calls("a").len(), 1);
    assert_eq!(mock.calls("b").len(), 1);
}

#[tokio::test]
async fn rate_limit_fails_over_and_all_rate_limited_answers_429_with_retry_after() {
    // Two accounts: a 429 on one does not park the other.
    let mock = MockUpstream::start().await;
    let providers = format!(
        "providers:\n  one:\n    adapter: openai\n    base_url: {0}\n    channels: [{{model: a, priority: 1}}]\n  two:\n    adapter: openai\n    base_url: {0}\n    channels: [{{model: b, priority: 2}}]\n",
        mock.base_url()
    );
    let gw = Gateway::builder()
        .providers(&providers)
        .groups("model_groups:\n  g: {strategy: priority}\n")
        .start()
        .await;
    let limited = Behaviour::Fail {
        status: 429,
        body: json!({"error": {"message": "slow down", "type": "rate_limit_error"}}),
        headers: vec![("retry-after".into(), "7".into())],
    };
    mock.set("a", limited.clone());
    let resp = gw.chat(json!({"model": "g", "messages": msg()})).await;
    assert_eq!(resp.headers()["x-smart-router-channel"], "two/b");

    mock.set("b", limited);
    // `a` is cooling down now; `b` answers 429 too.
    let resp = gw.chat(json!({"model": "g", "messages": msg()})).await;
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=7).contains(&retry), "retry-after {retry}");
    let body: Value = resp.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );

    // Both cooling: the gateway answers at once, without calling anyone.
    let before = mock.total_calls();
    let resp = gw.chat(json!({"model": "g", "messages": msg()})).await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(mock.total_calls(), before);
}

#[tokio::test]
async fn client_errors_are_returned_at_once() {
    let (gw, mock) = setup(&["a", "b"]).await;
    mock.set("a", fail(400, "invalid_request_error"));
    let resp = gw.chat(json!({"model": "g", "messages": msg()})).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("invalid_request_error happened")
    );
    assert!(
        mock.calls("b").is_empty(),
        "a client error must not be retried elsewhere"
    );
}

#[tokio::test]
async fn connection_refused_and_timeouts_fail_over() {
    // A port that refuses connections.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    let mock = MockUpstream::start().await;
    mock.set("slow", Behaviour::Hang);
    let providers = format!(
        "providers:\n  dead:\n    adapter: openai\n    base_url: http://{dead_addr}/v1\n    channels: [{{model: a, priority: 1}}]\n  up:\n    adapter: openai\n    base_url: {}\n    channels: [{{model: slow, priority: 2}}, {{model: good, priority: 3}}]\n",
        mock.base_url()
    );
    let gw = Gateway::builder()
        .providers(&providers)
        .groups("model_groups:\n  g: {strategy: priority}\n")
        .system("components_dir: components\nupstream:\n  first_byte_timeout_secs: 1\n")
        .start()
        .await;
    let resp = gw.chat(json!({"model": "g", "messages": msg()})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-smart-router-channel"], "up/good");
    let rows = gw
        .rows("SELECT channel_id, error_class, attempt FROM usage ORDER BY attempt")
        .await;
    use sqlx::Row;
    let seen: Vec<(String, Option<String>, i64)> = rows
        .iter()
        .map(|r| (r.get("channel_id"), r.get("error_class"), r.get("attempt")))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("dead/a".into(), Some("connect".into()), 1),
            ("up/slow".into(), Some("timeout".into()), 2),
            ("up/good".into(), None, 3)
        ]
    );
}

#[tokio::test]
async fn all_failing_gives_502_and_each_channel_is_tried_once() {
    let (gw, mock) = setup(&["a", "b", "c"]).await;
    for m in ["a", "b", "c"] {
        mock.set(m, fail(503, "overloaded"));
    }
    let resp = gw.chat(json!({"model": "g", "messages": msg()})).await;
    assert_eq!(resp.status(), 502);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "all_channels_failed");
    for m in ["a", "b", "c"] {
        assert_eq!(mock.calls(m).len(), 1, "{m} tried exactly once");
    }
    // The provider's key never shows in what the client sees.
    assert!(!body.to_string().contains("sk-upstream-secret"));
}

#[tokio::test]
async fn error_inside_a_200_stream_before_output_fails_over() {
    let (gw, mock) = setup(&["a", "b"]).await;
    mock.set("a", Behaviour::StreamErrorAfter(0));
    let resp = gw
        .chat(json!({"model": "g", "stream": true, "messages": msg()}))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-smart-router-channel"], "up/b");
    let text = resp.text().await.expect("body");
    assert!(
        text.contains("reply") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
}

#[tokio::test]
async fn a_stream_that_breaks_after_output_ends_with_an_error_event() {
    let (gw, mock) = setup(&["a", "b"]).await;
    mock.set("a", Behaviour::StreamErrorAfter(2));
    let resp = gw
        .chat(json!({"model": "g", "stream": true, "messages": msg()}))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-smart-router-channel"], "up/a");
    let data = crate::chat::sse_data(&resp.text().await.expect("body"));
    let last: Value = serde_json::from_str(data.last().expect("events")).expect("json");
    assert!(
        last["error"]["message"]
            .as_str()
            .expect("message")
            .contains("upstream exploded"),
        "{last}"
    );
    assert!(!data.contains(&"[DONE]".to_string()));
    assert!(mock.calls("b").is_empty(), "no failover once output began");
}
