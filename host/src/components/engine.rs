//! The engine, the per-call store and the host functions components import.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{
    Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::strategy::bindings::smart_router::gateway::{host, types};
use super::strategy::bindings_v0_1::smart_router::gateway::{
    host as host_v0_1, types as types_v0_1,
};

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

/// The store's caps, remembering how large its memories have grown.
struct Limits {
    caps: StoreLimits,
    /// The largest linear memory size granted so far, in bytes.
    memory_high: usize,
}

impl wasmtime::ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let granted = self.caps.memory_growing(current, desired, maximum)?;
        if granted {
            self.memory_high = self.memory_high.max(desired);
        }
        Ok(granted)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.caps.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.caps.instances()
    }
    fn tables(&self) -> usize {
        self.caps.tables()
    }
    fn memories(&self) -> usize {
        self.caps.memories()
    }
}

/// An instance together with its store.
pub(super) trait Instantiated {
    fn store(&self) -> &Store<CallState>;
}

/// Idle instances of one component, kept for reuse, at most `max` for each serving thread. Past
/// [`KEEP_IDLE`], the ones left unused for [`IDLE_FOR`] are dropped as others come back, so a
/// burst of concurrent streams does not hold its instances' memory for good.
///
/// Each serving thread keeps its own list and takes from another's only when its own is empty:
/// an instance stays with the thread (and so, mostly, the core) whose caches hold its memory and
/// stack, and the two threads do not pass one lock's cache line back and forth six times a
/// request.
pub(super) struct IdlePool<T> {
    /// One list per serving thread (see [`slot`]), most recently returned last, with when.
    slots: [Padded<IdleList<T>>; SLOTS],
    max: usize,
    /// Instances created for this component: flat under a steady load when the pool is large
    /// enough (`/metrics` shows it).
    created: AtomicU64,
}

/// One thread's idle instances of a component, most recently returned last, with when.
type IdleList<T> = std::sync::Mutex<Vec<(T, std::time::Instant)>>;

/// Idle instances every component may keep however long they wait (per serving thread).
pub(super) const KEEP_IDLE: usize = 16;
/// Lists of idle instances per component: serving threads past the seventh share them.
const SLOTS: usize = 8;

/// A value alone on its cache lines (two, as the adjacent-line prefetcher pairs them), so one
/// thread's list does not share a line with the next one's.
#[repr(align(128))]
struct Padded<T>(T);

/// The list this thread keeps its idle instances in: 0 off the serving threads.
fn slot() -> usize {
    crate::server::current_worker() % SLOTS
}

/// How long an idle instance past [`KEEP_IDLE`] is kept unused.
const IDLE_FOR: Duration = Duration::from_secs(30);

impl<T: Instantiated> IdlePool<T> {
    pub fn new(max: usize) -> Self {
        IdlePool {
            slots: std::array::from_fn(|_| Padded(std::sync::Mutex::new(Vec::new()))),
            max,
            created: AtomicU64::new(0),
        }
    }

    /// This thread's most recently returned instance; else another thread's.
    pub fn take(&self) -> Option<T> {
        let own = slot();
        let pop = |i: usize| {
            self.slots[i]
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop()
                .map(|(item, _)| item)
        };
        pop(own).or_else(|| (1..SLOTS).find_map(|k| pop((own + k) % SLOTS)))
    }

    /// Counts an instance created because none was idle.
    pub fn note_created(&self) {
        self.created.fetch_add(1, Ordering::Relaxed);
    }

    pub fn created(&self) -> u64 {
        self.created.load(Ordering::Relaxed)
    }

    /// Keeps an instance that finished without trapping for reuse, unless its memory has grown
    /// too large (see [`CallState::worn`]) or the pool is full.
    pub fn give_back(&self, rt: &Runtime, item: T) {
        if rt.worn(item.store()) {
            return;
        }
        let now = std::time::Instant::now();
        let mut stale = Vec::new();
        {
            let mut items = self.slots[slot()]
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if items.len() < self.max {
                items.push((item, now));
            } else {
                stale.push((item, now));
            }
            // The least recently used are first.
            let old = items
                .iter()
                .take(items.len().saturating_sub(KEEP_IDLE))
                .take_while(|(_, at)| now.duration_since(*at) > IDLE_FOR)
                .count();
            stale.extend(items.drain(..old));
        }
        // Dropped outside the lock: freeing an instance's memory is a system call.
        drop(stale);
    }
}

