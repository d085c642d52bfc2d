//! Chaos: sustained concurrent load while 30 % of the channels fail in every way an upstream can
//! (error statuses, 429 with `Retry-After`, hangs, a slow first byte, a reset mid-body, a
//! truncated body or stream, invalid JSON, an error inside a 200 stream) and the strategy file is
//! swapped for a panicking one and back. Every request that has a healthy channel must succeed;
//! a stream that breaks after output began must end with an OpenAI-format error event; latency
//! stays within the configured timeouts; every answer has its usage record.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use smart_router_tests::{Behaviour, Gateway, MockUpstream, component};
use sqlx::Row;

const CLIENTS: usize = 6;
const LOAD: Duration = Duration::from_secs(6);
const FIRST_BYTE_TIMEOUT_SECS: u64 = 1;
const MAX_ATTEMPTS: u64 = 4;

/// The faulty channels; each is placed after two healthy ones, so no four in a row are faulty.
fn faults() -> Vec<(&'static str, Behaviour)> {
    let fail = |status: u16, headers: Vec<(String, String)>| Behaviour::Fail {
        status,
        body: json!({"error": {"message": format!("injected {status}"), "type": "server_error"}}),
        headers,
    };
    vec![
        ("f-500", fail(500, vec![])),
        ("f-429", fail(429, vec![("retry-after".into(), "1".into())])),
        ("f-hang", Behaviour::Hang),
        ("f-slow", Behaviour::Slow(Duration::from_secs(3))),
        ("f-reset", Behaviour::ResetAfter(1)),
        ("f-truncate", Behaviour::TruncateAfter(1)),
        (
            "f-badjson",
            Behaviour::Raw {
                status: 200,
                content_type: "application/json",
                body: "{\"choices\": [oops".into(),
            },
        ),
        ("f-streamerr", Behaviour::StreamErrorAfter(1)),
    ]
}

/// Faults that strike after a stream's output began: the client can only get an error event.
const MID_STREAM: [&str; 3] = ["f-reset", "f-truncate", "f-streamerr"];

#[derive(Default)]
struct Tally {
    sent: usize,
    ok: usize,
    /// Streams that ended with an error event, by the channel that broke.
    error_events: BTreeMap<String, usize>,
    /// Anything else: (status, channel, body).
    bad: Vec<(u16, String, String)>,
    latencies_ms: Vec<u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_load_with_thirty_percent_faulty_channels() {
    let mock = MockUpstream::start().await;
    // Named by position (`c02-f-500`), so list order and name order agree: strategies that
    // order by id (round-robin) meet the same interleaving.
    let mut names = Vec::new();
    let faults = faults();
    for (name, behaviour) in &faults {
        names.push(format!("c{:02}-ok", names.len()));
        names.push(format!("c{:02}-ok", names.len()));
        let faulty = format!("c{:02}-{name}", names.len());
        mock.set(&faulty, behaviour.clone());
        names.push(faulty);
    }
    for _ in 0..3 {
        names.push(format!("c{:02}-ok", names.len()));
    }
    let faulty = faults.len();
    assert_eq!(
        faulty * 100 / names.len(),
        29,
        "8 of 27 channels are faulty"
    );
    // One provider (account) per channel, so a 429 parks only its own channel.
    let mut providers = String::from("providers:\n");
    let mut members = String::new();
    for n in &names {
        providers.push_str(&format!(
            "  p-{n}:\n    adapter: openai\n    base_url: {}\n    channels: [{{ model: {n} }}]\n",
            mock.base_url()
        ));
        members.push_str(&format!("      - {{ channel: p-{n}/{n} }}\n"));
    }
    let gw = Arc::new(
        Gateway::builder()
            .providers(&providers)
            .groups(&format!(
                "model_groups:\n  g:\n    strategy: round-robin\n    channels:\n{members}"
            ))
            .system(&format!(
                "routing: {{ max_attempts: {MAX_ATTEMPTS} }}\nupstream: {{ first_byte_timeout_secs: {FIRST_BYTE_TIMEOUT_SECS} }}\n"
            ))
            .strategies(&["round-robin"])
            .start()
            .await,
    );

    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop_at = Instant::now() + LOAD;
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let gw = gw.clone();
        let tally = tally.clone();
        clients.push(tokio::spawn(async move {
            let mut n = 0usize;
            while Instant::now() < stop_at {
                n += 1;
                let stream = (n + c).is_multiple_of(3);
                let started = Instant::now();
                let resp = gw
                    .chat(json!({"model": "g", "stream": stream,
                        "messages": [{"role": "user", "content": format!("client {c} request {n}")}]}))
                    .await;
                let status = resp.status().as_u16();
                let channel = smart_router_tests::gateway::channel_of(&resp);
                let body = resp.text().await.unwrap_or_default();
                let ms = started.elapsed().as_millis() as u64;
                let model = channel.rsplit('/').next().unwrap_or("").to_string();
                let mut t = tally.lock().expect("tally");
                t.sent += 1;
                t.latencies_ms.push(ms);
                match judge(stream, status, &body, &model) {
                    Verdict::Ok => t.ok += 1,
                    Verdict::ErrorEvent => *t.error_events.entry(model).or_default() += 1,
                    Verdict::Bad => t.bad.push((status, channel, body.chars().take(300).collect())),
                }
            }
        }));
    }
    // Meanwhile the strategy is swapped for one that panics, and back, every 400 ms.
    let swapper = {
        let gw = gw.clone();
        tokio::spawn(async move {
            let good = std::fs::read(component("strategies", "round-robin")).expect("read");
            let bad = std::fs::read(component("strategies", "panic")).expect("read");
            let path = gw.components("strategies").join("round-robin.wasm");
            let mut swaps = 0;
            while Instant::now() < stop_at {
                tokio::time::sleep(Duration::from_millis(400)).await;
                swaps += 1;
                gw.write_atomic(&path, if swaps % 2 == 1 { &bad } else { &good });
            }
            swaps
        })
    };
    for c in clients {
        c.await.expect("client");
    }
    let swaps = swapper.await.expect("swapper");

