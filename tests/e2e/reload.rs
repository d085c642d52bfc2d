//! Configuration hot reload: a good change applies, a bad one is refused and the old one serves.

use std::time::Duration;

use serde_json::json;
use smart_router_tests::gateway::one_provider;
use smart_router_tests::{Gateway, MockUpstream, logs};

#[tokio::test]
async fn a_new_group_appears_and_a_broken_change_is_refused() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::builder()
        .providers(&one_provider(&mock.base_url(), &["a", "b"]))
        .start()
        .await;
    let ask = |model: &'static str| {
        let gw = &gw;
        async move {
            gw.chat(json!({"model": model, "messages": [{"role": "user", "content": "x"}]}))
                .await
                .status()
                .as_u16()
        }
    };
    assert_eq!(ask("auto:new").await, 404);

    let groups = gw.config.join("model_groups.yaml");
    gw.write_atomic(
        &groups,
        b"model_groups:\n  auto:new:\n    strategy: priority\n    channels: [{channel: up/b}]\n",
    );
    assert!(
        gw.eventually(Duration::from_secs(5), || async {
            ask("auto:new").await == 200
        })
        .await,
        "the new group is served"
    );

    // A typo: refused with the file and the field, and the previous configuration keeps serving.
    gw.write_atomic(
        &groups,
        b"model_groups:\n  auto:new:\n    strategy: priority\n    channels: [{chanel: up/b}]\n",
    );
    let refused = gw
        .eventually(Duration::from_secs(5), || async {
            logs().contains("refused configuration change")
        })
        .await;
    assert!(refused);
    let line = logs()
        .lines()
        .find(|l| l.contains("refused configuration change"))
        .expect("line")
        .to_string();
    assert!(
        line.contains("model_groups.yaml")
            && line.contains("channels[0]")
            && line.contains("chanel"),
        "{line}"
    );
    assert_eq!(ask("auto:new").await, 200);
}

/// Two consistent configurations, A and B, written file by file (so the folder passes through
/// inconsistent states: a group naming a channel whose provider is not there yet) while requests
/// keep coming and the adapter file is swapped. Every request is answered by A's channel or by
/// B's; an inconsistent state is refused and the last good configuration keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reloads_and_swaps_under_load_never_half_apply() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let mock = MockUpstream::start().await;
    let providers = |name: &str, model: &str| {
        format!(
            "providers:\n  {name}:\n    adapter: openai\n    base_url: {}\n    channels: [{{ model: {model} }}]\n",
            mock.base_url()
        )
    };
    let groups = |channel: &str| {
        format!(
            "model_groups:\n  g:\n    strategy: priority\n    channels: [{{ channel: {channel} }}]\n"
        )
    };
    let gw = Arc::new(
        Gateway::builder()
            .providers(&providers("pa", "a1"))
            .groups(&groups("pa/a1"))
            .strategies(&["priority"])
            .start()
            .await,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (gw, stop) = (gw.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                seen.push(
                    gw.status_and_channel(
                        json!({"model": "g", "messages": [{"role": "user", "content": "x"}]}),
                    )
                    .await,
                );
            }
            seen
        }));
    }
    let openai = std::fs::read(smart_router_tests::component("adapters", "openai")).expect("read");
    let adapter = gw.components("adapters").join("openai.wasm");
    for round in 0..12 {
        let (name, model) = if round % 2 == 0 {
            ("pb", "b1")
        } else {
            ("pa", "a1")
        };
        // Groups first on even rounds, providers first on odd ones: both orders pass through a
        // state that does not resolve.
        let files = [
            ("model_groups.yaml", groups(&format!("{name}/{model}"))),
            ("providers.yaml", providers(name, model)),
        ];
        let order: Vec<_> = if round % 2 == 0 {
            files.iter().collect()
        } else {
            files.iter().rev().collect()
        };
        for (file, text) in order {
            gw.write_atomic(&gw.config.join(file), text.as_bytes());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // And the adapter is replaced by an identical copy with a new digest.
        let mut copy = openai.clone();
        copy.extend_from_slice(&[0, 5, 4, b'r', b'o', b'u', b'n', round as u8]);
        gw.write_atomic(&adapter, &copy);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        for (status, channel) in c.await.expect("client") {
            total += 1;
            assert_eq!(status, 200, "served by {channel:?}");
            assert!(
                channel == "pa/a1" || channel == "pb/b1",
                "a channel from one whole configuration, not {channel:?}"
            );
        }
    }
    assert!(total > 100, "requests kept coming: {total}");
    // The last configuration written (round 11: A) is the one in force.
    assert_eq!(
        gw.served_by(json!({"model": "g", "messages": [{"role": "user", "content": "x"}]}))
            .await,
        "pa/a1"
    );
    assert!(
        logs().contains("refused"),
        "the inconsistent states were refused"
    );
}

/// Two gateways watching one components folder (two instances on one host, or the old and the
/// new one during a deploy). Reading a component file to check it is not a change: neither
/// gateway's checks may wake the other's watcher, or the two re-read every component several
/// times a second, for good.
#[tokio::test]
async fn gateways_sharing_a_components_folder_do_not_wake_each_other() {
    let mock = MockUpstream::start().await;
    let a = Gateway::builder()
        .providers(&one_provider(&mock.base_url(), &["m"]))
        .start()
        .await;
    let shared = a.config.join("components");
    let b = Gateway::builder()
        .providers(&one_provider(&mock.base_url(), &["m"]))
        .system(&format!("components_dir: {}\n", shared.display()))
        .start()
        .await;
    // The same bytes written again: both gateways see the file replaced and check it.
    let file = shared.join("strategies/priority.wasm");
    let bytes = std::fs::read(&file).expect("read");
    a.write_atomic(&file, &bytes);
    assert!(
        a.eventually(Duration::from_secs(5), || async {
            reloads(&a).await >= 1 && reloads(&b).await >= 1
        })
        .await,
        "both gateways checked the replaced file"
    );
    // Then quiet: a batch waits at most 0.6 s, so 2 s without a change must see no new one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = (reloads(&a).await, reloads(&b).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = (reloads(&a).await, reloads(&b).await);
    assert_eq!(before, after, "no checks while nothing changes");
    let served = a
        .chat(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(served.status(), 200);
}

/// `smart_router_reloads_total` from the gateway's `/metrics`.
async fn reloads(gw: &Gateway) -> u64 {
    let text = gw.get_text("/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix("smart_router_reloads_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("smart_router_reloads_total")
}
