//! The engine, the per-call store and the host functions components import.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{
    Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder,
};

use super::strategy::bindings::smart_router::gateway::{host, types};

/// How often the epoch ticks; component deadlines are counted in ticks.
const TICK: Duration = Duration::from_millis(5);

/// Why a component call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The component trapped, ran past its deadline or exceeded its memory cap.
    #[error("component `{component}` trapped: {reason}")]
    Trap { component: String, reason: String },
    /// The component answered, but with something the host cannot use.
    #[error("component `{component}` gave a malformed answer: {reason}")]
    Malformed { component: String, reason: String },
}

impl CallError {
    pub fn trap(component: &str, err: wasmtime::Error) -> Self {
        // `{:#}` keeps the cause chain (deadline, out of memory, unreachable…) on one line.
        let mut reason = format!("{err:#}");
        reason.truncate(300);
        CallError::Trap {
            component: component.to_string(),
            reason,
        }
    }
}

/// Failures in a row after which a component is quarantined until its file changes.
pub const QUARANTINE_AFTER: u32 = 5;

/// A component's run of consecutive failures. A reloaded file is a new component with a fresh
/// streak, which is what lifts a quarantine.
#[derive(Default)]
pub struct FailureStreak(AtomicU32);

impl FailureStreak {
    pub fn success(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    /// Counts a failure; logs once when the component becomes quarantined.
    pub fn failure(&self, component: &str) {
        if self.0.fetch_add(1, Ordering::Relaxed) + 1 == QUARANTINE_AFTER {
            tracing::error!(
                component,
                "component `{component}` failed {QUARANTINE_AFTER} times in a row: quarantined until its file changes"
            );
        }
    }

    pub fn quarantined(&self) -> bool {
        self.0.load(Ordering::Relaxed) >= QUARANTINE_AFTER
    }
}

/// Per-call host state.
pub struct CallState {
    limits: StoreLimits,
    component: Arc<str>,
}

impl types::Host for CallState {}

impl host::Host for CallState {
    fn log(&mut self, level: types::LogLevel, message: String) {
        let message: String = message.chars().take(1024).collect();
        let component = &*self.component;
        match level {
            types::LogLevel::Debug => tracing::debug!(component, "{message}"),
            types::LogLevel::Info => tracing::info!(component, "{message}"),
            types::LogLevel::Warn => tracing::warn!(component, "{message}"),
            types::LogLevel::Error => tracing::error!(component, "{message}"),
        }
    }
}

/// The process-wide component runtime.
pub struct Runtime {
    pub(super) engine: Engine,
    pub(super) strategy_linker: Linker<CallState>,
    pub(super) adapter_linker: Linker<CallState>,
    deadline_ticks: u64,
    memory_bytes: usize,
    stop: Arc<AtomicBool>,
}

impl Runtime {
    /// Builds the engine and starts the epoch ticker. `timeout` bounds every call;
    /// `memory_bytes` caps each instance's linear memory.
    pub fn new(timeout: Duration, memory_bytes: usize) -> anyhow::Result<Arc<Self>> {
        let mut pool = PoolingAllocationConfig::default();
        let slot = memory_bytes.max(256 << 20);
        pool.total_component_instances(4096)
            .total_core_instances(4096)
            .total_memories(4096)
            .total_tables(4096)
            .max_memory_size(slot);
        let mut config = wasmtime::Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(512 << 10)
            .memory_reservation(slot as u64)
            .memory_guard_size(32 << 20)
            .memory_reservation_for_growth(0)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)?;

        let mut strategy_linker = Linker::new(&engine);
        super::strategy::bindings::Strategy::add_to_linker::<_, HasSelf<_>>(
            &mut strategy_linker,
            |s| s,
        )?;
        let mut adapter_linker = Linker::new(&engine);
        super::adapter::bindings::Adapter::add_to_linker::<_, HasSelf<_>>(
            &mut adapter_linker,
            |s| s,
        )?;

        let stop = Arc::new(AtomicBool::new(false));
        let ticker = engine.weak();
        let stop_flag = stop.clone();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !stop_flag.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    match ticker.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })?;

        Ok(Arc::new(Runtime {
            engine,
            strategy_linker,
            adapter_linker,
            deadline_ticks: (timeout.as_millis() as u64).div_ceil(TICK.as_millis() as u64) + 1,
            memory_bytes,
            stop,
        }))
    }

    /// A fresh store for one call (or one adapter session) into `component`.
    pub(super) fn store(&self, component: &Arc<str>) -> Store<CallState> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.memory_bytes)
            .instances(64)
            .tables(64)
            .memories(16)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            &self.engine,
            CallState {
                limits,
                component: component.clone(),
            },
        );
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(self.deadline_ticks);
        store
    }

    /// Re-arms the deadline before the next call on a long-lived store.
    pub(super) fn rearm(&self, store: &mut Store<CallState>) {
        store.set_epoch_deadline(self.deadline_ticks);
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
