//! The built-in strategies, routing real requests.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use smart_router_tests::{Behaviour, Gateway, MockUpstream, behind_one_provider};

async fn setup(strategy: &str, channels: &str) -> (Gateway, MockUpstream) {
    behind_one_provider(channels, |b| {
        b.groups(&format!("model_groups:\n  g:\n    strategy: {strategy}\n"))
            .strategies(&[strategy])
    })
    .await
}

async fn route(gw: &Gateway, body: Value) -> String {
    gw.served_by(body).await
}

fn hello() -> Value {
    json!({"model": "g", "messages": [{"role": "user", "content": "hello"}]})
}

#[tokio::test]
async fn lowest_cost_prices_this_request() {
    let (gw, _mock) = setup(
        "lowest-cost",
        "      - { model: cheap-in, input_cost_per_1k: 0.001, output_cost_per_1k: 0.01 }\n      - { model: cheap-out, input_cost_per_1k: 0.005, output_cost_per_1k: 0.002 }\n",
    )
    .await;
    // A long answer: output price dominates.
    let long_answer =
        json!({"model": "g", "max_tokens": 2000, "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(route(&gw, long_answer).await, "up/cheap-out");
    // A long prompt and a one-token answer: input price dominates.
    let long_prompt = json!({"model": "g", "max_tokens": 1, "messages": [{"role": "user", "content": "x".repeat(40_000)}]});
    assert_eq!(route(&gw, long_prompt).await, "up/cheap-in");
}

#[tokio::test]
async fn round_robin_takes_turns_within_the_first_tier() {
    let (gw, _mock) = setup(
        "round-robin",
        "      - { model: a, priority: 1 }\n      - { model: b, priority: 1 }\n      - { model: c, priority: 1 }\n      - { model: backup, priority: 2 }\n",
    )
    .await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(route(&gw, hello()).await);
    }
    assert_eq!(seen[..3], seen[3..], "the rotation repeats");
    let mut first: Vec<&String> = seen[..3].iter().collect();
    first.sort();
    assert_eq!(first, ["up/a", "up/b", "up/c"]);
}

#[tokio::test]
async fn fastest_measures_every_channel_then_prefers_the_quickest() {
    let (gw, mock) = setup(
        "fastest",
        "      - { model: slow, priority: 1 }\n      - { model: quick, priority: 2 }\n",
    )
    .await;
    mock.set("slow", Behaviour::Slow(Duration::from_millis(150)));
    assert_eq!(
        route(&gw, hello()).await,
        "up/slow",
        "unmeasured: priority order"
    );
    assert_eq!(
        route(&gw, hello()).await,
        "up/quick",
        "the other one gets measured"
    );
    for _ in 0..5 {
        assert_eq!(route(&gw, hello()).await, "up/quick");
    }
}

#[tokio::test]
async fn p2c_moves_traffic_off_the_slow_channel() {
    let (gw, mock) = setup("p2c", "      - { model: slow }\n      - { model: quick }\n").await;
    mock.set("slow", Behaviour::Slow(Duration::from_millis(150)));
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..12 {
        *counts.entry(route(&gw, hello()).await).or_default() += 1;
    }
    assert!(
        counts.get("up/slow").copied().unwrap_or(0) <= 1,
        "{counts:?}"
    );
}

#[tokio::test]
async fn least_busy_spreads_concurrent_requests() {
    let (gw, mock) = setup("least-busy", "      - { model: a }\n      - { model: b }\n").await;
    mock.set("a", Behaviour::Slow(Duration::from_millis(400)));
    mock.set("b", Behaviour::Slow(Duration::from_millis(400)));
    let gw = std::sync::Arc::new(gw);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move { route(&gw, hello()).await }));
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        *counts.entry(t.await.expect("task")).or_default() += 1;
    }
    assert_eq!(counts.get("up/a"), Some(&2), "{counts:?}");
    assert_eq!(counts.get("up/b"), Some(&2), "{counts:?}");
}

#[tokio::test]
async fn weighted_sort_puts_free_first_and_priority_splits_by_weight() {
    let (gw, _mock) = setup(
        "weighted-sort",
        "      - { model: paid, input_cost_per_1k: 0.01, output_cost_per_1k: 0.01 }\n      - { model: free }\n",
    )
    .await;
    for _ in 0..3 {
        assert_eq!(route(&gw, hello()).await, "up/free");
    }

    let (gw, _mock) = setup("priority", "      - { model: heavy, weight: 3 }\n      - { model: light, weight: 1 }\n      - { model: backup, priority: 2, weight: 100 }\n").await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..200 {
        *counts.entry(route(&gw, hello()).await).or_default() += 1;
    }
    let heavy = counts.get("up/heavy").copied().unwrap_or(0);
    assert!(
        !counts.contains_key("up/backup"),
        "tier 2 only as a fallback: {counts:?}"
    );
    // 3:1 → 150 expected; far outside binomial noise if weights were ignored (100).
    assert!((125..=175).contains(&heavy), "{counts:?}");
}
