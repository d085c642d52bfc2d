//! The in-process hot paths, with the built-in components (`cargo xtask build` first):
//!
//! - the host's reading of a request body (JSON checked, the facts routing needs);
//! - a strategy's `rank` call with 8 and 64 candidates (warm instance, as the gateway calls it);
//! - an adapter's request and response translation for a typical chat request (OpenAI and
//!   Anthropic formats), a long conversation's request (about 31 KB, as `bench/run.py` sends),
//!   and stream translation per chunk;
//! - loading a component: compiling it, and from the compiled-component cache;
//! - a hot swap: loading a changed file and making its first call.
//!
//! `cargo bench -p smart-router --bench hot_paths`; `SMART_ROUTER_BENCH_COMPONENTS=DIR` measures
//! the components in DIR instead (another build's, for a side-by-side run).

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use smart_router::components::adapter_api::exports::smart_router::gateway::translation::{
    RequestContext, SseEvent,
};
use smart_router::components::strategy_api::smart_router::gateway::types::{
    Candidate, Endpoint, Health, RequestInfo,
};
use smart_router::components::{Kind, Loaded, Runtime, load_bytes};
use smart_router::router::{Endpoint as RouterEndpoint, request_facts};

fn component(kind: &str, name: &str) -> Vec<u8> {
    let dir = std::env::var_os("SMART_ROUTER_BENCH_COMPONENTS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/components"),
        PathBuf::from,
    );
    let path = dir.join(kind).join(format!("{name}.wasm"));
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run `cargo xtask build` first)", path.display()))
}

fn runtime(cache: Option<&std::path::Path>) -> Arc<Runtime> {
    Runtime::new(Duration::from_millis(100), 64 << 20, cache).expect("runtime")
}

fn request() -> RequestInfo {
    RequestInfo {
        model: "auto:cheap".into(),
        estimated_prompt_tokens: 420,
        max_output_tokens: Some(256),
        is_stream: false,
        needs_tools: false,
        needs_vision: false,
        needs_json: false,
        now_ms: 1_790_000_000_000,
        random: 0x9e37_79b9_7f4a_7c15,
        sequence: 7,
        endpoint: Endpoint::Chat,
    }
}

fn candidates(n: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| Candidate {
            id: format!("provider-{}/model-{i}", i % 5),
            provider: format!("provider-{}", i % 5),
            model: format!("model-{i}"),
            priority: 1 + (i % 3) as u32,
            weight: 1.0 + (i % 4) as f64 * 0.5,
            input_cost_per_1k: 0.0005 * (i % 7) as f64,
            output_cost_per_1k: 0.0015 * (i % 7) as f64,
            effective_cost: 0.001 * (i % 7) as f64,
            context_length: Some(32_768 << (i % 3)),
            latency_ms: (i % 6 != 0).then_some(200.0 + 37.0 * i as f64),
            ttft_ms: (i % 6 != 0).then_some(80.0 + 11.0 * i as f64),
            tokens_per_second: (i % 6 != 0).then_some(40.0 + i as f64),
            success_rate: 1.0 - (i % 10) as f64 * 0.02,
            in_flight: (i % 4) as u32,
            consecutive_failures: (i % 9 == 0) as u32,
            quota_remaining: (i % 2 == 0).then_some(0.75),
            quota_remaining_requests: (i % 2 == 0).then_some(750),
            health: if i % 9 == 0 {
                Health::Degraded
            } else {
                Health::Healthy
            },
        })
        .collect()
}

const PARAMS: &str = r#"{"routing_strategy":[{"field":"effective_cost","order":"asc","weight":1.0},{"field":"speed_score","order":"desc","weight":0.9},{"field":"quota_remaining","order":"desc","weight":0.7}]}"#;

const CHAT: &str = r#"{"model":"auto:cheap","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Write a haiku about WebAssembly components routing LLM requests."}],"max_tokens":256,"temperature":0.7}"#;

const OPENAI_RESPONSE: &str = r#"{"id":"chatcmpl-abc123","object":"chat.completion","created":1790000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Components take the call,\nstrategies rank the many,\nthe cheapest answers."},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":31,"completion_tokens":19,"total_tokens":50,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}}"#;

const ANTHROPIC_RESPONSE: &str = r#"{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","model":"claude-3-5-haiku-20241022","content":[{"type":"text","text":"Components take the call,\nstrategies rank the many,\nthe cheapest answers."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":31,"output_tokens":19,"cache_creation_input_tokens":0,"cache_read_input_tokens":0}}"#;

const OPENAI_CHUNK: &str = r#"{"id":"chatcmpl-abc123","object":"chat.completion.chunk","created":1790000000,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":" routing"},"logprobs":null,"finish_reason":null}]}"#;

const ANTHROPIC_CHUNK: &str =
    r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" routing"}}"#;

/// A conversation of about 31 KB: a system prompt and 40 turns (the body `bench/run.py` sends).
fn long_conversation() -> String {
    let mut messages = vec![serde_json::json!({
        "role": "system",
        "content": "You are a helpful assistant. ".repeat(40),
    })];
    for i in 0..40 {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        let text =
            "Here is some context about the WebAssembly component model and routing; ".repeat(10);
        messages.push(serde_json::json!({ "role": role, "content": format!("{text}{i}") }));
    }
    serde_json::json!({ "model": "auto:bench", "stream": false, "messages": messages }).to_string()
}

