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