    let t = std::mem::take(&mut *tally.lock().expect("tally"));
    let mut lat = t.latencies_ms.clone();
    lat.sort_unstable();
    let pct = |p: usize| lat[(lat.len() * p / 100).min(lat.len() - 1)];
    let rows = gw
        .rows("SELECT outcome, COALESCE(error_class, '') AS class, COUNT(*) AS n FROM usage GROUP BY outcome, error_class ORDER BY n DESC")
        .await;
    let attempts: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{} {}: {}",
                r.get::<String, _>("outcome"),
                r.get::<String, _>("class"),
                r.get::<i64, _>("n")
            )
        })
        .collect();
    let successes: i64 = rows
        .iter()
        .filter(|r| r.get::<String, _>("outcome") == "success")
        .map(|r| r.get::<i64, _>("n"))
        .sum();
    eprintln!(
        "chaos: {} requests from {CLIENTS} clients in {LOAD:?} with {faulty}/{} channels faulty and {swaps} strategy swaps: {} succeeded, {} streams ended with an error event {:?}, {} bad; latency p50 {} ms, p99 {} ms, max {} ms; usage rows by outcome and class: {}",
        t.sent,
        names.len(),
        t.ok,
        t.error_events.values().sum::<usize>(),
        t.error_events,
        t.bad.len(),
        pct(50),
        pct(99),
        lat[lat.len() - 1],
        attempts.join(", ")
    );
    assert!(t.sent >= 100, "sustained load: {} requests", t.sent);
    assert!(
        t.bad.is_empty(),
        "requests that neither succeeded nor ended with an error event: {:#?}",
        t.bad
    );
    for channel in t.error_events.keys() {
        assert!(
            MID_STREAM.iter().any(|f| channel.ends_with(f)),
            "only a break after output began may cost a request: {channel}"
        );
    }
    let bound_ms = MAX_ATTEMPTS * FIRST_BYTE_TIMEOUT_SECS * 1000 + 1000;
    assert!(
        lat[lat.len() - 1] <= bound_ms,
        "latency is bounded by the timeouts: max {} ms > {bound_ms} ms",
        lat[lat.len() - 1]
    );
    // Every answer the clients received has its usage row, and no more.
    assert_eq!(
        successes as usize, t.ok,
        "one success row per answered request"
    );
}

enum Verdict {
    Ok,
    ErrorEvent,
    Bad,
}

/// A complete answer from the channel named in the header, a stream that ended with an
/// OpenAI-format error event, or something else (a failure of the gateway).
fn judge(stream: bool, status: u16, body: &str, model: &str) -> Verdict {
    let expected = format!("reply from {model}");
    if status != 200 {
        return Verdict::Bad;
    }
    if !stream {
        let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        return if v["choices"][0]["message"]["content"] == expected.as_str() {
            Verdict::Ok
        } else {
            Verdict::Bad
        };
    }
    let data: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    let Some(last) = data.last() else {
        return Verdict::Bad;
    };
    if *last == "[DONE]" {
        let text: String = data
            .iter()
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        return if text.trim_end() == expected {
            Verdict::Ok
        } else {
            Verdict::Bad
        };
    }
    let v: Value = serde_json::from_str(last).unwrap_or(Value::Null);
    if v["error"]["message"].is_string() && v["error"]["type"].is_string() {
        Verdict::ErrorEvent
    } else {
        Verdict::Bad
    }
}
