//! Per-request usage in the database.

use serde_json::json;
use smart_router_tests::{Behaviour, Gateway, MockUpstream, behind_one_provider};
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
async fn an_answer_without_usage_is_billed_on_estimates_not_as_free() {
    let (gw, mock) = behind_one_provider(
        "      - { model: m, input_cost_per_1k: 10.0, output_cost_per_1k: 10.0 }\n",
        |b| b,
    )
    .await;
    // An OpenAI-compatible server that leaves `usage` out: 400 bytes of answer.
    let answer = "x".repeat(400);
    let body = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]});
    mock.set(
        "m",
        Behaviour::Raw {
            status: 200,
            content_type: "application/json",
            body: body.to_string(),
        },
    );
    let resp = gw
        .chat(json!({"model": "m", "messages": [{"role": "user", "content": "y".repeat(100)}]}))
        .await;
    assert_eq!(resp.status(), 200);
    let got: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(got["choices"][0]["message"]["content"], answer.as_str());
    assert!(got.get("usage").is_none(), "the body is the provider's");

    let rows = gw
        .rows("SELECT prompt_tokens, completion_tokens, cost_micros, outcome FROM usage")
        .await;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.get::<String, _>("outcome"), "success");
    let prompt = row.get::<i64, _>("prompt_tokens");
    assert!(prompt > 0, "the prompt estimate");
    assert_eq!(
        row.get::<i64, _>("completion_tokens"),
        100,
        "a token per 4 bytes"
    );
    // $10 per 1k tokens: 10 000 micro-dollars a token.
    assert_eq!(row.get::<i64, _>("cost_micros"), (prompt + 100) * 10_000);
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

