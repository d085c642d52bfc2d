//! Gateway keys managed over the admin API: created, used, listed without their secrets, refused
//! to anyone but the master key, revoked with effect from the next request.

use serde_json::{Value, json};
use smart_router_tests::gateway::KEY;
use smart_router_tests::{Behaviour, Gateway, behind_one_provider, header};

/// `POST /v1/chat/completions` with `key`.
async fn chat_as(gw: &Gateway, key: &str, body: &Value) -> reqwest::Response {
    gw.client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("send")
}

/// A gateway whose one channel, `m1`, is the built-in mock.
async fn one_mock_channel() -> Gateway {
    Gateway::builder()
        .providers("providers:\n  mock:\n    adapter: openai\n    base_url: mock://\n    channels: [{model: m1}]\n")
        .start()
        .await
}

/// `POST /admin/keys` with the master key: the status and the answer.
async fn create_key(gw: &Gateway, body: Value) -> (reqwest::StatusCode, Value) {
    let resp = gw
        .client
        .post(gw.url("/admin/keys"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .expect("send");
    (resp.status(), resp.json().await.expect("json"))
}

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
    let gw = one_mock_channel().await;
    let (_, created) = create_key(&gw, json!({"name": "paced", "rpm_limit": 60})).await;
    assert_eq!(created["rpm_limit"], 60, "{created}");
    let key = created["key"].as_str().expect("key").to_string();
    let hi = json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}]});
    let send = |key: String| {
        let (gw, hi) = (&gw, &hi);
        async move { chat_as(gw, &key, hi).await }
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

#[tokio::test]
async fn a_key_over_its_tokens_per_minute_waits_for_what_it_used() {
    let gw = one_mock_channel().await;
    let (status, refused) = create_key(&gw, json!({"name": "t", "tpm_limit": 0})).await;
    assert_eq!(status, 400);
    assert_eq!(refused["error"]["param"], "tpm_limit", "{refused}");
    let (_, created) = create_key(&gw, json!({"name": "metered", "tpm_limit": 6000})).await;
    assert_eq!(created["tpm_limit"], 6000, "{created}");
    let key = created["key"].as_str().expect("key").to_string();
    // About 500 prompt tokens a request (the mock counts a quarter of the messages' bytes) and,
    // with no `max_tokens`, 256 for each of the ten answers, held at once; a thousand in the
    // answers (a token per word said back, in ten choices), settled after.
    let long = "x ".repeat(1000);
    let send = |model: &'static str| {
        let body =
            json!({"model": model, "n": 10, "messages": [{"role": "user", "content": long}]});
        let (gw, key) = (&gw, &key);
        async move { chat_as(gw, key, &body).await }
    };
    let remaining = |resp: &reqwest::Response| -> u32 {
        header(resp, "x-ratelimit-remaining-tokens")
            .expect("remaining tokens")
            .parse()
            .expect("number")
    };

    // A request that reaches no upstream gives back the tokens it held.
    let missing = send("no-such-model").await;
    assert_eq!(missing.status(), 404);
    let held = 6000 - remaining(&missing);
    assert!((2960..=3160).contains(&held), "held {held}");
    let first = send("m1").await;
    assert_eq!(first.status(), 200);
    assert_eq!(
        header(&first, "x-ratelimit-limit-tokens").as_deref(),
        Some("6000")
    );
    assert!(remaining(&first) >= 6000 - held, "{}", remaining(&first));
    assert_eq!(header(&first, "x-ratelimit-limit-requests"), None);

    // Served while tokens are left (the bucket refills 100 a second meanwhile), then refused.
    let started = std::time::Instant::now();
    let mut served = 1;
    let refused = loop {
        let resp = send("m1").await;
        if resp.status() == 429 {
            break resp;
        }
        assert_eq!(resp.status(), 200);
        served += 1;
        if served == 2 {
            // The first request's whole answer was settled, not just its estimate: its prompt and
            // a thousand, then the second's hold.
            let expected = 6000 - (held - 2560 + 1000) - held;
            assert!(
                remaining(&resp) <= expected + 50,
                "{} remaining, at most {expected} expected",
                remaining(&resp)
            );
        }
        assert!(served <= 40, "never refused");
    };
    let refills = started.elapsed().as_secs() as i64 + 1;
    assert!(
        (4..=4 + refills / 15).contains(&served),
        "{served} served in {:?}",
        started.elapsed()
    );
    assert_eq!(
        header(&refused, "x-ratelimit-remaining-tokens").as_deref(),
        Some("0")
    );
    let wait: u64 = header(&refused, "retry-after")
        .expect("retry-after")
        .parse()
        .expect("seconds");
    assert!((1..=7).contains(&wait), "Retry-After {wait}");
    let request_id = header(&refused, "x-request-id").expect("request id");
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("6000 tokens per minute"), "{message}");

    // What was let through is what the provider reported, give or take the refill.
    use sqlx::Row;
    let rows = gw
        .rows(&format!(
            "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS used, COUNT(*) AS n FROM usage WHERE key_id = '{}' AND outcome = 'success'",
            created["id"].as_str().expect("id")
        ))
        .await;
    let (used, n) = (rows[0].get::<i64, _>("used"), rows[0].get::<i64, _>("n"));
    assert_eq!(n, served);
    assert!(
        used >= 6000 && used <= 6000 + 600 + 100 * refills,
        "{used} tokens in {n} requests"
    );
    let rows = gw
        .rows(&format!(
            "SELECT error_class FROM usage WHERE request_id = '{request_id}'"
        ))
        .await;
    assert_eq!(rows.len(), 1);

    // Once Retry-After has passed, the key is served again.
    tokio::time::sleep(std::time::Duration::from_millis(wait * 1000 + 100)).await;
    assert_eq!(send("m1").await.status(), 200);
}

