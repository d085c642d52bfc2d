//! Components that misbehave can't hurt the host: each costs its request a fallback (or a clear
//! error), is logged and counted, and one that keeps failing is quarantined until its file changes.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use smart_router_tests::gateway::one_provider;
use smart_router_tests::{Gateway, MockUpstream, component, logs};

/// A group of two channels: first the `evil` adapter misbehaving as `mode` (with a key it must
/// never leak), then a healthy `openai` one.
async fn evil_then_good(mock: &MockUpstream, mode: &str) -> Gateway {
    let providers = format!(
        "providers:\n  evil:\n    adapter: evil\n    base_url: {0}\n    api_key: sk-evil-secret-0000\n    channels: [{{model: {mode}, priority: 1}}]\n  good:\n    adapter: openai\n    base_url: {0}\n    channels: [{{model: fine, priority: 2}}]\n",
        mock.base_url()
    );
    Gateway::builder()
        .providers(&providers)
        .groups("model_groups:\n  g: {strategy: priority}\n")
        .adapters(&["openai", "evil"])
        .start()
        .await
}

async fn route(gw: &Gateway, model: &str) -> (u16, String) {
    gw.status_and_channel(json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        .await
}

#[tokio::test]
async fn strategies_that_exhaust_memory_or_stack_fall_back_and_are_quarantined() {
    for bad in ["hog", "deep"] {
        let mock = MockUpstream::start().await;
        let gw = Gateway::builder()
            .providers(&one_provider(&mock.base_url(), &["a", "b"]))
            .groups(&format!("model_groups:\n  g: {{strategy: {bad}}}\n"))
            .strategies(&[bad])
            .start()
            .await;
        let failures = || gw.app.counters.strategy_failures.load(Ordering::Relaxed);
        for _ in 0..8 {
            assert_eq!(
                route(&gw, "g").await,
                (200, "up/a".to_string()),
                "{bad}: priority order"
            );
        }
        assert_eq!(
            failures(),
            5,
            "{bad}: after five failures the strategy is not called again"
        );
        assert!(logs().contains(&format!(
            "component `{bad}` failed 5 times in a row: quarantined until its file changes"
        )));

        // A new file lifts the quarantine (and here fails again, as it should).
        let bytes = std::fs::read(component("strategies", bad)).expect("read");
        let mut changed = bytes.clone();
        changed.extend_from_slice(&[0, 4, 3, b'v', b'e', b'r']);
        gw.write_atomic(
            &gw.components("strategies").join(format!("{bad}.wasm")),
            &changed,
        );
        let retried = gw
            .eventually(Duration::from_secs(5), || async {
                let _ = route(&gw, "g").await;
                failures() > 5
            })
            .await;
        assert!(retried, "{bad}: a changed file is tried again");
    }
}

/// A guest that leaks memory on every call is retired once past half its memory cap, before it
/// traps: 40 calls, each leaking 4 MiB under a 64 MiB cap, and not one fails.
#[tokio::test]
async fn a_leaking_strategy_is_replaced_before_it_hits_its_memory_cap() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::builder()
        .providers(&one_provider(&mock.base_url(), &["a", "b"]))
        .groups("model_groups:\n  g: {strategy: leak}\n")
        .strategies(&["leak"])
        .start()
        .await;
    for _ in 0..40 {
        assert_eq!(route(&gw, "g").await, (200, "up/b".to_string()));
    }
    assert_eq!(gw.app.counters.strategy_failures.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn hostile_adapters_cost_a_failover_and_never_leak_or_redirect() {
    let modes = [
        "override-host",
        "override-auth",
        "absolute-url",
        "protocol-relative",
        "bad-method",
        "trap-request",
        "trap-response",
        "huge-response",
        "garbage-json",
    ];
    for mode in modes {
        let mock = MockUpstream::start().await;
        let gw = evil_then_good(&mock, mode).await;
        let (status, channel) = route(&gw, "g").await;
        assert_eq!(
            (status, channel.as_str()),
            (200, "good/fine"),
            "{mode}: failover to the good channel"
        );
        assert_eq!(
            gw.app.counters.adapter_failures.load(Ordering::Relaxed),
            1,
            "{mode}: counted"
        );
        for call in mock.state.received.lock().expect("lock").iter() {
            assert_ne!(
                call.headers.get("host").and_then(|h| h.to_str().ok()),
                Some("evil.example"),
                "{mode}"
            );
            assert_ne!(
                call.headers
                    .get("authorization")
                    .and_then(|h| h.to_str().ok()),
                Some("Bearer stolen"),
                "{mode}"
            );
        }
        // Alone, the hostile channel gives a clear gateway error, not a hang or a crash.
        let (status, _) = route(&gw, mode).await;
        assert_eq!(status, 502, "{mode}");
        assert_eq!(
            route(&gw, "fine").await.0,
            200,
            "{mode}: the gateway keeps serving"
        );
    }
    assert!(logs().contains("is set by the host"));
    assert!(logs().contains("plain path"));
    assert!(logs().contains("not a JSON object"));
}

#[tokio::test]
async fn a_quarantined_adapter_takes_its_channels_out_until_its_file_changes() {
    let mock = MockUpstream::start().await;
    let gw = evil_then_good(&mock, "trap-request").await;
    for _ in 0..8 {
        assert_eq!(route(&gw, "g").await.0, 200);
    }
    assert_eq!(gw.app.counters.adapter_failures.load(Ordering::Relaxed), 5);
    assert!(logs().contains("component `evil` failed 5 times in a row"));
    assert_eq!(
        route(&gw, "trap-request").await.0,
        503,
        "its channels are out of rotation"
    );

    let mut bytes = std::fs::read(component("adapters", "evil")).expect("read");
    bytes.extend_from_slice(&[0, 4, 3, b'n', b'e', b'w']);
    gw.write_atomic(&gw.components("adapters").join("evil.wasm"), &bytes);
    let back = gw
        .eventually(Duration::from_secs(5), || async {
            route(&gw, "trap-request").await.0 == 502
        })
        .await;
    assert!(back, "the new file is tried again");
}
