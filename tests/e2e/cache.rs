//! The answer cache: identical requests from one key answered without a provider, streams
//! replayed, `Cache-Control` honoured, failures never kept, lifetimes per group.

use std::time::Duration;

use serde_json::{Value, json};
use smart_router_tests::gateway::KEY;
use smart_router_tests::{Behaviour, Gateway, MockUpstream, behind_one_provider, header};
use sqlx::Row;

async fn setup() -> (Gateway, MockUpstream) {
    behind_one_provider(
        "      - { model: m1, input_cost_per_1k: 1.0, output_cost_per_1k: 1.0 }\n      - { model: broken }\n",
        |b| b.groups("model_groups:\n  cached:\n    cache: { ttl_secs: 600 }\n    channels: [{channel: up/m1}]\n  brief:\n    cache: { ttl_secs: 1 }\n    channels: [{channel: up/m1}]\n  flaky:\n    cache: { ttl_secs: 600 }\n    channels: [{channel: up/broken}]\n"),
    )
    .await
}

/// Sends `body` with `key`, and optionally a `Cache-Control`; status, cache header, body text.
async fn send(
    gw: &Gateway,
    key: &str,
    body: &Value,
    cache_control: Option<&str>,
) -> (u16, Option<String>, String) {
    let mut req = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(body);
    if let Some(cc) = cache_control {
        req = req.header("cache-control", cc);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    let cache = header(&resp, "x-smart-router-cache");
    (status, cache, resp.text().await.expect("body"))
}

#[tokio::test]
async fn identical_requests_from_one_key_are_answered_once() {
    let (gw, mock) = setup().await;
    let body =
        json!({"model": "cached", "messages": [{"role": "user", "content": "What is 2+2?"}]});

    let (status, cache, first) = send(&gw, KEY, &body, None).await;
    assert_eq!((status, cache.as_deref()), (200, Some("miss")), "{first}");
    let resp = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("x-client-request-id", "again-1")
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "x-smart-router-cache").as_deref(),
        Some("hit")
    );
    assert_eq!(
        header(&resp, "x-smart-router-channel").as_deref(),
        Some("up/m1")
    );
    assert_eq!(
        header(&resp, "x-client-request-id").as_deref(),
        Some("again-1")
    );
    let hit_id = header(&resp, "x-request-id").expect("request id");
    assert_eq!(
        header(&resp, "content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(resp.text().await.expect("body"), first);
    assert_eq!(
        mock.calls("m1").len(),
        1,
        "the second answer came from the cache"
    );

    // Another body, even one space apart, is another question.
    let spaced =
        r#"{"model": "cached", "messages": [{"role": "user", "content": "What is 2+2? "}]}"#;
    let resp = gw.chat_raw(spaced).await;
    assert_eq!(
        header(&resp, "x-smart-router-cache").as_deref(),
        Some("miss")
    );
    assert_eq!(mock.calls("m1").len(), 2);

    // Another key does not see this key's answers.
    let created: Value = gw
        .post("/admin/keys", json!({"name": "other"}))
        .await
        .json()
        .await
        .expect("json");
    let other = created["key"].as_str().expect("key").to_string();
    let (status, cache, _) = send(&gw, &other, &body, None).await;
    assert_eq!((status, cache.as_deref()), (200, Some("miss")));
    assert_eq!(mock.calls("m1").len(), 3);
    let (_, cache, _) = send(&gw, &other, &body, None).await;
    assert_eq!(cache.as_deref(), Some("hit"));

    // `no-cache` asks the provider again and keeps the new answer; `no-store` keeps nothing.
    let (_, cache, _) = send(&gw, KEY, &body, Some("no-cache")).await;
    assert_eq!(cache.as_deref(), Some("miss"));
    assert_eq!(mock.calls("m1").len(), 4);
    let (_, cache, _) = send(&gw, KEY, &body, None).await;
    assert_eq!(cache.as_deref(), Some("hit"));
    let fresh = json!({"model": "cached", "messages": [{"role": "user", "content": "Not kept"}]});
    for _ in 0..2 {
        let (status, cache, _) = send(&gw, KEY, &fresh, Some("no-store")).await;
        assert_eq!((status, cache), (200, None));
    }
    assert_eq!(mock.calls("m1").len(), 6);

    // A model without a cache setting is never cached.
    let plain = json!({"model": "m1", "messages": [{"role": "user", "content": "What is 2+2?"}]});
    for _ in 0..2 {
        let (status, cache, _) = send(&gw, KEY, &plain, None).await;
        assert_eq!((status, cache), (200, None));
    }
    assert_eq!(mock.calls("m1").len(), 8);

    // The hit's usage row: the answer's tokens, no channel, no cost.
    gw.flush().await;
    let rows = gw
        .rows(&format!(
            "SELECT outcome, channel_id, group_name, cost_micros, prompt_tokens, completion_tokens, client_request_id FROM usage WHERE request_id = '{hit_id}'"
        ))
        .await;
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r.get::<String, _>("outcome"), "cache_hit");
    assert_eq!(r.get::<Option<String>, _>("channel_id"), None);
    assert_eq!(
        r.get::<Option<String>, _>("group_name").as_deref(),
        Some("cached")
    );
    assert_eq!(r.get::<i64, _>("cost_micros"), 0);
    assert!(r.get::<i64, _>("prompt_tokens") > 0 && r.get::<i64, _>("completion_tokens") > 0);
    assert_eq!(
        r.get::<Option<String>, _>("client_request_id").as_deref(),
        Some("again-1")
    );
    let metrics = gw.get_text("/metrics").await;
    assert!(
        metrics.contains("smart_router_cache_hits_total 3\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("smart_router_cache_misses_total 4\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("smart_router_cache_entries 3\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_stream_is_replayed_and_failures_and_stale_answers_are_not() {
    let (gw, mock) = setup().await;
    let body = json!({"model": "cached", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Stream me"}]});
    let (status, cache, first) = send(&gw, KEY, &body, None).await;
    assert_eq!((status, cache.as_deref()), (200, Some("miss")), "{first}");
    assert!(first.ends_with("data: [DONE]\n\n"), "{first}");
    let resp = gw.chat(body.clone()).await;
    assert_eq!(
        header(&resp, "x-smart-router-cache").as_deref(),
        Some("hit")
    );
    assert_eq!(
        header(&resp, "content-type").as_deref(),
        Some("text/event-stream")
    );
    assert_eq!(resp.text().await.expect("body"), first);
    assert_eq!(mock.calls("m1").len(), 1);
    // The same question without streaming is a separate entry.
    let mut plain = body.clone();
    plain["stream"] = json!(false);
    plain
        .as_object_mut()
        .expect("object")
        .remove("stream_options");
    let (_, cache, _) = send(&gw, KEY, &plain, None).await;
    assert_eq!(cache.as_deref(), Some("miss"));

    // A failure is not kept: the next identical request goes upstream again.
    mock.set(
        "broken",
        Behaviour::Fail {
            status: 500,
            body: json!({"error": {"message": "boom"}}),
            headers: vec![],
        },
    );
    let failing = json!({"model": "flaky", "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, _) = send(&gw, KEY, &failing, None).await;
    assert!(status >= 500, "{status}");
    mock.set("broken", Behaviour::Ok);
    let (status, cache, _) = send(&gw, KEY, &failing, None).await;
    assert_eq!((status, cache.as_deref()), (200, Some("miss")));
    assert_eq!(mock.calls("broken").len(), 2);
    let (_, cache, _) = send(&gw, KEY, &failing, None).await;
    assert_eq!(cache.as_deref(), Some("hit"));

    // A stream broken after output began is not kept either.
    mock.set("broken", Behaviour::StreamErrorAfter(2));
    let streamed = json!({"model": "flaky", "stream": true, "messages": [{"role": "user", "content": "again"}]});
    let (status, _, text) = send(&gw, KEY, &streamed, None).await;
    assert_eq!(status, 200);
    assert!(text.contains("\"error\""), "{text}");
    mock.set("broken", Behaviour::Ok);
    let (_, cache, _) = send(&gw, KEY, &streamed, None).await;
    assert_eq!(cache.as_deref(), Some("miss"));

    // `brief` keeps answers one second.
    let short = json!({"model": "brief", "messages": [{"role": "user", "content": "quick"}]});
    assert_eq!(
        send(&gw, KEY, &short, None).await.1.as_deref(),
        Some("miss")
    );
    assert_eq!(send(&gw, KEY, &short, None).await.1.as_deref(), Some("hit"));
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(
        send(&gw, KEY, &short, None).await.1.as_deref(),
        Some("miss")
    );
}

#[tokio::test]
async fn identical_requests_arriving_together_reach_the_provider_once() {
    let (gw, mock) = behind_one_provider(
        "      - { model: m1 }\n      - { model: broken }\n",
        |b| {
            b.groups("model_groups:\n  cached:\n    cache: { ttl_secs: 600 }\n    channels: [{channel: up/m1}]\n  flaky:\n    cache: { ttl_secs: 600 }\n    channels: [{channel: up/broken}]\n")
                .system("components_dir: components\nupstream:\n  first_byte_timeout_secs: 1\n")
        },
    )
    .await;
    let gw = std::sync::Arc::new(gw);
    let together = |body: Value, n: usize| {
        let sends = (0..n).map(|_| {
            let (gw, body) = (gw.clone(), body.clone());
            tokio::spawn(async move { send(&gw, KEY, &body, None).await })
        });
        futures_util::future::join_all(sends)
    };

    // Eight at once, the provider taking half a second: one goes, seven wait for its answer.
    mock.set("m1", Behaviour::Slow(Duration::from_millis(500)));
    let body =
        json!({"model": "cached", "messages": [{"role": "user", "content": "All at once?"}]});
    let answers: Vec<_> = together(body, 8)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    assert_eq!(mock.calls("m1").len(), 1);
    let mut caches: Vec<_> = answers
        .iter()
        .map(|(s, c, _)| (*s, c.clone().unwrap_or_default()))
        .collect();
    caches.sort();
    let mut expected = vec![(200, "hit".to_string()); 7];
    expected.push((200, "miss".to_string()));
    expected.sort();
    assert_eq!(caches, expected);
    assert!(
        answers.iter().all(|(_, _, text)| *text == answers[0].2),
        "{answers:?}"
    );

    // Streams are not held back: each goes.
    let stream = json!({"model": "cached", "stream": true, "messages": [{"role": "user", "content": "Streams?"}]});
    let streamed = together(stream, 3).await;
    assert!(streamed.into_iter().all(|r| r.expect("task").0 == 200));
    assert_eq!(mock.calls("m1").len(), 4);

    // When the first fails (its provider never answers: a 1 s timeout), the others are let go
    // then, not at the end of their own wait (the 4 attempts the first might have made), and
    // each tries for itself.
    mock.set("broken", Behaviour::Hang);
    let body = json!({"model": "flaky", "messages": [{"role": "user", "content": "Anyone?"}]});
    let waiting = tokio::spawn(together(body, 5));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        mock.calls("broken").len(),
        1,
        "the others wait for the first"
    );
    // Their own wait would end at 4 s: all five calls well before then show they were let go
    // when the first failed.
    let t0 = std::time::Instant::now();
    while mock.calls("broken").len() < 5 && t0.elapsed() < Duration::from_millis(3_000) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mock.calls("broken").len(), 5);
    for answer in waiting.await.expect("task") {
        let (status, _, text) = answer.expect("task");
        assert_eq!(status, 504, "{text}");
        assert!(text.contains("upstream_timeout"), "{text}");
    }
}
