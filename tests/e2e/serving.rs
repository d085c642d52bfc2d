//! Thread per core: connections are spread over the serving threads, each thread answers
//! through its own upstream connections, and closed connections are counted out.

use std::time::Duration;

use serde_json::json;
use smart_router_tests::{Gateway, MockUpstream};

/// `smart_router_connections` per serving thread, from `/metrics`.
async fn connections(gw: &Gateway) -> Vec<u64> {
    gw.get_text("/metrics")
        .await
        .lines()
        .filter(|l| l.starts_with("smart_router_connections{thread="))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .expect("a count")
        })
        .collect()
}

/// A gateway whose one channel `up/m` is `mock`'s model `m`.
fn one_channel(mock: &MockUpstream) -> String {
    format!(
        "providers:\n  up:\n    adapter: openai\n    base_url: {}\n    channels: [{{model: m}}]\n",
        mock.base_url()
    )
}

/// A chat request to model `m` on `client`'s own connection; requires a 200.
async fn ask(gw: &Gateway, client: &reqwest::Client, content: &str) -> serde_json::Value {
    let resp = client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(smart_router_tests::gateway::KEY)
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": content}]}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200, "{content}");
    resp.json().await.expect("json")
}

#[tokio::test]
async fn connections_spread_evenly_over_the_serving_threads_and_every_thread_answers() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::builder()
        .providers(&one_channel(&mock))
        .workers(3)
        .start()
        .await;

    // Nine clients, one keep-alive connection each, all left open.
    let mut clients = Vec::new();
    for i in 0..9 {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()
            .expect("client");
        let body = ask(&gw, &client, &format!("client {i}")).await;
        assert!(
            body["choices"][0]["message"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty()),
            "client {i}: {body}"
        );
        clients.push(client);
    }
    assert_eq!(mock.total_calls(), 9, "every request reached the upstream");

    // Plus the connection asking for the metrics: ten in all, spread 4/3/3.
    let open = connections(&gw).await;
    assert_eq!(open.len(), 3, "one gauge per serving thread: {open:?}");
    assert_eq!(open.iter().sum::<u64>(), 10, "{open:?}");
    let (min, max) = (
        open.iter().min().expect("three gauges"),
        open.iter().max().expect("three gauges"),
    );
    assert!(
        max - min <= 1,
        "connections go to the least busy thread: {open:?}"
    );

    // A second round on the same connections: each is still served by its thread.
    for (i, client) in clients.iter().enumerate() {
        ask(&gw, client, &format!("client {i} again")).await;
    }
    assert_eq!(mock.total_calls(), 18);

    // Closed connections are counted out.
    drop(clients);
    let counted_out = gw
        .eventually(Duration::from_secs(10), || async {
            connections(&gw).await.iter().sum::<u64>() == 1
        })
        .await;
    assert!(
        counted_out,
        "closed connections still counted: {:?}",
        connections(&gw).await
    );
}

#[tokio::test]
async fn a_client_leaving_a_silent_stream_is_recorded_at_once_and_shutdown_completes() {
    let mock = MockUpstream::start().await;
    mock.set("m", smart_router_tests::Behaviour::StallAfter(2));
    let mut gw = Gateway::builder()
        .providers(&one_channel(&mock))
        .system("components_dir: components\nupstream:\n  first_byte_timeout_secs: 5\n  timeout_secs: 600\n")
        .start()
        .await;
    let resp = silent_stream(&gw).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The upstream is now silent for good; the client leaves.
    drop(resp);
    let recorded = client_closed_recorded(&gw).await;
    assert!(
        recorded,
        "the stream's usage row is written when the client leaves, not when the upstream next speaks"
    );
    // The provider never reported usage (that comes in its last chunk), but it billed what it
    // sent: the row has the prompt estimate and a token per chunk, not zero.
    let row = &gw
        .rows("SELECT prompt_tokens, completion_tokens FROM usage WHERE outcome = 'client_closed'")
        .await[0];
    use sqlx::Row;
    assert!(row.get::<i64, _>("prompt_tokens") > 0);
    assert!(
        (2..=4).contains(&row.get::<i64, _>("completion_tokens")),
        "{} completion tokens",
        row.get::<i64, _>("completion_tokens")
    );
    // Nothing left to hold the drain: shutdown completes.
    tokio::time::timeout(Duration::from_secs(10), gw.stop())
        .await
        .expect("shutdown completes");
}

