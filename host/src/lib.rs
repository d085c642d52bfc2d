//! Smart AI Router: an OpenAI-compatible LLM gateway whose routing strategies and provider
//! adapters are WebAssembly components.

pub mod app;
pub mod budget;
pub mod cache;
pub mod components;
pub mod config;
pub mod health;
pub mod metrics;
pub mod pricing;
pub mod proxy;
pub mod quota;
pub mod ratelimit;
pub mod reload;
pub mod router;
pub mod server;
pub mod stats;
pub mod store;
pub mod upstream;

pub use app::{Options, Running, start};
