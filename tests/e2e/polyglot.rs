//! Strategies from other languages and older contracts, routing real requests: Python
//! (componentize-py), JavaScript (componentize-js), hand-written WAT, and a Rust strategy built
//! against the released 0.1.0 contract. The first two import WASI, which the host links with
//! nothing granted; their calls leave the async worker thread, hence the multi-threaded runtime.

use serde_json::json;
use smart_router_tests::{Gateway, MockUpstream, logs};

/// Two providers on one mock, three channels: `a/pricey` (priority 1, dear), `b/cheap`
/// (priority 2, cheap) and `b/middle` (priority 3). Priority order — the host's fallback — would
/// pick `a/pricey`; every strategy here picks something else.
async fn setup(strategy: &str, params: &str) -> (Gateway, MockUpstream) {
    let mock = MockUpstream::start().await;
    let base = mock.base_url();
    let providers = format!(
        "providers:\n  a:\n    adapter: openai\n    base_url: {base}\n    channels:\n      - {{ model: pricey, priority: 1, input_cost_per_1k: 0.01, output_cost_per_1k: 0.01 }}\n  b:\n    adapter: openai\n    base_url: {base}\n    channels:\n      - {{ model: cheap, priority: 2, input_cost_per_1k: 0.0005, output_cost_per_1k: 0.0005 }}\n      - {{ model: middle, priority: 3, input_cost_per_1k: 0.002, output_cost_per_1k: 0.002 }}\n"
    );
    let groups = format!(
        "model_groups:\n  g:\n    strategy: {strategy}\n{params}    channels:\n      - {{ channel: a/pricey }}\n      - {{ channel: b/cheap }}\n      - {{ channel: b/middle }}\n"
    );
    let gw = Gateway::builder()
        .providers(&providers)
        .groups(&groups)
        .strategies(&[strategy])
        .start()
        .await;
    (gw, mock)
}

fn hello() -> serde_json::Value {
    json!({"model": "g", "messages": [{"role": "user", "content": "hello"}]})
}

/// Routes a few requests and returns the channels that served them.
async fn route(gw: &Gateway, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..n {
        seen.push(gw.served_by(hello()).await);
    }
    seen
}

fn strategy_failures(gw: &Gateway) -> u64 {
    gw.app
        .counters
        .strategy_failures
        .load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_strategy_routes_requests() {
    let (gw, _mock) = setup("cheapest-healthy", "").await;
    assert!(
        gw.app.components.load().strategies["cheapest-healthy"].uses_wasi(),
        "componentize-py components import WASI"
    );
    assert_eq!(route(&gw, 5).await, vec!["b/cheap"; 5]);
    assert_eq!(strategy_failures(&gw), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_strategy_reads_its_params_and_reports_errors() {
    // A bad parameter makes the strategy answer `err`: the host logs the reason, counts it, and
    // routes in priority order.
    let (gw, _mock) = setup(
        "cheapest-healthy",
        "    strategy_params: { min_success_rate: \"high\" }\n",
    )
    .await;
    assert_eq!(route(&gw, 2).await, vec!["a/pricey"; 2]);
    assert_eq!(strategy_failures(&gw), 2);
    assert!(logs().contains("min_success_rate must be a number"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_strategy_routes_requests() {
    let (gw, _mock) = setup("prefer-provider", "    strategy_params: { prefer: b }\n").await;
    // Built with `--disable all`, componentize-js leaves out every WASI import.
    assert!(!gw.app.components.load().strategies["prefer-provider"].uses_wasi());
    // Provider b first, by priority within it.
    assert_eq!(route(&gw, 5).await, vec!["b/cheap"; 5]);
    assert_eq!(strategy_failures(&gw), 0);
}

#[tokio::test]
async fn a_hand_written_wat_strategy_routes_requests() {
    let (gw, _mock) = setup("wat-reverse", "").await;
    assert!(!gw.app.components.load().strategies["wat-reverse"].uses_wasi());
    // Reverse candidate order: the last channel listed.
    assert_eq!(route(&gw, 3).await, vec!["b/middle"; 3]);
    assert_eq!(strategy_failures(&gw), 0);
}

#[tokio::test]
async fn a_strategy_built_against_the_previous_contract_keeps_loading() {
    let (gw, _mock) = setup("legacy", "").await;
    // Highest priority number first.
    assert_eq!(route(&gw, 3).await, vec!["b/middle"; 3]);
    assert_eq!(strategy_failures(&gw), 0);
}

/// WASI is linked with nothing granted: a Python strategy sees no environment, can neither read
/// nor list nor write files, cannot open a connection (to a port that is listening), and its
/// `print` goes nowhere without harming the host. The port it tries is a listening mock's, so
/// `net=denied` is the sandbox's doing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_components_are_sandboxed() {
    let mock = MockUpstream::start().await;
    let port = mock.addr.port();
    let (gw, _mock) = setup(
        "snoop",
        &format!("    strategy_params: {{ port: {port} }}\n"),
    )
    .await;
    assert!(gw.app.components.load().strategies["snoop"].uses_wasi());
    // The strategy answers `err` with its findings: the request still routes, in priority order.
    assert_eq!(route(&gw, 1).await, vec!["a/pricey"]);
    assert!(
        logs().contains("sandbox: env=0 file=denied dir=denied write=denied net=denied"),
        "{}",
        logs()
            .lines()
            .filter(|l| l.contains("sandbox"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
