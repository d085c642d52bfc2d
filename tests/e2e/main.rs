//! End-to-end tests: the real gateway over HTTP, real WebAssembly components, mock upstreams on
//! port 0, real SQLite. Built components come from `cargo xtask build`.

mod anthropic;
mod badinput;
mod budgets;
mod cache;
mod chaos;
mod chat;
mod cli;
mod components;
mod crash;
mod embeddings;
mod failover;
mod gemini;
mod health;
mod hostile;
mod keys;
mod openai;
mod polyglot;
mod postgres;
mod quota;
mod reload;
mod sdk;
mod serving;
mod strategies;
mod usage;
