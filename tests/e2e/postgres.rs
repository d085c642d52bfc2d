//! The same gateway on Postgres (the shared store for several instances).

use serde_json::json;
use smart_router_tests::gateway::one_provider;
use smart_router_tests::{Behaviour, Gateway, MockUpstream};
use sqlx::Row;

/// The admin URL of the Postgres this machine runs (override with SMART_ROUTER_TEST_POSTGRES).
fn admin_url() -> String {
    std::env::var("SMART_ROUTER_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

#[tokio::test]
async fn usage_and_keys_work_on_postgres() {
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(&admin_url())
        .await
        .expect("Postgres is reachable (see .ci/run)");
    let name = format!("sr_test_{:x}", fastrand::u64(..));
    sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("create database");
    let url = format!("{}/{name}", admin_url().rsplit_once('/').expect("url").0);

    let mock = MockUpstream::start().await;
    mock.set(
        "a",
        Behaviour::Fail {
            status: 503,
            body: json!({"error": {"message": "busy"}}),
            headers: vec![],
        },
    );
    let gw = Gateway::builder()
        .providers(&one_provider(&mock.base_url(), &["a", "b"]))
        .groups("model_groups:\n  g: {strategy: priority}\n")
        .database(&url)
        .start()
        .await;
    for stream in [false, true] {
        let resp = gw.chat(json!({"model": "g", "stream": stream, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "hi"}]})).await;
        assert_eq!(resp.status(), 200);
        let _ = resp.text().await;
    }
    let rows = gw.rows("SELECT channel_id, outcome, error_class, prompt_tokens, is_stream, ttft_ms FROM usage ORDER BY id").await;
    let got: Vec<(String, String, Option<String>, i64)> = rows
        .iter()
        .map(|r| {
            (
                r.get("channel_id"),
                r.get("outcome"),
                r.get("error_class"),
                r.get("prompt_tokens"),
            )
        })
        .collect();
    assert_eq!(
        got[0],
        (
            "up/a".into(),
            "error".into(),
            Some("server_error".into()),
            0
        )
    );
    assert_eq!(got[1], ("up/b".into(), "success".into(), None, 11));
    assert_eq!(got.len(), 4, "a's failure and b's success, twice");
    assert!(rows[3].get::<Option<i64>, _>("ttft_ms").is_some());

    gw.app
        .store
        .create_key(
            "key_pg",
            "pg",
            "abc123",
            Some("g"),
            smart_router::store::KeyLimits {
                rpm: Some(30),
                tpm: Some(45_000),
                ..Default::default()
            },
        )
        .await
        .expect("create key");
    let key = gw
        .app
        .store
        .find_key("abc123")
        .await
        .expect("find")
        .expect("found");
    assert_eq!(key.allowed_models, Some(vec!["g".to_string()]));
    assert_eq!((key.rpm_limit, key.tpm_limit), (Some(30), Some(45_000)));
    let listed = gw.app.store.list_keys().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].key.id.as_str(), listed[0].revoked),
        ("key_pg", false)
    );
    assert!(gw.app.store.revoke_key("key_pg").await.expect("revoke"));
    assert!(!gw.app.store.revoke_key("key_none").await.expect("revoke"));
    assert!(
        gw.app
            .store
            .find_key("abc123")
            .await
            .expect("find")
            .is_none()
    );
    assert!(gw.app.store.list_keys().await.expect("list")[0].revoked);

    drop(gw);
    sqlx::raw_sql(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&admin)
        .await
        .expect("drop database");
}
