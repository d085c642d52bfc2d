//! Test support: a scriptable mock upstream and a gateway harness, both on port 0.

pub mod gateway;
pub mod mock;

pub use gateway::{Gateway, GatewayBuilder, logs};
pub use mock::{Behaviour, MockUpstream};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A mock upstream and a gateway with one `openai` provider, `up`, in front of it: `channels` is
/// the provider's channel list (YAML lines indented under it); `rest` sets up the rest of the
/// gateway (its groups, say).
pub async fn behind_one_provider(
    channels: &str,
    rest: impl FnOnce(GatewayBuilder) -> GatewayBuilder,
) -> (Gateway, MockUpstream) {
    let mock = MockUpstream::start().await;
    let providers = format!(
        "providers:\n  up:\n    adapter: openai\n    base_url: {}\n    channels:\n{channels}",
        mock.base_url()
    );
    let gw = rest(Gateway::builder().providers(&providers)).start().await;
    (gw, mock)
}

/// A response header as text, when present.
pub fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().expect("ascii").to_string())
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The workspace's target folder.
pub fn target_dir() -> PathBuf {
    root().join("target")
}

/// A built component: `kind` is `strategies` or `adapters`. Built-ins come from
/// `config/components`, test fixtures from `target/test-components` (both made by `cargo xtask build`).
pub fn component(kind: &str, name: &str) -> PathBuf {
    let builtin = root()
        .join("config/components")
        .join(kind)
        .join(format!("{name}.wasm"));
    if builtin.exists() {
        return builtin;
    }
    let fixture = root()
        .join("target/test-components")
        .join(kind)
        .join(format!("{name}.wasm"));
    assert!(
        fixture.exists(),
        "component {} is not built: run `cargo xtask build`",
        fixture.display()
    );
    fixture
}

/// The release binary `cargo xtask build` makes.
pub fn binary() -> PathBuf {
    let b = root().join("target/release/smart-router");
    assert!(
        b.exists(),
        "{} is not built: run `cargo xtask build`",
        b.display()
    );
    b
}

/// Starts `smart-router serve` on `config` (a relative path is taken from the repository root)
/// and `db`, on a free port, with `master_key` or none; returns the process and the address it
/// listens on.
pub fn serve_binary(config: &Path, db: &str, master_key: Option<&str>) -> (Child, String) {
    serve_binary_with(config, db, master_key, &[])
}

/// `serve_binary` with `env` added to the process's environment.
pub fn serve_binary_with(
    config: &Path,
    db: &str,
    master_key: Option<&str>,
    env: &[(&str, &str)],
) -> (Child, String) {
    let mut command = Command::new(binary());
    command.envs(env.iter().copied());
    command
        .current_dir(root())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database",
            db,
            "--config",
        ])
        .arg(config)
        .env("NO_COLOR", "1")
        .env(
            "SMART_ROUTER_COMPONENT_CACHE",
            target_dir().join("component-cache"),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    match master_key {
        Some(key) => command.env("SMART_ROUTER_MASTER_KEY", key),
        None => command.env_remove("SMART_ROUTER_MASTER_KEY"),
    };
    let mut child = command.spawn().expect("serve");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        if line.contains("smart-router listening")
            && let Some(addr) = line.split("addr=").nth(1)
        {
            let addr = addr
                .trim()
                .trim_matches(|c: char| !c.is_ascii_digit() && c != '.' && c != ':');
            return (child, addr.to_string());
        }
        seen.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("no listening line in {seen:?}");
}
