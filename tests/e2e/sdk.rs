//! The official `openai` Python SDK against the gateway (installed by `cargo xtask test`).

use std::process::Command;

use smart_router_tests::gateway::KEY;
use smart_router_tests::{Gateway, root};

#[tokio::test]
async fn the_official_python_sdk_works_against_the_gateway() {
    let python = std::env::var("SMART_ROUTER_TEST_PYTHON")
        .expect("SMART_ROUTER_TEST_PYTHON is not set: run the suite with `cargo xtask test`, which installs the openai SDK");
    // The example configuration, with the built-in mock, as a new user gets it.
    let gw = Gateway::builder()
        .providers(
            &std::fs::read_to_string(root().join("config/providers.yaml")).expect("providers"),
        )
        .groups(&std::fs::read_to_string(root().join("config/model_groups.yaml")).expect("groups"))
        .providers(&format!(
            "{}\n",
            std::fs::read_to_string(root().join("config/providers.yaml"))
                .expect("providers")
                .replace(
                    "      - model: mock-large",
                    "      - model: mock-error-503\n        priority: 9\n      - model: mock-large"
                )
                // The built-in mock in Anthropic's and Gemini's formats, through their adapters.
                + "  mock-claude:\n    adapter: anthropic\n    base_url: mock://\n    channels: [{model: mock-claude}]\n"
                + "  mock-gemini:\n    adapter: gemini\n    base_url: mock://\n    channels: [{model: mock-gemini}]\n"
        ))
        .adapters(&["openai", "anthropic", "gemini"])
        .start()
        .await;
    let script = root().join("tests/sdk/openai_client.py");
    let base = gw.url("/v1");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python).arg(script).arg(base).arg(KEY).output()
    })
    .await
    .expect("join")
    .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python SDK checks failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}
