//! Strategies and adapters as hot-swappable components: dropped in, replaced under load, broken,
//! removed, and misbehaving.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use smart_router_tests::gateway::one_provider;
use smart_router_tests::{Gateway, MockUpstream, component, logs};

async fn setup(strategy: &str, loaded: &[&str]) -> (Gateway, MockUpstream) {
    let mock = MockUpstream::start().await;
    let gw = Gateway::builder()
        .providers(&one_provider(&mock.base_url(), &["a", "b"]))
        .groups(&format!("model_groups:\n  g:\n    strategy: {strategy}\n"))
        .strategies(loaded)
        .start()
        .await;
    (gw, mock)
}

async fn channel_for(gw: &Gateway) -> String {
    gw.served_by(json!({"model": "g", "messages": [{"role": "user", "content": "hi"}]}))
        .await
}

/// A distinct but equivalent file: the same component with a custom section appended.
fn variant(bytes: &[u8], n: u8) -> Vec<u8> {
    let name = b"variant";
    let mut out = bytes.to_vec();
    out.push(0); // custom section id
    out.push((1 + name.len() + 1) as u8); // section size (LEB128, < 128)
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.push(n);
    out
}

#[tokio::test]
async fn a_dropped_in_strategy_is_used_without_restart() {
    let (gw, _mock) = setup("reverse", &["priority", "weighted-sort"]).await;
    // Not loaded yet: the group routes in priority order.
    assert_eq!(channel_for(&gw).await, "up/a");
    assert!(logs().contains("names strategy `reverse`, which is not loaded"));

    std::fs::copy(
        component("strategies", "reverse"),
        gw.components("strategies").join("reverse.wasm"),
    )
    .expect("copy");
    let used = gw
        .eventually(Duration::from_secs(5), || async {
            channel_for(&gw).await == "up/b"
        })
        .await;
    assert!(used, "the dropped-in strategy should take over");
    assert!(logs().contains("strategy `reverse` loaded"));
}

#[tokio::test]
async fn a_broken_file_is_refused_and_the_previous_version_keeps_serving() {
    let (gw, _mock) = setup("reverse", &["reverse"]).await;
    assert_eq!(channel_for(&gw).await, "up/b");
    let path = gw.components("strategies").join("reverse.wasm");
    gw.write_atomic(&path, b"\0asm this is not a component");
    let refused = gw
        .eventually(Duration::from_secs(5), || async {
            logs().contains("refused strategy file")
        })
        .await;
    assert!(refused, "a refusal is logged");
    let line = logs()
        .lines()
        .find(|l| l.contains("refused strategy file"))
        .expect("line")
        .to_string();
    assert!(
        line.contains("reverse.wasm") && line.contains("not a valid WebAssembly component"),
        "{line}"
    );
    assert!(line.contains("previous version keeps serving"), "{line}");
    for _ in 0..5 {
        assert_eq!(
            channel_for(&gw).await,
            "up/b",
            "the last good version still serves"
        );
    }
}

#[tokio::test]
async fn a_component_for_the_wrong_world_is_refused_naming_the_expected_world() {
    let (gw, _mock) = setup("priority", &["priority"]).await;
    std::fs::copy(
        component("adapters", "openai"),
        gw.components("strategies").join("confused.wasm"),
    )
    .expect("copy");
    let refused = gw
        .eventually(Duration::from_secs(5), || async {
            logs().contains("confused.wasm") && logs().contains("refused")
        })
        .await;
    assert!(refused);
    let line = logs()
        .lines()
        .find(|l| l.contains("confused.wasm") && l.contains("refused"))
        .expect("line")
        .to_string();
    assert!(line.contains("expected the `strategy` world"), "{line}");
    assert!(!gw.app.components.load().strategies.contains_key("confused"));
}

#[tokio::test]
async fn removing_a_strategy_a_group_uses_keeps_its_last_loaded_version() {
    let (gw, _mock) = setup("reverse", &["reverse"]).await;
    std::fs::remove_file(gw.components("strategies").join("reverse.wasm")).expect("rm");
    let logged = gw
        .eventually(Duration::from_secs(5), || async {
            logs().contains("keeping its last loaded version")
        })
        .await;
    assert!(logged);
    assert!(logs().contains("group `g`"));
    assert_eq!(channel_for(&gw).await, "up/b");
}

