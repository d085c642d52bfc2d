//! Live health: account-wide rate limits and the circuit breaker.

use std::time::Duration;

use serde_json::{Value, json};
use smart_router_tests::{Behaviour, Gateway, MockUpstream};

fn hello() -> Value {
    json!({"model": "g", "messages": [{"role": "user", "content": "hello"}]})
}

async fn route(gw: &Gateway) -> String {
    gw.served_by(hello()).await
}

#[tokio::test]
async fn a_rate_limit_parks_every_channel_of_the_account_for_retry_after() {
    let mock = MockUpstream::start().await;
    mock.set(
        "x",
        Behaviour::Fail {
            status: 429,
            body: json!({"error": {"message": "rate limited", "type": "rate_limit_error"}}),
            headers: vec![("retry-after".into(), "1".into())],
        },
    );
    let providers = format!(
        "providers:\n  acct:\n    adapter: openai\n    base_url: {0}\n    channels:\n      - {{ model: x, priority: 1 }}\n      - {{ model: y, priority: 2 }}\n      - {{ model: z, priority: 3, separate_rate_limit: true }}\n  other:\n    adapter: openai\n    base_url: {0}\n    channels:\n      - {{ model: w, priority: 4 }}\n",
        mock.base_url()
    );
    let gw = Gateway::builder()
        .providers(&providers)
        .groups("model_groups:\n  g: {strategy: priority}\n")
        .start()
        .await;
    assert_eq!(
        route(&gw).await,
        "acct/z",
        "x answered 429; its sibling y is parked with it; z has its own limit"
    );
    assert!(mock.calls("y").is_empty());
    assert_eq!(route(&gw).await, "acct/z");
    assert_eq!(mock.calls("x").len(), 1, "x waits out its Retry-After");

    mock.set("x", Behaviour::Ok);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(route(&gw).await, "acct/x", "back after Retry-After");
}

/// A gateway over channel `a` (priority 1) and `b` (priority 2), each its own provider entry.
async fn a_then_b(mock: &MockUpstream) -> Gateway {
    let providers = format!(
        "providers:\n  one:\n    adapter: openai\n    base_url: {0}\n    channels: [{{ model: a, priority: 1 }}]\n  two:\n    adapter: openai\n    base_url: {0}\n    channels: [{{ model: b, priority: 2 }}]\n",
        mock.base_url()
    );
    Gateway::builder()
        .providers(&providers)
        .groups("model_groups:\n  g: {strategy: priority}\n")
        .start()
        .await
}

fn down() -> Behaviour {
    Behaviour::Fail {
        status: 500,
        body: json!({"error": {"message": "down", "type": "server_error"}}),
        headers: vec![],
    }
}

#[tokio::test]
async fn a_dead_channel_opens_its_breaker_and_returns_only_through_half_open() {
    let mock = MockUpstream::start().await;
    mock.set("a", down());
    let gw = a_then_b(&mock).await;
    for _ in 0..10 {
        assert_eq!(route(&gw).await, "two/b");
    }
    assert_eq!(
        mock.calls("a").len(),
        5,
        "five failures in a row open the breaker; then a is not called"
    );

    // After the open period, one real request probes a; it has recovered, so the breaker closes.
    mock.set("a", Behaviour::Ok);
    let recovered = gw
        .eventually(Duration::from_secs(8), || async {
            route(&gw).await == "one/a"
        })
        .await;
    assert!(recovered);
    assert_eq!(mock.calls("a").len(), 6, "exactly one probe");
    for _ in 0..3 {
        assert_eq!(route(&gw).await, "one/a", "closed again");
    }
}