#[tokio::test]
async fn a_client_leaving_before_its_stream_begins_still_leaves_a_row() {
    let mock = MockUpstream::start().await;
    mock.set(
        "m",
        smart_router_tests::Behaviour::Slow(Duration::from_millis(800)),
    );
    let gw = Gateway::builder()
        .providers(&one_channel(&mock))
        .start()
        .await;
    let stream =
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    gw.chat_abandoned(stream, Duration::from_millis(200)).await;
    // The request goes on without its client: the provider's stream starts at 800 ms, finds no
    // one to send to, and the attempt is recorded as the client's leaving.
    let recorded = client_closed_recorded(&gw).await;
    assert!(recorded);
    assert_eq!(mock.calls("m").len(), 1);
}

/// Whether a `client_closed` usage row appears within 5 s.
async fn client_closed_recorded(gw: &Gateway) -> bool {
    gw.eventually(Duration::from_secs(5), || async {
        !gw.rows("SELECT 1 FROM usage WHERE outcome = 'client_closed'")
            .await
            .is_empty()
    })
    .await
}

/// A streamed request to `m`, whose upstream stalls after two chunks, read up to all the upstream
/// sent ("reply from "): the gateway is left waiting on a silent upstream.
async fn silent_stream(gw: &Gateway) -> reqwest::Response {
    let mut resp = gw
        .chat(
            json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let mut seen = String::new();
    while !seen.contains("from") {
        let chunk = resp.chunk().await.expect("read").expect("more chunks");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    resp
}

/// A gateway on `mock`'s model `m` whose shutdown gives in-flight work `grace_secs`; the upstream
/// waits are long enough that only the cutoff can end them.
async fn with_grace(mock: &MockUpstream, grace_secs: u64) -> Gateway {
    Gateway::builder()
        .providers(&one_channel(mock))
        .system(&format!(
            "components_dir: components\nserver:\n  shutdown_grace_secs: {grace_secs}\nupstream:\n  first_byte_timeout_secs: 600\n  timeout_secs: 600\n"
        ))
        .start()
        .await
}

/// Sends a non-streaming request to `m` in the background; resolves once the upstream has it.
async fn in_flight(
    gw: &Gateway,
    mock: &MockUpstream,
) -> tokio::task::JoinHandle<(u16, Option<String>, serde_json::Value)> {
    let (client, url) = (gw.client.clone(), gw.url("/v1/chat/completions"));
    let request = tokio::spawn(async move {
        let resp = client
            .post(url)
            .bearer_auth(smart_router_tests::gateway::KEY)
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .expect("send");
        let status = resp.status().as_u16();
        let retry_after = smart_router_tests::header(&resp, "retry-after");
        (status, retry_after, resp.json().await.expect("a JSON body"))
    });
    let arrived = gw
        .eventually(Duration::from_secs(10), || async {
            !mock.calls("m").is_empty()
        })
        .await;
    assert!(arrived, "the upstream received the request");
    request
}

#[tokio::test]
async fn a_shutdown_lets_a_request_finish_within_its_grace_period() {
    use sqlx::Row;
    let mock = MockUpstream::start().await;
    mock.set(
        "m",
        smart_router_tests::Behaviour::Slow(Duration::from_millis(1500)),
    );
    let mut gw = with_grace(&mock, 30).await;
    let request = in_flight(&gw, &mock).await;
    gw.stop().await;
    let (status, _, body) = request.await.expect("task");
    assert_eq!(status, 200, "{body}");
    let rows = gw.rows("SELECT outcome FROM usage").await;
    assert_eq!(rows.len(), 1, "one row");
    assert_eq!(rows[0].get::<String, _>("outcome"), "success");
}

#[tokio::test]
async fn a_shutdown_cuts_off_a_request_still_waiting_when_its_grace_period_ends() {
    use sqlx::Row;
    let mock = MockUpstream::start().await;
    mock.set("m", smart_router_tests::Behaviour::Hang);
    let mut gw = with_grace(&mock, 1).await;
    let request = in_flight(&gw, &mock).await;
    // The upstream never answers and its timeouts are ten minutes: only the cutoff ends this.
    tokio::time::timeout(Duration::from_secs(30), gw.stop())
        .await
        .expect("shutdown completes once the grace period is over");
    let (status, retry_after, body) = request.await.expect("task");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "gateway_shutting_down", "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    let rows = gw
        .rows("SELECT outcome, error_class, channel_id, status FROM usage")
        .await;
    assert_eq!(rows.len(), 1, "the cut-off attempt has its row");
    assert_eq!(rows[0].get::<String, _>("outcome"), "error");
    assert_eq!(rows[0].get::<String, _>("error_class"), "shutdown");
    assert_eq!(rows[0].get::<String, _>("channel_id"), "up/m");
    // A shutdown is not the channel's fault: it is not counted as an upstream failure.
    let failures = &gw.app.counters.upstream_failures;
    assert_eq!(failures.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_shutdown_cuts_off_a_silent_stream_telling_the_client_and_recording_it() {
    use sqlx::Row;
    let mock = MockUpstream::start().await;
    mock.set("m", smart_router_tests::Behaviour::StallAfter(2));
    let mut gw = with_grace(&mock, 1).await;
    let mut resp = silent_stream(&gw).await;
    // The client keeps reading; the upstream is silent for good.
    let rest = tokio::spawn(async move {
        let mut rest = String::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            rest.push_str(&String::from_utf8_lossy(&chunk));
        }
        rest
    });
    tokio::time::timeout(Duration::from_secs(30), gw.stop())
        .await
        .expect("shutdown completes once the grace period is over");
    let rest = tokio::time::timeout(Duration::from_secs(10), rest)
        .await
        .expect("the stream ends")
        .expect("task");
    assert!(rest.contains("gateway_shutting_down"), "{rest}");
    let rows = gw
        .rows("SELECT outcome, error_class, is_stream, ttft_ms FROM usage")
        .await;
    assert_eq!(rows.len(), 1, "the stream has its row");
    assert_eq!(rows[0].get::<String, _>("outcome"), "error");
    assert_eq!(rows[0].get::<String, _>("error_class"), "shutdown");
    assert_eq!(rows[0].get::<i64, _>("is_stream"), 1);
    assert!(rows[0].get::<Option<i64>, _>("ttft_ms").is_some());
}

/// `smart_router_component_instances_total` of the `openai` adapter, from `/metrics`.
async fn openai_instances(gw: &Gateway) -> u64 {
    gw.get_text("/metrics")
        .await
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "smart_router_component_instances_total{kind=\"adapter\",component=\"openai\"} ",
            )
        })
        .and_then(|n| n.parse().ok())
        .expect("the openai adapter's instance count")
}