fn ctx(stream: bool) -> RequestContext {
    RequestContext {
        model: "gpt-4o-mini".into(),
        is_stream: stream,
        include_usage: false,
        options: "{}".into(),
    }
}

fn strategies(c: &mut Criterion) {
    let rt = runtime(None);
    let mut group = c.benchmark_group("strategy_rank");
    for name in ["weighted-sort", "priority", "lowest-cost"] {
        let Ok(Loaded::Strategy(s)) =
            load_bytes(&rt, Kind::Strategy, name, &component("strategies", name))
        else {
            panic!("{name} loads");
        };
        for n in [8, 64] {
            let cands = candidates(n);
            let req = request();
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    let r = s.rank(&rt, &req, black_box(&cands), PARAMS).expect("ranks");
                    black_box(r.order.len())
                })
            });
        }
    }
    group.finish();
}

fn adapters(c: &mut Criterion) {
    let rt = runtime(None);
    let mut group = c.benchmark_group("adapter");
    for (name, response, chunk) in [
        ("openai", OPENAI_RESPONSE, OPENAI_CHUNK),
        ("anthropic", ANTHROPIC_RESPONSE, ANTHROPIC_CHUNK),
    ] {
        let Ok(Loaded::Adapter(a)) =
            load_bytes(&rt, Kind::Adapter, name, &component("adapters", name))
        else {
            panic!("{name} loads");
        };
        let plain = ctx(false);
        group.bench_function(BenchmarkId::new("translate_request", name), |b| {
            b.iter(|| {
                let mut s = a.session(&rt).expect("session");
                let r = s.translate_request(&plain, black_box(CHAT)).expect("call");
                black_box(r.expect("translated").body.len())
            })
        });
        let long = long_conversation();
        group.bench_function(BenchmarkId::new("translate_request_31k", name), |b| {
            b.iter(|| {
                let mut s = a.session(&rt).expect("session");
                let r = s.translate_request(&plain, black_box(&long)).expect("call");
                black_box(r.expect("translated").body.len())
            })
        });
        group.bench_function(BenchmarkId::new("translate_response", name), |b| {
            b.iter(|| {
                let mut s = a.session(&rt).expect("session");
                let r = s
                    .translate_response(&plain, 200, black_box(response.as_bytes()))
                    .expect("call");
                black_box(r.expect("translated").body.len())
            })
        });
        // One session per stream, as the gateway does; the cost per chunk is what is measured.
        let streaming = ctx(true);
        let mut session = a.session(&rt).expect("session");
        session.start_stream(&streaming).expect("stream");
        if name == "anthropic" {
            let start = SseEvent {
                event: "message_start".into(),
                data: r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-3-5-haiku-20241022","content":[],"stop_reason":null,"usage":{"input_tokens":31,"output_tokens":1}}}"#.into(),
            };
            let _ = session.push(&start).expect("call");
            let block = SseEvent {
                event: "content_block_start".into(),
                data: r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#.into(),
            };
            let _ = session.push(&block).expect("call");
        }
        let event = SseEvent {
            event: if name == "anthropic" {
                "content_block_delta".into()
            } else {
                String::new()
            },
            data: chunk.into(),
        };
        group.bench_function(BenchmarkId::new("stream_chunk", name), |b| {
            b.iter(|| {
                let out = session.push(black_box(&event)).expect("call");
                black_box(out.expect("translated").chunks.len())
            })
        });
    }
    group.finish();
}

fn loading(c: &mut Criterion) {
    let bytes = component("adapters", "anthropic");
    let mut group = c.benchmark_group("component_load");
    group.sample_size(10);
    let rt = runtime(None);
    group.bench_function("compile/anthropic", |b| {
        b.iter(|| load_bytes(&rt, Kind::Adapter, "anthropic", black_box(&bytes)).is_ok())
    });
    let dir = std::env::temp_dir().join(format!("smart-router-bench-cache-{}", std::process::id()));
    let cached = runtime(Some(&dir));
    assert!(load_bytes(&cached, Kind::Adapter, "anthropic", &bytes).is_ok());
    group.bench_function("cached/anthropic", |b| {
        b.iter(|| load_bytes(&cached, Kind::Adapter, "anthropic", black_box(&bytes)).is_ok())
    });
    // A hot swap as the watcher does it: load the new file (here from the cache, as an unchanged
    // rebuild would be) and make the first call into it.
    let strategy = component("strategies", "weighted-sort");
    assert!(load_bytes(&cached, Kind::Strategy, "weighted-sort", &strategy).is_ok());
    let cands = candidates(8);
    let req = request();
    group.bench_function("hot_swap/weighted-sort", |b| {
        b.iter(|| {
            let Ok(Loaded::Strategy(s)) =
                load_bytes(&cached, Kind::Strategy, "weighted-sort", &strategy)
            else {
                panic!("loads");
            };
            black_box(
                s.rank(&cached, &req, &cands, PARAMS)
                    .expect("ranks")
                    .order
                    .len(),
            )
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The host's own reading of a request body: JSON checked, model and needs read off it.
fn request_reading(c: &mut Criterion) {
    let mut group = c.benchmark_group("request_facts");
    let long = long_conversation();
    for (name, body) in [("typical", CHAT), ("31k", long.as_str())] {
        group.bench_function(name, |b| {
            b.iter(|| request_facts(black_box(body), RouterEndpoint::Chat).expect("facts"))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = request_reading, strategies, adapters, loading
}
criterion_main!(benches);