/// A request turned away before anything reached an upstream still leaves one row, keyed by its
/// request id: a model its key may not use, a request no channel offers (`n: 3` where the only
/// channel answers one choice), a group over its budget, every channel cooling down.
#[tokio::test]
async fn requests_turned_away_before_any_upstream_are_recorded() {
    let mock = MockUpstream::start().await;
    mock.set(
        "busy",
        Behaviour::Fail {
            status: 429,
            body: json!({"error": {"message": "slow down", "type": "rate_limit_error"}}),
            headers: vec![("retry-after".into(), "60".into())],
        },
    );
    let providers = format!(
        "providers:\n  claude:\n    adapter: anthropic\n    base_url: mock://\n    channels: [{{model: solo}}]\n  up:\n    adapter: openai\n    base_url: {0}\n    channels: [{{model: busy}}]\n  cap:\n    adapter: openai\n    base_url: {0}\n    channels: [{{model: paid, input_cost_per_1k: 10.0, output_cost_per_1k: 10.0}}]\n",
        mock.base_url()
    );
    let gw = Gateway::builder()
        .providers(&providers)
        .groups("model_groups:\n  auto:busy:\n    strategy: priority\n    channels: [{channel: up/busy}]\n  auto:capped:\n    strategy: priority\n    budget: {daily: 0.0001}\n    channels: [{channel: cap/paid}]\n")
        .adapters(&["anthropic", "openai"])
        .start()
        .await;
    let hash = smart_router::app::hex(&<sha2::Sha256 as sha2::Digest>::digest(b"sk-only-busy"));
    gw.app
        .store
        .create_key(
            "key_busy",
            "busy only",
            &hash,
            Some("busy"),
            Default::default(),
        )
        .await
        .expect("key");
    let ask =
        |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    let id_of = |resp: &reqwest::Response| {
        resp.headers()["x-request-id"]
            .to_str()
            .expect("ascii")
            .to_string()
    };
    let row_of = |id: String| {
        let gw = &gw;
        async move {
            let rows = gw
                .rows(&format!("SELECT attempt, key_id, group_name, channel_id, status, outcome, error_class, error_message FROM usage WHERE request_id = '{id}' ORDER BY attempt"))
                .await;
            assert_eq!(rows.len(), 1, "one row for {id}");
            let r = &rows[0];
            (
                r.get::<i64, _>("attempt"),
                r.get::<String, _>("key_id"),
                r.get::<Option<String>, _>("group_name"),
                r.get::<Option<String>, _>("channel_id"),
                r.get::<String, _>("outcome"),
                r.get::<Option<String>, _>("error_class"),
                r.get::<Option<String>, _>("error_message")
                    .unwrap_or_default(),
            )
        }
    };

    let forbidden = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("sk-only-busy")
        .json(&ask("solo"))
        .send()
        .await
        .expect("send");
    assert_eq!(forbidden.status(), 403);
    let (attempt, key, _, channel, outcome, class, _) = row_of(id_of(&forbidden)).await;
    assert_eq!((attempt, key.as_str(), channel), (0, "key_busy", None));
    assert_eq!(outcome, "client_error");
    assert_eq!(class.as_deref(), Some("model_not_allowed"));

    let mut three = ask("solo");
    three["n"] = json!(3);
    let unsupported = gw.chat(three).await;
    assert_eq!(unsupported.status(), 400);
    let (attempt, key, _, channel, outcome, class, message) = row_of(id_of(&unsupported)).await;
    assert_eq!((attempt, key.as_str(), channel), (0, "master", None));
    assert_eq!(outcome, "client_error");
    assert_eq!(class.as_deref(), Some("unsupported_by_channels"));
    assert!(message.contains("claude/solo: unsupported"), "{message}");

    // The upstream's 429 is an attempt of its own; it parks the channel, so the next request is
    // turned away without reaching it.
    let limited = gw.chat(ask("auto:busy")).await;
    assert_eq!(limited.status(), 429);
    let (attempt, _, group, channel, outcome, class, _) = row_of(id_of(&limited)).await;
    assert_eq!((attempt, group.as_deref()), (1, Some("auto:busy")));
    assert_eq!(channel.as_deref(), Some("up/busy"));
    assert_eq!(
        (outcome.as_str(), class.as_deref()),
        ("error", Some("rate_limited"))
    );
    let cooling = gw.chat(ask("auto:busy")).await;
    assert_eq!(cooling.status(), 429);
    let (attempt, _, group, channel, outcome, class, _) = row_of(id_of(&cooling)).await;
    assert_eq!(
        (attempt, group.as_deref(), channel),
        (0, Some("auto:busy"), None)
    );
    assert_eq!(outcome, "error");
    assert_eq!(class.as_deref(), Some("all_channels_cooling_down"));

    let capped = gw.chat(ask("auto:capped")).await;
    assert_eq!(capped.status(), 402);
    let (attempt, _, group, channel, outcome, class, message) = row_of(id_of(&capped)).await;
    assert_eq!(
        (attempt, group.as_deref(), channel),
        (0, Some("auto:capped"), None)
    );
    assert_eq!(
        (outcome.as_str(), class.as_deref()),
        ("error", Some("budget_exceeded"))
    );
    assert!(message.contains("cap/paid: budget"), "{message}");
    assert!(mock.calls("busy").len() == 1 && mock.calls("paid").is_empty());
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

/// A client's own request id (OpenAI's `X-Client-Request-Id`, or an `X-Request-Id` a proxy in
/// front set) is echoed back, kept on the request's usage rows, and a malformed one is refused.
#[tokio::test]
async fn a_client_request_id_is_echoed_and_recorded() {
    let gw = Gateway::builder()
        .providers("providers:\n  mock:\n    adapter: openai\n    base_url: mock://\n    channels: [{model: mock-small}]\n")
        .start()
        .await;
    let send = |model: &str, stream: bool, header: &'static str, value: Vec<u8>| {
        let body = json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]});
        gw.client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(smart_router_tests::gateway::KEY)
            .header(
                header,
                reqwest::header::HeaderValue::from_bytes(&value).expect("header"),
            )
            .json(&body)
            .send()
    };
    let stored = |id: String| {
        let gw = &gw;
        async move {
            gw.rows(&format!(
                "SELECT client_request_id FROM usage WHERE request_id = '{id}'"
            ))
            .await
            .iter()
            .map(|r| r.get::<Option<String>, _>("client_request_id"))
            .collect::<Vec<_>>()
        }
    };
    let echo = |resp: &reqwest::Response| smart_router_tests::header(resp, "x-client-request-id");
    let ours = |resp: &reqwest::Response| {
        let id = resp.headers()["x-request-id"].to_str().expect("ascii");
        assert!(id.starts_with("req_"), "{id}");
        id.to_string()
    };

    for stream in [false, true] {
        let trace = format!("trace-7f3a {stream}");
        let resp = send(
            "mock-small",
            stream,
            "X-Client-Request-Id",
            trace.clone().into(),
        )
        .await
        .expect("send");
        assert_eq!(resp.status(), 200);
        assert_eq!(echo(&resp).as_deref(), Some(trace.as_str()));
        let id = ours(&resp);
        let _ = resp.text().await;
        assert_eq!(stored(id).await, [Some(trace)]);
    }

    // An error answer carries it too, and so does the row of a request no channel could take.
    let resp = send(
        "ghost",
        false,
        "X-Client-Request-Id",
        b"trace-ghost".to_vec(),
    )
    .await
    .expect("send");
    assert_eq!(resp.status(), 404);
    assert_eq!(echo(&resp).as_deref(), Some("trace-ghost"));
    assert_eq!(stored(ours(&resp)).await, [Some("trace-ghost".to_string())]);

    // A proxy's X-Request-Id stands in when the client sent none.
    let resp = send("mock-small", false, "X-Request-Id", b"envoy-1234".to_vec())
        .await
        .expect("send");
    assert_eq!(echo(&resp).as_deref(), Some("envoy-1234"));
    assert_eq!(stored(ours(&resp)).await, [Some("envoy-1234".to_string())]);

    // A malformed X-Client-Request-Id is the client's error; a malformed X-Request-Id, which
    // infrastructure may have set, is ignored.
    for bad in [
        "x".repeat(513).into_bytes(),
        "caf\u{e9}".as_bytes().to_vec(),
    ] {
        let resp = send("mock-small", false, "X-Client-Request-Id", bad)
            .await
            .expect("send");
        assert_eq!(resp.status(), 400);
        let body: serde_json::Value = resp.json().await.expect("json");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(message.contains("X-Client-Request-Id"), "{message}");
    }
    let resp = send(
        "mock-small",
        false,
        "X-Request-Id",
        "y".repeat(513).into_bytes(),
    )
    .await
    .expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(echo(&resp), None);
    assert_eq!(stored(ours(&resp)).await, [None]);
}
