//! Per-request usage in the database.

use serde_json::json;
use smart_router_tests::{Behaviour, Gateway, MockUpstream};
use sqlx::Row;

#[tokio::test]
async fn every_attempt_leaves_a_complete_usage_row() {
    let mock = MockUpstream::start().await;
    mock.set(
        "a",
        Behaviour::Fail {
            status: 500,
            body: json!({"error": {"message": "boom", "type": "server_error"}}),
            headers: vec![],
        },
    );
    let providers = format!(
        "providers:\n  up:\n    adapter: openai\n    base_url: {}\n    api_key: sk-upstream-secret-0123456789\n    channels:\n      - {{ model: a, priority: 1 }}\n      - {{ model: b, priority: 2, input_cost_per_1k: 1.5, output_cost_per_1k: 2.0, cost_multiplier: 0.5 }}\n",
        mock.base_url()
    );
    let gw = Gateway::builder()
        .providers(&providers)
        .groups("model_groups:\n  g: {strategy: priority}\n")
        .start()
        .await;
    let resp = gw
        .chat(json!({"model": "g", "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(resp.status(), 200);
    let request_id = resp.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_string();

    let rows = gw
        .rows("SELECT request_id, attempt, key_id, requested_model, group_name, channel_id, provider, upstream_model, prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, cost_micros, latency_ms, status, outcome, error_class FROM usage ORDER BY attempt")
        .await;
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert_eq!(r.get::<String, _>("request_id"), request_id);
        assert_eq!(r.get::<String, _>("key_id"), "master");
        assert_eq!(r.get::<String, _>("requested_model"), "g");
        assert_eq!(
            r.get::<Option<String>, _>("group_name").as_deref(),
            Some("g")
        );
        assert_eq!(
            r.get::<Option<String>, _>("provider").as_deref(),
            Some("up")
        );
        assert!(r.get::<i64, _>("latency_ms") >= 0);
    }
    let failed = &rows[0];
    assert_eq!(
        failed.get::<Option<String>, _>("channel_id").as_deref(),
        Some("up/a")
    );
    assert_eq!(failed.get::<i64, _>("status"), 500);
    assert_eq!(failed.get::<String, _>("outcome"), "error");
    assert_eq!(
        failed.get::<Option<String>, _>("error_class").as_deref(),
        Some("server_error")
    );

    let ok = &rows[1];
    assert_eq!(ok.get::<i64, _>("attempt"), 2);
    assert_eq!(
        ok.get::<Option<String>, _>("upstream_model").as_deref(),
        Some("b")
    );
    assert_eq!(ok.get::<String, _>("outcome"), "success");
    assert_eq!(ok.get::<Option<String>, _>("error_class"), None);
    assert_eq!(ok.get::<i64, _>("prompt_tokens"), 11);
    assert_eq!(ok.get::<i64, _>("completion_tokens"), 7);
    assert_eq!(ok.get::<i64, _>("cached_tokens"), 3);
    assert_eq!(ok.get::<i64, _>("reasoning_tokens"), 2);
    // (11 × 1.5 + 7 × 2.0) / 1000 × 0.5 = 0.01525 $ = 15 250 micro-dollars
    assert_eq!(ok.get::<i64, _>("cost_micros"), 15_250);
}

#[tokio::test]
async fn unroutable_requests_are_recorded_too() {
    let gw = Gateway::builder().start().await;
    let resp = gw
        .chat(json!({"model": "ghost", "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(resp.status(), 404);
    let rows = gw
        .rows("SELECT attempt, outcome, error_class, channel_id FROM usage")
        .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<i64, _>("attempt"), 0);
    assert_eq!(
        rows[0].get::<Option<String>, _>("error_class").as_deref(),
        Some("model_not_found")
    );
    assert_eq!(rows[0].get::<Option<String>, _>("channel_id"), None);
}

#[tokio::test]
async fn graceful_shutdown_writes_every_record() {
    let mut gw = Gateway::builder()
        .providers("providers:\n  mock:\n    adapter: openai\n    base_url: mock://\n    channels: [{model: mock-small}]\n")
        .start()
        .await;
    let mut handles = Vec::new();
    for i in 0..40 {
        let (client, url) = (gw.client.clone(), gw.url("/v1/chat/completions"));
        handles.push(tokio::spawn(async move {
            let body = json!({"model": "mock-small", "stream": i % 2 == 0, "messages": [{"role": "user", "content": "hi"}]});
            let resp = client.post(url).bearer_auth(smart_router_tests::gateway::KEY).json(&body).send().await.expect("send");
            let status = resp.status();
            let _ = resp.text().await;
            status
        }));
    }
    for h in handles {
        assert_eq!(h.await.expect("task"), 200);
    }
    gw.stop().await;
    // A fresh connection to the file sees every record.
    let url = format!("sqlite://{}", gw.dir.join("usage.db").display());
    let pool = sqlx::AnyPool::connect(&url).await.expect("open");
    let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM usage")
        .fetch_one(&pool)
        .await
        .expect("count")
        .get("n");
    assert_eq!(n, 40);
}