#[tokio::test]
async fn active_health_checks_probe_free_channels_only() {
    let mock = MockUpstream::start().await;
    mock.set(
        "free",
        Behaviour::Fail {
            status: 500,
            body: json!({"error": {"message": "down", "type": "server_error"}}),
            headers: vec![],
        },
    );
    let providers = format!(
        "providers:\n  up:\n    adapter: openai\n    base_url: {}\n    channels:\n      - {{ model: free }}\n      - {{ model: paid, input_cost_per_1k: 0.01 }}\n      - {{ model: opted-in, input_cost_per_1k: 0.01, health_check: true }}\n",
        mock.base_url()
    );
    let gw = Gateway::builder()
        .providers(&providers)
        .system("components_dir: components\nhealth_checks:\n  interval_secs: 1\n")
        .start()
        .await;
    let probed = gw
        .eventually(Duration::from_secs(6), || async {
            mock.calls("free").len() >= 2 && !mock.calls("opted-in").is_empty()
        })
        .await;
    assert!(
        probed,
        "free and opted-in channels are probed on the schedule"
    );
    assert!(
        mock.calls("paid").is_empty(),
        "paid channels are not probed by default"
    );
    assert_eq!(mock.calls("free")[0].body["max_tokens"], 1);
    use sqlx::Row;
    let rows = gw
        .rows("SELECT key_id, outcome, error_class FROM usage WHERE channel_id = 'up/free'")
        .await;
    assert!(
        rows.iter()
            .all(|r| r.get::<String, _>("key_id") == "health-check"
                && r.get::<String, _>("outcome") == "error")
    );
    let snap = gw.app.stats.channel("up/free").snapshot();
    assert!(
        snap.consecutive_failures >= 2,
        "probe failures count in the live statistics"
    );
}

#[tokio::test]
async fn a_refused_key_parks_the_account_until_its_config_changes() {
    let mock = MockUpstream::start().await;
    mock.set("a", Behaviour::Fail { status: 401, body: json!({"error": {"message": "Incorrect API key", "type": "invalid_request_error", "code": "invalid_api_key"}}), headers: vec![] });
    let providers = |key: &str| {
        format!(
            "providers:\n  up:\n    adapter: openai\n    base_url: {}\n    api_key: {key}\n    channels: [{{ model: a }}, {{ model: b }}]\n",
            mock.base_url()
        )
    };
    let gw = Gateway::builder()
        .providers(&providers("sk-old-key-1234"))
        .start()
        .await;
    let ask = |m: &'static str| {
        gw.chat(json!({"model": m, "messages": [{"role": "user", "content": "x"}]}))
    };
    assert_eq!(ask("a").await.status(), 502);
    // The whole account (b too) is parked: its key was refused.
    let parked = ask("b").await;
    assert_eq!(parked.status(), 429);
    assert!(parked.headers().contains_key("retry-after"));
    assert!(mock.calls("b").is_empty());

    mock.set("a", Behaviour::Ok);
    gw.write_atomic(
        &gw.config.join("providers.yaml"),
        providers("sk-new-key-5678").as_bytes(),
    );
    let back = gw
        .eventually(Duration::from_secs(5), || async {
            ask("b").await.status() == 200
        })
        .await;
    assert!(back, "a new key lifts the account's cooldown");
    assert_eq!(
        mock.calls("b")[0].headers["authorization"],
        "Bearer sk-new-key-5678"
    );
}

#[tokio::test]
async fn a_probe_that_says_nothing_of_the_channel_lets_the_next_request_probe() {
    let mock = MockUpstream::start().await;
    mock.set("a", down());
    let gw = a_then_b(&mock).await;
    for _ in 0..6 {
        assert_eq!(route(&gw).await, "two/b");
    }
    assert_eq!(mock.calls("a").len(), 5, "the breaker is open");

    // The probe after the open period is refused as too long for a's context: the client's
    // request, not a's health. It fails over to b.
    mock.set(
        "a",
        Behaviour::Fail {
            status: 400,
            body: json!({"error": {"message": "maximum context length exceeded", "type": "invalid_request_error", "code": "context_length_exceeded"}}),
            headers: vec![],
        },
    );
    let probed = gw
        .eventually(Duration::from_secs(8), || async {
            route(&gw).await;
            mock.calls("a").len() == 6
        })
        .await;
    assert!(probed, "a is probed once its breaker half-opens");

    // So the next request probes a again, rather than finding the slot taken for a minute.
    mock.set("a", Behaviour::Ok);
    assert_eq!(route(&gw).await, "one/a");
    assert_eq!(mock.calls("a").len(), 7);
}
