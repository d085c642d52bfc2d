//! Gateway keys managed over the admin API: created, used, listed without their secrets, refused
//! to anyone but the master key, revoked with effect from the next request.

use serde_json::{Value, json};
use smart_router_tests::Gateway;
use smart_router_tests::gateway::KEY;

#[tokio::test]
async fn keys_are_created_listed_and_revoked_over_the_admin_api() {
    let gw = Gateway::builder()
        .providers("providers:\n  mock:\n    adapter: openai\n    base_url: mock://\n    channels: [{model: m1}, {model: m2}]\n")
        .start()
        .await;
    let call = |method: reqwest::Method, path: &str, key: &str, body: Option<Value>| {
        let mut req = gw.client.request(method, gw.url(path)).bearer_auth(key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let resp = req.send().await.expect("send");
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.expect("json"))
        }
    };
    let chat = |key: String, model: &'static str| {
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        let req = gw
            .client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&body);
        async move { req.send().await.expect("send").status().as_u16() }
    };
    let (post, get, delete) = (
        reqwest::Method::POST,
        reqwest::Method::GET,
        reqwest::Method::DELETE,
    );

    let (status, created) = call(
        post.clone(),
        "/admin/keys",
        KEY,
        Some(json!({"name": "team-a", "models": ["m1"], "daily_budget": 5})),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let key = created["key"].as_str().expect("key").to_string();
    let id = created["id"].as_str().expect("id").to_string();
    assert!(
        key.starts_with("sk-sr-") && id.starts_with("key_"),
        "{created}"
    );
    assert_eq!(created["models"], json!(["m1"]));
    assert_eq!(created["daily_budget"], 5.0);
    assert_eq!(created["monthly_budget"], Value::Null);
    assert_eq!(created["revoked"], false);

    // The new key works at once, within what it was given.
    assert_eq!(chat(key.clone(), "m1").await, 200);
    assert_eq!(chat(key.clone(), "m2").await, 403);

    // Listed, without the key or anything derived from it.
    let (status, listed) = call(get.clone(), "/admin/keys", KEY, None).await;
    assert_eq!(status, 200);
    let entry = listed["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|k| k["id"] == id.as_str())
        .expect("listed")
        .clone();
    assert_eq!(entry["name"], "team-a");
    assert_eq!(entry["revoked"], false);
    let text = listed.to_string();
    let hash = smart_router::app::hex(&<sha2::Sha256 as sha2::Digest>::digest(key.as_bytes()));
    assert!(!text.contains(&key) && !text.contains(&hash), "{text}");

    // Only the master key manages keys.
    for (method, path, body) in [
        (get.clone(), "/admin/keys".to_string(), None),
        (
            post.clone(),
            "/admin/keys".to_string(),
            Some(json!({"name": "sneaky"})),
        ),
        (delete.clone(), format!("/admin/keys/{id}"), None),
    ] {
        let (status, body) = call(method, &path, &key, body).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(body["error"]["code"], "admin_required");
    }

    // Bad requests say what is wrong.
    for (body, needle) in [
        (json!({}), "name"),
        (json!({"name": " "}), "name"),
        (json!({"name": "x", "daily_budgets": 1}), "daily_budgets"),
        (json!({"name": "x", "daily_budget": -1}), "daily_budget"),
        (json!({"name": "x", "models": []}), "models"),
        (json!({"name": "x", "rpm_limit": 0}), "rpm_limit"),
        (json!({"name": "x", "rpm_limit": -5}), "rpm_limit"),
    ] {
        let (status, answer) = call(post.clone(), "/admin/keys", KEY, Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["type"], "invalid_request_error");
        let message = answer["error"]["message"].as_str().expect("message");
        assert!(message.contains(needle), "{body}: {message}");
    }

    // Revoked: refused from the very next request, and shown as revoked.
    let (status, gone) = call(delete.clone(), &format!("/admin/keys/{id}"), KEY, None).await;
    assert_eq!(status, 200, "{gone}");
    assert_eq!(gone["deleted"], true);
    assert_eq!(chat(key.clone(), "m1").await, 401);
    let (_, listed) = call(get, "/admin/keys", KEY, None).await;
    assert!(
        listed["data"]
            .as_array()
            .expect("data")
            .iter()
            .any(|k| k["id"] == id.as_str() && k["revoked"] == true),
        "{listed}"
    );
    let (status, missing) = call(delete, "/admin/keys/key_nonexistent", KEY, None).await;
    assert_eq!(status, 404);
    assert_eq!(missing["error"]["code"], "key_not_found");
}

/// A key's requests per minute: spent in a burst, then refused with OpenAI's 429, its
/// `Retry-After` and `x-ratelimit-*` headers and a usage row, until the bucket refills.
#[tokio::test]
async fn a_key_over_its_requests_per_minute_gets_openai_rate_limit_answers() {
    let gw = Gateway::builder()
        .providers("providers:\n  mock:\n    adapter: openai\n    base_url: mock://\n    channels: [{model: m1}]\n")
        .start()
        .await;
    let created: Value = gw
        .client
        .post(gw.url("/admin/keys"))
        .bearer_auth(KEY)
        .json(&json!({"name": "paced", "rpm_limit": 60}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(created["rpm_limit"], 60, "{created}");
    let key = created["key"].as_str().expect("key").to_string();
    let send = |key: String| {
        let body = json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}]});
        let req = gw
            .client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&body);
        async move { req.send().await.expect("send") }
    };
    let header = |resp: &reqwest::Response, name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().expect("ascii").to_string())
    };

    // The whole minute in a burst; the bucket refills by one a second meanwhile.
    let started = std::time::Instant::now();
    let mut served = 0;
    let refused = loop {
        let resp = send(key.clone()).await;
        if resp.status() == 429 {
            break resp;
        }
        assert_eq!(resp.status(), 200);
        served += 1;
        assert_eq!(
            header(&resp, "x-ratelimit-limit-requests").as_deref(),
            Some("60")
        );
        if served == 1 {
            assert_eq!(
                header(&resp, "x-ratelimit-remaining-requests").as_deref(),
                Some("59")
            );
        }
        assert!(served <= 200, "never refused");
    };
    let refills = started.elapsed().as_secs() + 1;
    assert!(
        (60..=60 + refills).contains(&served),
        "{served} served in {:?}",
        started.elapsed()
    );
    assert_eq!(header(&refused, "retry-after").as_deref(), Some("1"));
    assert_eq!(
        header(&refused, "x-ratelimit-remaining-requests").as_deref(),
        Some("0")
    );
    assert!(header(&refused, "x-ratelimit-reset-requests").is_some());
    let request_id = header(&refused, "x-request-id").expect("request id");
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("60 requests per minute"), "{message}");
    let rows = gw
        .rows(&format!(
            "SELECT key_id, error_class FROM usage WHERE request_id = '{request_id}'"
        ))
        .await;
    use sqlx::Row;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].get::<String, _>("key_id"),
        created["id"].as_str().expect("id")
    );
    assert_eq!(
        rows[0].get::<Option<String>, _>("error_class").as_deref(),
        Some("rate_limit_exceeded")
    );

    // A second later one request is back; the master key was never limited.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    assert_eq!(send(key.clone()).await.status(), 200);
    let master = send(KEY.to_string()).await;
    assert_eq!(master.status(), 200);
    assert_eq!(header(&master, "x-ratelimit-limit-requests"), None);
}
