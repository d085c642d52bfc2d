//! Budgets per group and per key, and the admin statistics API.

use serde_json::{Value, json};
use smart_router_tests::gateway::KEY;
use smart_router_tests::{Behaviour, Gateway, MockUpstream, behind_one_provider};
use sqlx::Row;

/// Each mock answer is 11 + 7 tokens; at $10 per 1k tokens that is $0.18.
async fn setup() -> (Gateway, MockUpstream) {
    behind_one_provider(
        "      - { model: paid, input_cost_per_1k: 10.0, output_cost_per_1k: 10.0 }\n      - { model: free, priority: 2 }\n",
        |b| b.groups("model_groups:\n  paid-only:\n    strategy: priority\n    budget: { daily: 1.0 }\n    channels: [{channel: up/paid}]\n  with-free:\n    strategy: priority\n    budget: { daily: 0.5 }\n    channels: [{channel: up/paid}, {channel: up/free}]\n"),
    )
    .await
}

fn ask(model: &str) -> Value {
    // A prompt long enough that the held estimate covers the mock's 11 prompt tokens.
    json!({"model": model, "max_tokens": 7, "messages": [{"role": "user", "content": "y".repeat(100)}]})
}

#[tokio::test]
async fn a_one_dollar_budget_is_never_overspent_under_concurrency() {
    let (gw, mock) = setup().await;
    let gw = std::sync::Arc::new(gw);
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let gw = gw.clone();
            tokio::spawn(async move {
                let resp = gw.chat(ask("paid-only")).await;
                let status = resp.status().as_u16();
                (status, resp.text().await.unwrap_or_default())
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        let (status, body) = t.await.expect("task");
        match status {
            200 => ok += 1,
            402 => assert!(body.contains("daily budget of group `paid-only`"), "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let spent: i64 = gw
        .rows("SELECT CAST(COALESCE(SUM(cost_micros), 0) AS BIGINT) AS s FROM usage")
        .await[0]
        .get("s");
    assert!(
        spent <= 1_000_000,
        "spent {spent} micro-dollars of a 1 000 000 budget"
    );
    assert_eq!(spent, ok * 180_000);
    assert!(ok >= 2, "the budget was used ({ok} calls)");
    assert_eq!(mock.calls("paid").len() as i64, ok);
}

#[tokio::test]
async fn a_client_leaving_before_its_answer_still_gets_a_usage_row_and_its_hold_settled() {
    let (gw, mock) = setup().await;
    mock.set(
        "paid",
        Behaviour::Slow(std::time::Duration::from_millis(800)),
    );
    // Two clients give up after 200 ms; the provider answers (and bills) at 800 ms.
    for _ in 0..2 {
        let patience = std::time::Duration::from_millis(200);
        gw.chat_abandoned(ask("paid-only"), patience).await;
    }
    let recorded = gw
        .eventually(std::time::Duration::from_secs(5), || async {
            gw.rows("SELECT 1 FROM usage").await.len() == 2
        })
        .await;
    assert!(recorded, "each abandoned request has its row");
    let costs: Vec<i64> = gw
        .rows("SELECT cost_micros FROM usage")
        .await
        .iter()
        .map(|r| r.get("cost_micros"))
        .collect();
    assert_eq!(costs, [180_000, 180_000], "billed as the provider answered");
    assert_eq!(mock.calls("paid").len(), 2);
    // Their holds were settled to what they cost: $0.64 of the $1 is left, enough for the next.
    mock.set("paid", Behaviour::Ok);
    let resp = gw.chat(ask("paid-only")).await;
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
}

#[tokio::test]
async fn zero_cost_channels_are_never_blocked_by_a_budget() {
    let (gw, mock) = setup().await;
    let mut free = 0;
    for _ in 0..10 {
        let resp = gw.chat(ask("with-free")).await;
        assert_eq!(resp.status(), 200);
        if resp.headers()["x-smart-router-channel"] == "up/free" {
            free += 1;
        }
    }
    assert!(
        free >= 7,
        "once $0.50 is spent the free channel serves ({free} of 10)"
    );
    assert!(mock.calls("paid").len() <= 2);
}

#[tokio::test]
async fn a_key_budget_names_the_key() {
    let (gw, _mock) = setup().await;
    let limits = smart_router::budget::Limits {
        daily_micros: Some(200_000),
        monthly_micros: None,
    };
    let hash = smart_router::app::hex(&<sha2::Sha256 as sha2::Digest>::digest(b"sk-budgeted"));
    gw.app
        .store
        .create_key("key_b", "budgeted", &hash, None, limits.into())
        .await
        .expect("key");
    let call = || {
        gw.client.post(gw.url("/v1/chat/completions")).bearer_auth("sk-budgeted").json(&json!({"model": "paid-only", "max_tokens": 7, "messages": [{"role": "user", "content": "x"}]})).send()
    };
    assert_eq!(call().await.expect("send").status(), 200);
    let resp = call().await.expect("send");
    assert_eq!(resp.status(), 402);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "budget_exceeded");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("daily budget of key `key_b`"),
        "{body}"
    );
}

#[tokio::test]
async fn the_stats_api_reports_volume_latency_tokens_and_cost() {
    let (gw, mock) = setup().await;
    mock.set(
        "free",
        Behaviour::Fail {
            status: 500,
            body: json!({"error": {"message": "x"}}),
            headers: vec![],
        },
    );
    for _i in 0..3 {
        let r = gw.chat(ask("paid-only")).await;
        assert_eq!(r.status(), 200, "call {_i}: {:?}", r.text().await);
    }
    let _ = gw
        .chat(json!({"model": "free", "messages": [{"role": "user", "content": "x"}]}))
        .await;
    gw.flush().await;
    let get = |path: &str| gw.client.get(gw.url(path)).bearer_auth(KEY).send();

    let body: Value = get("/admin/stats?window=1h&by=channel")
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let paid = body["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|r| r["channel"] == "up/paid")
        .expect("paid row")
        .clone();
    assert_eq!(paid["requests"], 3);
    assert_eq!(paid["success_rate"], 1.0);
    assert_eq!(paid["prompt_tokens"], 33);
    assert_eq!(paid["cost_micros"], 540_000);
    assert!(paid["latency_ms"]["p50"].is_u64());
    let failed = body["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|r| r["channel"] == "up/free")
        .expect("free row")
        .clone();
    assert_eq!(failed["success_rate"], 0.0);
    assert_eq!(body["total"]["requests"], 4);

    let by_group: Value = get("/admin/stats?window=1h&by=group")
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(by_group["data"][0]["group"], "paid-only");
    let daily: Value = get("/admin/stats/daily?days=7")
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(daily["data"][0]["cost_micros"], 540_000);
    let channels: Value = get("/admin/channels")
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert!(
        channels["data"]
            .as_array()
            .expect("list")
            .iter()
            .any(|c| c["id"] == "up/paid" && c["breaker"]["state"] == "closed")
    );

    let bad = get("/admin/stats?by=colour").await.expect("send");
    assert_eq!(bad.status(), 400);
    // Gateway keys are not admin keys.
    let hash = smart_router::app::hex(&<sha2::Sha256 as sha2::Digest>::digest(b"sk-user"));
    gw.app
        .store
        .create_key("key_u", "user", &hash, None, Default::default())
        .await
        .expect("key");
    let forbidden = gw
        .client
        .get(gw.url("/admin/stats"))
        .bearer_auth("sk-user")
        .send()
        .await
        .expect("send");
    assert_eq!(forbidden.status(), 403);
}