/// A stream holds an adapter instance until it ends, so as many are in use as streams run. Once
/// 40 concurrent streams have ended, their instances wait idle, and the next 40 streams create
/// none (with room for only 16 idle ones, the second wave created 24 more).
#[tokio::test]
async fn concurrent_streams_reuse_the_instances_of_the_streams_before_them() {
    let mock = MockUpstream::start().await;
    mock.set("m", smart_router_tests::Behaviour::StallAfter(2));
    let gw = Gateway::builder()
        .providers(&one_channel(&mock))
        .start()
        .await;
    let mut created = vec![openai_instances(&gw).await];
    for wave in 1..=2 {
        // 40 streams open at once, each holding its instance while its upstream stalls.
        let streams = futures_util::future::join_all((0..40).map(|_| silent_stream(&gw))).await;
        drop(streams);
        // Each stream ends when it notices its client left, and leaves a row.
        let ended = gw
            .eventually(Duration::from_secs(10), || async {
                gw.rows("SELECT 1 FROM usage WHERE outcome = 'client_closed'")
                    .await
                    .len()
                    == 40 * wave
            })
            .await;
        assert!(ended, "wave {wave}: 40 client_closed rows");
        created.push(openai_instances(&gw).await);
    }
    assert!(created[1] - created[0] >= 40, "{created:?}");
    assert_eq!(created[2], created[1], "{created:?}");
}

