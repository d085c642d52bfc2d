//! The WebAssembly component runtime: one engine, pre-instantiated components, a fresh store
//! per call with an epoch deadline and a memory cap.

mod adapter;
mod engine;
mod registry;
mod strategy;

pub use adapter::{AdapterComponent, AdapterSession, bindings as adapter_api};
pub use engine::{CallError, Runtime};
pub use registry::{Components, Kind, LoadError, Loaded, load_bytes, load_component};
pub use strategy::{StrategyComponent, bindings as strategy_api};