#[tokio::test]
async fn swapping_strategies_and_adapters_under_load_fails_no_request() {
    let (gw, mock) = setup("weighted-sort", &["weighted-sort"]).await;
    let strategy = std::fs::read(component("strategies", "weighted-sort")).expect("read");
    let other = std::fs::read(component("strategies", "priority")).expect("read");
    let adapter = std::fs::read(component("adapters", "openai")).expect("read");
    let gw = std::sync::Arc::new(gw);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (gw, done) = (gw.clone(), done.clone());
        clients.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            let mut i = 0;
            while !done.load(Ordering::Relaxed) {
                i += 1;
                let stream = i % 2 == 0;
                let resp = gw.chat(json!({"model": "g", "stream": stream, "messages": [{"role": "user", "content": "x"}]})).await;
                let status = resp.status().as_u16();
                let body = resp.text().await.unwrap_or_default();
                let complete = if stream { body.contains("reply ") && body.ends_with("data: [DONE]\n\n") } else { body.contains("reply from") };
                statuses.push((status, complete));
            }
            statuses
        }));
    }
    let reloads = |what: &str| logs().matches(what).count();
    let (adapter_loaded, strategy_loaded) = (
        "adapter `openai` reloaded",
        "strategy `weighted-sort` reloaded",
    );
    for n in 0..8u8 {
        let s = if n % 2 == 0 {
            variant(&other, n)
        } else {
            variant(&strategy, n)
        };
        let before = (reloads(adapter_loaded), reloads(strategy_loaded));
        gw.write_atomic(&gw.components("strategies").join("weighted-sort.wasm"), &s);
        gw.write_atomic(
            &gw.components("adapters").join("openai.wasm"),
            &variant(&adapter, n),
        );
        // Each swap is waited for (compiling a changed component takes longer on a busy
        // machine), so that every one of them happens while requests keep flowing.
        let swapped = gw
            .eventually(Duration::from_secs(60), || async {
                reloads(adapter_loaded) > before.0 && reloads(strategy_loaded) > before.1
            })
            .await;
        assert!(swapped, "swap {n} was loaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done.store(true, Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        for (status, ok) in c.await.expect("client task") {
            assert_eq!(status, 200);
            assert!(ok, "every answer is complete");
            total += 1;
        }
    }
    assert!(
        total >= 40,
        "load kept flowing during the swaps ({total} requests)"
    );
    assert!(
        reloads(adapter_loaded) >= 8,
        "the adapter really was swapped"
    );
    assert!(reloads(strategy_loaded) >= 8);
    assert_eq!(mock.total_calls(), total);
}

#[tokio::test]
async fn failing_strategies_fall_back_to_priority_order() {
    for bad in ["panic", "spin", "bad-index"] {
        let (gw, _mock) = setup(bad, &[bad]).await;
        let before = gw.app.counters.strategy_failures.load(Ordering::Relaxed);
        assert_eq!(channel_for(&gw).await, "up/a", "{bad}: priority order");
        assert_eq!(
            channel_for(&gw).await,
            "up/a",
            "{bad}: and again (a trapped instance is never reused)"
        );
        assert_eq!(
            gw.app.counters.strategy_failures.load(Ordering::Relaxed),
            before + 2,
            "{bad}: counted"
        );
        assert!(
            logs().contains(&format!("component `{bad}`")),
            "{bad}: logged"
        );
    }
    assert!(logs().contains("out of range"));
}

#[tokio::test]
async fn the_readme_strategy_example_builds_and_routes() {
    // The guide's code is the fixture's code, so the guide cannot rot.
    let readme =
        std::fs::read_to_string(smart_router_tests::root().join("README.md")).expect("readme");
    let fixture = std::fs::read_to_string(
        smart_router_tests::root().join("tests/guests/strategy-my-pick/src/lib.rs"),
    )
    .expect("fixture");
    let body = fixture.split_once("\n\n").expect("header").1;
    let indented: String = body
        .lines()
        .map(|l| {
            if l.is_empty() {
                "\n".to_string()
            } else {
                format!("   {l}\n")
            }
        })
        .collect();
    assert!(
        readme.contains(&indented),
        "README's example and tests/guests/strategy-my-pick differ"
    );

    let mock = MockUpstream::start().await;
    let providers = format!(
        "providers:\n  up:\n    adapter: openai\n    base_url: {}\n    channels:\n      - {{ model: pricey, priority: 1, input_cost_per_1k: 0.01 }}\n      - {{ model: cheap, priority: 2, input_cost_per_1k: 0.001 }}\n",
        mock.base_url()
    );
    let gw = Gateway::builder()
        .providers(&providers)
        .groups("model_groups:\n  g:\n    strategy: my-pick\n    strategy_params: {max_latency_ms: 800}\n")
        .strategies(&["my-pick"])
        .start()
        .await;
    assert_eq!(channel_for(&gw).await, "up/cheap");
}
