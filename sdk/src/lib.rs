//! The Rust guest SDK for Smart AI Router.
//!
//! A routing strategy is a type that implements [`Strategy`] plus one `export_strategy!` line;
//! a provider adapter implements [`Adapter`] plus `export_adapter!`. Enable the crate feature of
//! the kind you write (`strategy` or `adapter`) and build for `wasm32-unknown-unknown` as a
//! `cdylib`; see the README's "Write a strategy".

#[cfg(feature = "adapter")]
pub mod adapter;
pub mod blocks;
/// Helpers for adapters that translate OpenAI requests to another provider's format.
#[cfg(feature = "adapter")]
pub mod openai;
pub mod raw;
#[cfg(feature = "strategy")]
pub mod strategy;

#[cfg(feature = "adapter")]
pub use adapter::{
    Adapter, Auth, ChatResponse, ErrorClass, HttpRequest, ProviderError, RequestContext, SseEvent,
    StreamOutput, StreamTranslator, Usage,
};
#[cfg(feature = "strategy")]
pub use strategy::{
    Candidate, Health, Ranking, RequestInfo, Strategy, decimal, push_decimal, push_int,
    scores_explained,
};

/// Every component built with the SDK allocates through [`blocks::Blocks`] unless its author
/// turns on the `system-allocator` feature (to install an allocator of their own).
#[cfg(all(target_family = "wasm", not(feature = "system-allocator")))]
#[global_allocator]
static ALLOCATOR: blocks::Blocks = blocks::Blocks::new();

/// JSON support for component authors (the same `serde_json` the SDK uses).
pub use serde_json as json;

/// The `serde` behind [`json`], for components that deserialize by hand (a visitor that borrows
/// from the request body, say).
pub use serde;

/// Writes a line to the gateway's log, tagged with this component's name.
#[cfg(any(feature = "strategy", feature = "adapter"))]
pub fn log(level: LogLevel, message: &str) {
    #[cfg(feature = "strategy")]
    strategy::bindings::smart_router::gateway::host::log(level.into(), message);
    #[cfg(all(feature = "adapter", not(feature = "strategy")))]
    adapter::bindings::smart_router::gateway::host::log(level.into(), message);
}

/// Severity of a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

macro_rules! level_into {
    ($bindings:path) => {
        impl From<LogLevel> for $bindings {
            fn from(level: LogLevel) -> Self {
                match level {
                    LogLevel::Debug => Self::Debug,
                    LogLevel::Info => Self::Info,
                    LogLevel::Warn => Self::Warn,
                    LogLevel::Error => Self::Error,
                }
            }
        }
    };
}
#[cfg(feature = "strategy")]
level_into!(strategy::bindings::smart_router::gateway::types::LogLevel);
#[cfg(all(feature = "adapter", not(feature = "strategy")))]
level_into!(adapter::bindings::smart_router::gateway::types::LogLevel);
