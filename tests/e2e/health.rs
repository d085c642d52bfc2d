//! Live health: account-wide rate limits and the circuit breaker.

use std::time::Duration;

use serde_json::{Value, json};
use smart_router_tests::{Behaviour, Gateway, MockUpstream};

fn hello() -> Value {
    json!({"model": "g", "messages": [{"role": "user", "content": "hello"}]})
}

async fn route(gw: &Gateway) -> String {
    let resp = gw.chat(hello()).await;
    assert_eq!(resp.status(), 200);
    resp.headers()["x-smart-router-channel"]
        .to_str()
        .expect("ascii")
        .to_string()
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

#[tokio::test]
async fn a_dead_channel_opens_its_breaker_and_returns_only_through_half_open() {
    let mock = MockUpstream::start().await;
    mock.set(
        "a",
        Behaviour::Fail {
            status: 500,
            body: json!({"error": {"message": "down", "type": "server_error"}}),
            headers: vec![],
        },
    );
    let providers = format!(
        "providers:\n  one:\n    adapter: openai\n    base_url: {0}\n    channels: [{{ model: a, priority: 1 }}]\n  two:\n    adapter: openai\n    base_url: {0}\n    channels: [{{ model: b, priority: 2 }}]\n",
        mock.base_url()
    );
    let gw = Gateway::builder()
        .providers(&providers)
        .groups("model_groups:\n  g: {strategy: priority}\n")
        .start()
        .await;
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