/// Per-call host state.
pub struct CallState {
    limits: Limits,
    component: Arc<str>,
    /// WASI for components that import it (those built by Python's or JavaScript's
    /// toolchains): no files, no environment, no arguments, no network, empty stdin, stdout and
    /// stderr discarded. Clocks and random numbers are the only capabilities.
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl CallState {
    /// True once the instance's memory has grown past half its cap: it is not reused, so a
    /// guest that leaks (some language runtimes grow a little on every call) is replaced before
    /// it hits the cap and traps.
    pub(super) fn worn(&self, cap: usize) -> bool {
        self.limits.memory_high > cap / 2
    }

    fn log(&self, level: types::LogLevel, message: &str) {
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

impl types::Host for CallState {}

impl host::Host for CallState {
    fn log(&mut self, level: types::LogLevel, message: String) {
        CallState::log(self, level, &message);
    }
}

impl types_v0_1::Host for CallState {}

impl host_v0_1::Host for CallState {
    fn log(&mut self, level: types_v0_1::LogLevel, message: String) {
        let level = match level {
            types_v0_1::LogLevel::Debug => types::LogLevel::Debug,
            types_v0_1::LogLevel::Info => types::LogLevel::Info,
            types_v0_1::LogLevel::Warn => types::LogLevel::Warn,
            types_v0_1::LogLevel::Error => types::LogLevel::Error,
        };
        CallState::log(self, level, &message);
    }
}

/// Runs a call into a component. A component that imports WASI may block inside a WASI call
/// (a `print` from Python, say), which Wasmtime serves by blocking on a Tokio runtime — which
/// it may not do from a thread that is driving one. On a multi-threaded runtime such a call
/// first hands the worker's async duties to another thread; on a single-threaded one (the
/// serving threads) it runs on a scoped thread of its own. Components that import no WASI
/// (every built-in one) are called directly.
pub(super) fn enter<R: Send>(uses_wasi: bool, call: impl FnOnce() -> R + Send) -> R {
    if !uses_wasi {
        return call();
    }
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(call),
        Ok(_) => std::thread::scope(|s| match s.spawn(call).join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }),
        Err(_) => call(),
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
    /// `memory_bytes` caps each instance's linear memory; compiled components are kept in
    /// `cache_dir`, when given, so a restart (or a reload of an unchanged file) skips compiling.
    pub fn new(
        timeout: Duration,
        memory_bytes: usize,
        cache_dir: Option<&std::path::Path>,
    ) -> anyhow::Result<Arc<Self>> {
        let mut pool = PoolingAllocationConfig::default();
        let slot = memory_bytes.max(256 << 20);
        // Components from Python's and JavaScript's toolchains hold a whole interpreter: a dozen
        // core instances, tables of tens of thousands of functions, large instance records.
        pool.total_component_instances(4096)
            .total_core_instances(4096)
            .total_memories(4096)
            .total_tables(4096)
            .max_memory_size(slot)
            .max_core_instances_per_component(64)
            .max_memories_per_component(16)
            .max_tables_per_component(64)
            .table_elements(64 << 10)
            .max_core_instance_size(4 << 20)
            .max_component_instance_size(4 << 20);
        let mut config = wasmtime::Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(512 << 10)
            // Each linear memory's slot reserves all 4 GiB a 32-bit address can reach (address
            // space only: nothing is committed until touched), so compiled code checks no bounds
            // on loads and stores: component calls ran 10-27 % faster (criterion) than in slots
            // of `slot`.
            .memory_reservation(slot.max(4 << 30) as u64)
            .memory_guard_size(32 << 20)
            .memory_reservation_for_growth(0)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        // `perf` can name the guests' functions: wasmtime writes /tmp/perf-PID.map.
        if std::env::var_os("SMART_ROUTER_WASM_PERFMAP").is_some_and(|v| v == "1") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        if let Some(dir) = cache_dir {
            // Wasmtime wants an absolute folder; a relative one is taken from the working folder.
            let dir = std::path::absolute(dir)?;
            let mut cache = wasmtime::CacheConfig::new();
            cache.with_directory(dir);
            config.cache(Some(wasmtime::Cache::new(cache)?));
        }
        let engine = match Engine::new(&config) {
            Ok(engine) => engine,
            Err(e) => {
                // Short of address space (a `ulimit -v`, many runtimes in one process): slots of
                // the memory cap, with explicit bounds checks.
                tracing::warn!(
                    "component memory slots of 4 GiB cannot be reserved ({e:#}); using {} MiB slots with bounds checks",
                    slot >> 20
                );
                config.memory_reservation(slot as u64);
                match Engine::new(&config) {
                    Ok(engine) => engine,
                    Err(e) => {
                        // Not even that (a tighter limit, or valgrind, whose address space is
                        // smaller): each instance's memory is mapped when the instance is made.
                        // Instances are kept and reused, so requests rarely pay for it.
                        tracing::warn!(
                            "no pool of component memories can be reserved ({e:#}); mapping each instance's memory when it is made"
                        );
                        config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
                        Engine::new(&config)?
                    }
                }
            }
        };

        // Each linker serves components built against the current contract and the released
        // ones before it (their interfaces carry their version in their names), plus WASI.
        let mut strategy_linker = Linker::new(&engine);
        super::strategy::bindings::Strategy::add_to_linker::<_, HasSelf<_>>(
            &mut strategy_linker,
            |s| s,
        )?;
        super::strategy::bindings_v0_1::Strategy::add_to_linker::<_, HasSelf<_>>(
            &mut strategy_linker,
            |s| s,
        )?;
        wasmtime_wasi::p2::add_to_linker_sync(&mut strategy_linker)?;
        let mut adapter_linker = Linker::new(&engine);
        super::adapter::bindings::Adapter::add_to_linker::<_, HasSelf<_>>(
            &mut adapter_linker,
            |s| s,
        )?;
        super::adapter::bindings_v0_1::Adapter::add_to_linker::<_, HasSelf<_>>(
            &mut adapter_linker,
            |s| s,
        )?;
        wasmtime_wasi::p2::add_to_linker_sync(&mut adapter_linker)?;

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
                limits: Limits {
                    caps: limits,
                    memory_high: 0,
                },
                component: component.clone(),
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
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

    /// True when an instance whose store is `store` should not be reused (see
    /// [`CallState::worn`]).
    pub(super) fn worn(&self, store: &Store<CallState>) -> bool {
        store.data().worn(self.memory_bytes)
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
