//! Daily quotas: exact under concurrency, and the next channel takes over at exhaustion.

use serde_json::json;
use smart_router_tests::{Gateway, MockUpstream, behind_one_provider};

#[tokio::test]
async fn sixty_four_concurrent_requests_against_a_limit_of_fifty_make_exactly_fifty_calls() {
    let (gw, mock) = behind_one_provider("      - { model: a, daily_limit: 50 }\n", |b| {
        b.groups("model_groups: {}\n")
    })
    .await;
    let gw = std::sync::Arc::new(gw);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            gw.chat(json!({"model": "a", "messages": [{"role": "user", "content": "x"}]}))
                .await
                .status()
                .as_u16()
        }));
    }
    let mut ok = 0;
    let mut limited = 0;
    for t in tasks {
        match t.await.expect("task") {
            200 => ok += 1,
            429 | 503 => limited += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(ok, 50);
    assert_eq!(limited, 14);
    assert_eq!(
        mock.calls("a").len(),
        50,
        "exactly the limit reached the upstream"
    );
}

#[tokio::test]
async fn the_free_quota_is_spent_first_then_the_paid_channel_takes_over() {
    let (gw, mock) = behind_one_provider(
        "      - { model: free, daily_limit: 3 }\n      - { model: paid, input_cost_per_1k: 0.001, output_cost_per_1k: 0.002 }\n",
        |b| b.groups("model_groups:\n  auto:cheap:\n    routing_strategy:\n      - { field: effective_cost, order: asc, weight: 1.0 }\n"),
    )
    .await;
    let mut served = Vec::new();
    for _ in 0..5 {
        let resp = gw
            .chat(json!({"model": "auto:cheap", "messages": [{"role": "user", "content": "x"}]}))
            .await;
        assert_eq!(resp.status(), 200);
        served.push(
            resp.headers()["x-smart-router-channel"]
                .to_str()
                .expect("ascii")
                .to_string(),
        );
    }
    assert_eq!(
        served,
        ["up/free", "up/free", "up/free", "up/paid", "up/paid"]
    );
    assert_eq!(mock.calls("free").len(), 3);
}

#[tokio::test]
async fn provider_keys_never_reach_clients_or_logs() {
    let (gw, mock) =
        behind_one_provider("      - { model: a }\n", |b| b.groups("model_groups: {}\n")).await;
    let secret = "sk-upstream-secret-0123456789";
    // A provider that echoes the key back in its error (some do, partly masked or not).
    mock.set("a", smart_router_tests::Behaviour::Fail { status: 401, body: json!({"error": {"message": format!("Incorrect API key provided: {secret}"), "type": "invalid_request_error", "code": "invalid_api_key"}}), headers: vec![] });
    let gw2 = Gateway::builder()
        .providers(&format!("providers:\n  up:\n    adapter: openai\n    base_url: {}\n    api_key: {secret}\n    channels: [{{model: a}}]\n", mock.base_url()))
        .start()
        .await;
    let resp = gw2
        .chat(json!({"model": "a", "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(resp.status(), 502);
    let text = resp.text().await.expect("body");
    assert!(text.contains("<redacted>"), "{text}");
    assert!(!text.contains(secret), "{text}");
    assert!(
        !smart_router_tests::logs().contains(secret),
        "a provider key reached the logs"
    );
    let rows = gw2.rows("SELECT error_message FROM usage").await;
    use sqlx::Row;
    assert!(rows.iter().all(|r| {
        !r.get::<Option<String>, _>("error_message")
            .unwrap_or_default()
            .contains(secret)
    }));
    let health = gw2.get_text("/health").await;
    assert!(!health.contains(secret));
    let metrics = gw2.get_text("/metrics").await;
    assert!(metrics.contains("smart_router_requests_total"), "{metrics}");
    assert!(!metrics.contains(secret));
    let channels = gw2.get_text("/admin/channels").await;
    assert!(!channels.contains(secret), "{channels}");
    // `smart-router check`, on this configuration and on a broken one, never prints the key.
    for broken in [false, true] {
        let groups = if broken {
            "model_groups:\n  g: {channels: [{channel: up/missing}]}\n"
        } else {
            "model_groups: {}\n"
        };
        std::fs::write(gw2.config.join("model_groups.yaml"), groups).expect("write");
        let out = std::process::Command::new(
            smart_router_tests::root().join("target/release/smart-router"),
        )
        .args(["check", "--config"])
        .arg(&gw2.config)
        .output()
        .expect("check runs");
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.success(), !broken, "{printed}");
        assert!(!printed.contains(secret), "{printed}");
    }
    drop(gw);
}

fn ask(tokens: u32) -> serde_json::Value {
    json!({"model": "g", "max_tokens": tokens, "messages": [{"role": "user", "content": "x"}]})
}

async fn served_by(gw: &Gateway, body: serde_json::Value) -> String {
    gw.served_by(body).await
}

#[tokio::test]
async fn daily_token_and_cost_limits_settle_with_real_usage() {
    // Every mock answer uses 11 + 7 = 18 tokens.
    let (gw, mock) = behind_one_provider(
        "      - { model: a, priority: 1, daily_token_limit: 40 }\n      - { model: c, priority: 2, input_cost_per_1k: 1.0, output_cost_per_1k: 1.0, daily_cost_limit: 0.04 }\n      - { model: z, priority: 3 }\n",
        |b| b.groups("model_groups:\n  g: {strategy: priority}\n"),
    )
    .await;
    // a: 18 used, then 36; a third call would reserve more than the 4 tokens left.
    let mut order = Vec::new();
    for _ in 0..5 {
        order.push(served_by(&gw, ask(5)).await);
    }
    assert_eq!(order, ["up/a", "up/a", "up/c", "up/c", "up/z"]);
    assert_eq!(mock.calls("a").len(), 2, "40 tokens allow two calls of 18");
    // c costs $0.018 a call: two fit in $0.04, the third would not.
    assert_eq!(mock.calls("c").len(), 2);
    assert_eq!(mock.calls("z").len(), 1);
    let rows = gw.rows("SELECT channel_id, prompt_tokens, completion_tokens, cost_micros FROM usage WHERE channel_id = 'up/c'").await;
    use sqlx::Row;
    assert!(
        rows.iter()
            .all(|r| r.get::<i64, _>("cost_micros") == 18_000)
    );
}

#[tokio::test]
async fn daily_limits_survive_a_restart() {
    let mock = MockUpstream::start().await;
    let dir = smart_router_tests::gateway::temp_dir("restart");
    let db = format!("sqlite://{}", dir.join("db.sqlite").display());
    let providers = format!(
        "providers:\n  up:\n    adapter: openai\n    base_url: {}\n    channels:\n      - {{ model: a, priority: 1, daily_limit: 2 }}\n      - {{ model: b, priority: 2 }}\n",
        mock.base_url()
    );
    let groups = "model_groups:\n  g: {strategy: priority}\n";
    let mut first = Gateway::builder()
        .providers(&providers)
        .groups(groups)
        .database(&db)
        .start()
        .await;
    assert_eq!(served_by(&first, ask(5)).await, "up/a");
    assert_eq!(served_by(&first, ask(5)).await, "up/a");
    first.stop().await;
    let second = Gateway::builder()
        .providers(&providers)
        .groups(groups)
        .database(&db)
        .start()
        .await;
    assert_eq!(
        served_by(&second, ask(5)).await,
        "up/b",
        "today's two requests were remembered"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn an_off_peak_window_changes_the_price_routing_sees() {
    let (gw, _mock) = behind_one_provider(
        "      - { model: peak-cheap, input_cost_per_1k: 0.002, output_cost_per_1k: 0.002 }\n      - { model: offpeak, input_cost_per_1k: 0.003, output_cost_per_1k: 0.003 }\n",
        |b| b.groups("model_groups:\n  g:\n    routing_strategy: [{ field: effective_cost, order: asc, weight: 1.0 }]\n"),
    )
    .await;
    assert_eq!(served_by(&gw, ask(5)).await, "up/peak-cheap");

    // A half-price window around the current minute (UTC) makes `offpeak` the cheaper one…
    let minute = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        / 60
        % 1440) as u32;
    let hhmm = |m: u32| format!("{:02}:{:02}", (m % 1440) / 60, m % 60);
    let policy = |start: u32, end: u32| {
        format!(
            "pricing_policies:\n  - name: night\n    channels: [up/offpeak]\n    time_window: {{ start: \"{}\", end: \"{}\" }}\n    multiplier: 0.5\n",
            hhmm(start),
            hhmm(end)
        )
    };
    let path = gw.config.join("pricing_policies.yaml");
    gw.write_atomic(&path, policy(minute + 1439, minute + 3).as_bytes());
    let flipped = gw
        .eventually(std::time::Duration::from_secs(5), || async {
            served_by(&gw, ask(5)).await == "up/offpeak"
        })
        .await;
    assert!(flipped, "inside the window the discounted channel wins");
    let rows = gw.rows("SELECT cost_micros, prompt_tokens, completion_tokens FROM usage WHERE channel_id = 'up/offpeak'").await;
    use sqlx::Row;
    // Billed at the discounted price: 18 tokens × $0.003/1k × 0.5 = 27 micro-dollars.
    assert!(rows.iter().all(|r| r.get::<i64, _>("cost_micros") == 27));

    // …and a window that has not started yet changes nothing.
    gw.write_atomic(&path, policy(minute + 5, minute + 10).as_bytes());
    let back = gw
        .eventually(std::time::Duration::from_secs(5), || async {
            served_by(&gw, ask(5)).await == "up/peak-cheap"
        })
        .await;
    assert!(back, "outside the window the base prices rule");
}