#[tokio::test]
async fn a_burst_of_concurrent_requests_holds_each_ones_max_tokens_at_admission() {
    // The upstream takes two seconds, so every request of the burst is admitted or refused
    // before any answer settles what it really used.
    let (gw, mock) = behind_one_provider("      - { model: m }\n", |b| b).await;
    mock.set("m", Behaviour::Slow(std::time::Duration::from_secs(2)));
    // A few prompt tokens and up to 2,500 answer tokens each: three are let in while tokens are
    // left (the third into 1,500 of debt, 15 s of refill), not the ten that their prompts alone
    // would let through. Two answers (`n: 2`) of 1,250 tokens hold as much as one of 2,500:
    // a second key's burst of those, at the same time, fares the same.
    let one =
        json!({"model": "m", "max_tokens": 2500, "messages": [{"role": "user", "content": "hi"}]});
    let two = json!({"model": "m", "n": 2, "max_tokens": 1250, "messages": [{"role": "user", "content": "hi"}]});
    let burst = |name: &'static str, body: Value| {
        let gw = &gw;
        async move {
            let (_, created) = create_key(gw, json!({"name": name, "tpm_limit": 6000})).await;
            let key = created["key"].as_str().expect("key").to_string();
            let sends = (0..10).map(|_| chat_as(gw, &key, &body));
            let mut statuses: Vec<u16> = futures_util::future::join_all(sends)
                .await
                .iter()
                .map(|r| r.status().as_u16())
                .collect();
            statuses.sort_unstable();
            statuses
        }
    };
    let (single, double) = tokio::join!(burst("one", one), burst("two", two));
    for statuses in [single, double] {
        assert_eq!(statuses, [200, 200, 200, 429, 429, 429, 429, 429, 429, 429]);
    }
    assert_eq!(mock.calls("m").len(), 6);
}

#[tokio::test]
async fn asking_for_more_than_the_limit_does_not_refill_the_key() {
    let gw = one_mock_channel().await;
    let (_, created) = create_key(&gw, json!({"name": "greedy", "tpm_limit": 6000})).await;
    let key = created["key"].as_str().expect("key").to_string();
    // About 1,500 tokens used a request, each asking for a million: every hold is cut to what
    // the bucket has and a minute of debt, and settles from that, so the key runs dry as with
    // honest requests instead of being handed back the million it never had.
    let body = json!({"model": "m1", "n": 10, "max_tokens": 1_000_000,
        "messages": [{"role": "user", "content": "x ".repeat(1000)}]});
    let started = std::time::Instant::now();
    let mut served = 0;
    loop {
        let resp = chat_as(&gw, &key, &body).await;
        if resp.status() == 429 {
            break;
        }
        assert_eq!(resp.status(), 200);
        served += 1;
        assert!(served <= 12, "never refused");
    }
    let refills = started.elapsed().as_secs() as i64 + 1;
    assert!(
        (4..=5 + refills / 15).contains(&served),
        "{served} served in {:?}",
        started.elapsed()
    );
}
