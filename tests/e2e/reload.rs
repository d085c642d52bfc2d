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
