//! Test support: a scriptable mock upstream and a gateway harness, both on port 0.

pub mod gateway;
pub mod mock;

pub use gateway::{Gateway, GatewayBuilder, logs};
pub use mock::{Behaviour, MockUpstream};

use std::path::PathBuf;

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