/// A provider that goes silent mid-stream is cut off at its whole-request timeout: the client
/// gets an error event after the chunks it had, and the row says why.
#[tokio::test]
async fn a_stream_silent_past_the_providers_timeout_ends_with_an_error_event() {
    let mock = MockUpstream::start().await;
    mock.set("m", smart_router_tests::Behaviour::StallAfter(2));
    let gw = Gateway::builder()
        .providers(&one_channel(&mock))
        .system("components_dir: components\nupstream:\n  first_byte_timeout_secs: 5\n  timeout_secs: 2\n")
        .start()
        .await;
    let mut resp = silent_stream(&gw).await;
    let mut rest = String::new();
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(chunk) = resp.chunk().await.expect("read") {
            rest.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream did not end: {rest}");
    assert!(
        rest.contains("\"stream_broken\"") && rest.contains("did not answer in time"),
        "{rest}"
    );
    assert!(!rest.contains("[DONE]"), "{rest}");
    gw.flush().await;
    let rows = gw.rows("SELECT error_class FROM usage").await;
    use sqlx::Row;
    let classes: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(classes, ["stream_broken"]);
    // The adapter asked for an event stream, and that alone (no default `*/*` beside it).
    let calls = mock.calls("m");
    let accept: Vec<_> = calls[0].headers.get_all("accept").iter().collect();
    assert_eq!(accept, ["text/event-stream"]);
}

/// Requests one after another go over one upstream connection, whatever their kind: plain
/// answers, streams (whose reader stops at the last event, before the body's end), and a
/// provider's error. A connection not given back makes the next request open another.
#[tokio::test]
async fn requests_one_after_another_reuse_one_upstream_connection() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::builder()
        .providers(&one_channel(&mock))
        .workers(1)
        .start()
        .await;
    let client = reqwest::Client::new();
    for i in 0..3 {
        ask(&gw, &client, &format!("plain {i}")).await;
        let text = client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(smart_router_tests::gateway::KEY)
            .json(&json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .expect("send")
            .text()
            .await
            .expect("the whole stream");
        assert!(text.contains("[DONE]"), "{text}");
        // A stream's reader stops at its last event: its connection goes back once hyper has
        // read the body's end, just after the answer. The next request is not raced against it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        mock.set(
            "m",
            smart_router_tests::Behaviour::Fail {
                status: 400,
                body: json!({"error": {"message": "bad", "type": "invalid_request_error"}}),
                headers: Vec::new(),
            },
        );
        let refused = gw
            .chat(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
            .await;
        assert_eq!(refused.status(), 400);
        mock.set("m", smart_router_tests::Behaviour::Ok);
    }
    let peers: std::collections::HashSet<_> = mock
        .state
        .received
        .lock()
        .expect("lock")
        .iter()
        .map(|r| r.peer)
        .collect();
    assert_eq!(mock.total_calls(), 9);
    assert_eq!(peers.len(), 1, "{peers:?}");
}

/// CPU time the serving threads (`serve-N`) of this process have run, from the kernel's
/// per-thread accounting (nanoseconds, unlike the 10 ms ticks of `/proc/…/stat`).
fn serving_cpu() -> Duration {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let dir = task.expect("a task").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with("serve-") {
            let stat = std::fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
            total += stat
                .split(' ')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(total)
}

/// The CPU the serving thread burns in the 20 ms after each of five requests, and in a third of a
/// second of quiet after them.
async fn cpu_after_requests(idle_spin_us: u64) -> (Duration, Duration) {
    let mock = MockUpstream::start().await;
    let gw = Gateway::builder()
        .providers(&one_channel(&mock))
        .system(&format!(
            "components_dir: components\nserver: {{idle_spin_us: {idle_spin_us}}}\n"
        ))
        .workers(1)
        .start()
        .await;
    let client = reqwest::Client::new();
    ask(&gw, &client, "warm up").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut after = Duration::ZERO;
    for i in 0..5 {
        ask(&gw, &client, &format!("request {i}")).await;
        let from = serving_cpu();
        tokio::time::sleep(Duration::from_millis(20)).await;
        after += serving_cpu() - from;
    }
    let from = serving_cpu();
    tokio::time::sleep(Duration::from_millis(330)).await;
    (after, serving_cpu() - from)
}

#[tokio::test]
async fn a_serving_thread_polls_for_its_window_after_a_request_then_sleeps() {
    // 10 ms windows: five of them burn tens of milliseconds of CPU, where the thread would
    // otherwise sleep.
    let (after, quiet) = cpu_after_requests(10_000).await;
    assert!(
        after >= Duration::from_millis(10),
        "the thread slept through its spin windows: {after:?} of CPU in 5 × 20 ms"
    );
    assert!(
        quiet <= Duration::from_millis(5),
        "the thread kept spinning after its window: {quiet:?} of CPU in 330 ms of quiet"
    );
}

#[tokio::test]
async fn with_idle_spin_off_a_serving_thread_sleeps_between_requests() {
    let (after, quiet) = cpu_after_requests(0).await;
    assert!(
        after <= Duration::from_millis(5),
        "{after:?} of CPU in 5 × 20 ms after requests, with spinning off"
    );
    assert!(
        quiet <= Duration::from_millis(5),
        "{quiet:?} of CPU when idle"
    );
}
