//! The gateway's shared state and its life cycle: start, serve, shut down gracefully.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::components::{Components, Runtime};
use crate::config::{self, Config};
use crate::stats::{Stats, now_ms};
use crate::store::{KeyRecord, Store, UsageSink};
use crate::upstream::Upstream;

/// Counters of events worth watching, exposed on `/health`.
#[derive(Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub strategy_failures: AtomicU64,
    pub adapter_failures: AtomicU64,
    pub upstream_failures: AtomicU64,
    pub failovers: AtomicU64,
    /// Requests answered from the answer cache, and requests it applied to but could not answer.
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    /// Batches of file changes the watcher checked (configuration or components).
    pub reloads: AtomicU64,
    /// Time a request spent in the gateway itself: total minus waiting on upstreams.
    pub overhead: crate::metrics::Histogram,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Everything a request needs, shared by all handlers.
pub struct App {
    pub config: ArcSwap<Config>,
    pub components: ArcSwap<Components>,
    pub runtime: Arc<Runtime>,
    pub stats: Stats,
    pub budgets: crate::budget::Budgets,
    /// Requests per minute per gateway key.
    pub key_rates: crate::ratelimit::KeyRates,
    /// Tokens per minute per gateway key.
    pub key_tokens: crate::ratelimit::KeyRates,
    /// Answers kept for identical requests.
    pub cache: crate::cache::Cache,
    pub store: Store,
    pub usage: UsageSink,
    pub upstream: Upstream,
    pub counters: Counters,
    /// Open client connections per serving thread.
    pub connections: crate::server::Connections,
    /// SHA-256 of the master key: a caller's key is hashed once and compared with this.
    master_hash: Option<[u8; 32]>,
    keys: Mutex<HashMap<[u8; 32], (KeyRecord, Instant)>>,
}

/// How long a looked-up gateway key is trusted before the database is asked again.
const KEY_TTL: Duration = Duration::from_secs(30);

impl App {
    /// Swaps in a new configuration. Channels whose provider changed its key or base URL get a
    /// fresh start: a cooldown earned by the old key (refused, out of credit) is lifted.
    pub fn install_config(&self, cfg: Config) {
        let old = self.config.load();
        for ch in &cfg.channels {
            let (Some(new_p), Some(old_p)) = (
                cfg.providers.get(&ch.provider),
                old.providers.get(&ch.provider),
            ) else {
                continue;
            };
            if new_p.api_key != old_p.api_key || new_p.base_url != old_p.base_url {
                self.stats.channel(&ch.id).clear_cooldown();
            }
        }
        self.config.store(Arc::new(cfg));
    }

    /// SHA-256 of the master key, when one is set.
    pub fn master_hash(&self) -> Option<&[u8; 32]> {
        self.master_hash.as_ref()
    }

    /// A gateway key by the SHA-256 of its value: the cache, else the database.
    pub async fn key_by_hash(
        &self,
        hash: [u8; 32],
    ) -> Result<Option<KeyRecord>, crate::store::StoreError> {
        if let Some((rec, at)) = self
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&hash)
            && at.elapsed() < KEY_TTL
        {
            return Ok(Some(rec.clone()));
        }
        let found = self.store.find_key(&hex(&hash)).await?;
        let mut cache = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        match &found {
            Some(rec) => {
                if cache.len() > 10_000 {
                    cache.clear();
                }
                cache.insert(hash, (rec.clone(), Instant::now()));
            }
            None => {
                cache.remove(&hash);
            }
        }
        Ok(found)
    }
}

impl App {
    /// Drops a key from the cache at once (it was revoked): this instance refuses it from the
    /// next request; other instances sharing the database, once their cache entry expires.
    pub fn forget_key(&self, id: &str) {
        let mut cache = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|_, (rec, _)| rec.id != id);
    }
}

/// A new gateway key: its id, the key itself (shown once, never stored) and the SHA-256 hex of
/// it (what is stored).
pub fn mint_key() -> (String, String, String) {
    let key = format!(
        "sk-sr-{:016x}{:016x}{:016x}",
        fastrand::u64(..),
        fastrand::u64(..),
        fastrand::u64(..)
    );
    let hash = hex(&<sha2::Sha256 as sha2::Digest>::digest(key.as_bytes()));
    let id = format!("key_{:012x}", fastrand::u64(..) & 0xffff_ffff_ffff);
    (id, key, hash)
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How to start a gateway.
#[derive(Debug, Clone)]
pub struct Options {
    pub config_dir: PathBuf,
    pub database_url: String,
    /// Overrides `system.yaml`'s `server.listen`; default 127.0.0.1:8000.
    pub listen: Option<String>,
    /// Always accepted as a gateway key.
    pub master_key: Option<String>,
    /// Where compiled components are cached; `None` compiles every load.
    pub component_cache: Option<PathBuf>,
    /// Serving threads, each with its own single-threaded runtime; `None`: one per core.
    pub workers: Option<usize>,
}

/// A running gateway.
pub struct Running {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    shutdown: oneshot::Sender<()>,
    /// Ends the shutdown's grace period early.
    hurry: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
    _watcher: notify::RecommendedWatcher,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish (for `server.shutdown_grace_secs`, then
    /// cuts them off), and flushes every usage record.
    pub async fn shutdown(self) {
        self.shutdown_unless(std::future::pending()).await;
    }

    /// [`Running::shutdown`], cutting in-flight requests off as soon as `sooner` resolves.
    async fn shutdown_unless(self, sooner: impl std::future::Future<Output = ()>) {
        let Running {
            app,
            shutdown,
            hurry,
            mut server,
            ..
        } = self;
        let _ = shutdown.send(());
        tokio::select! {
            _ = &mut server => {}
            () = sooner => {
                let _ = hurry.send(());
                let _ = server.await;
            }
        }
        app.usage.flush().await;
    }

    /// Runs until the process gets SIGINT or SIGTERM, then shuts down gracefully; a second
    /// signal cuts off what is still in flight at once (each still gets its usage row).
    pub async fn until_signal(self) {
        wait_for_signal().await;
        tracing::info!(
            "shutting down: draining in-flight requests (a second SIGINT or SIGTERM cuts them off now)"
        );
        self.shutdown_unless(wait_for_signal()).await;
        tracing::info!("stopped; all usage records written");
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Loads everything, binds, and starts serving.
pub async fn start(opts: Options) -> anyhow::Result<Running> {
    let cfg = config::load(&opts.config_dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    let runtime = Runtime::new(
        cfg.system.component_timeout,
        cfg.system.component_memory_bytes,
        opts.component_cache.as_deref(),
    )?;
    let comps = {
        let rt = runtime.clone();
        let dir = cfg.system.components_dir.clone();
        tokio::task::spawn_blocking(move || crate::reload::load_all(&rt, &dir)).await?
    };
    crate::reload::report_missing(&cfg, &comps);
    let store = Store::connect(&opts.database_url).await?;
    let (usage, _writer) = crate::store::spawn_writer(store.clone(), cfg.system.durable_usage);
    let workers = opts
        .workers
        .filter(|&n| n > 0)
        .unwrap_or_else(crate::server::default_workers);
    let upstream = Upstream::new(cfg.system.connect_timeout, workers)?;
    let listen = opts
        .listen
        .clone()
        .or_else(|| cfg.system.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:8000".into());
    let max_body = cfg.system.max_body_bytes;
    let header_timeout = cfg.system.header_read_timeout;
    let idle_spin = cfg.system.idle_spin;

    // Spending so far, so budgets survive a restart.
    let budgets = crate::budget::Budgets::default();
    let (today, _) = cfg.clock.day(now_ms());
    let spent_today: HashMap<_, _> = store
        .spend_since(today.start_ms)
        .await?
        .into_iter()
        .collect();
    for (owner, this_month) in store.spend_since(today.month_start_ms).await? {
        let day = spent_today.get(&owner).copied().unwrap_or(0);
        budgets.seed(owner, &today, day, this_month);
    }
    // Today's use so far, so daily limits survive a restart.
    let stats = Stats::default();
    let (day, _) = cfg.clock.day(now_ms());
    for used in store.used_since(day.start_ms).await? {
        let q = &stats.channel(&used.channel).quota;
        q.requests.seed(used.requests, day.id);
        q.tokens.seed(used.tokens, day.id);
        q.cost_micros.seed(used.cost_micros, day.id);
    }

    let app = Arc::new(App {
        config: ArcSwap::from_pointee(cfg),
        components: ArcSwap::from_pointee(comps),
        runtime,
        stats,
        budgets,
        key_rates: crate::ratelimit::KeyRates::new(crate::ratelimit::Unit::Requests),
        key_tokens: crate::ratelimit::KeyRates::new(crate::ratelimit::Unit::Tokens),
        cache: Default::default(),
        store,
        usage,
        upstream,
        counters: Counters::default(),
        connections: crate::server::connections(workers),
        master_hash: opts
            .master_key
            .filter(|k| !k.is_empty())
            .map(|k| <sha2::Sha256 as sha2::Digest>::digest(k.as_bytes()).into()),
        keys: Mutex::new(HashMap::new()),
    });
    if app.master_hash.is_none() {
        tracing::warn!(
            "SMART_ROUTER_MASTER_KEY is not set: only keys created with `smart-router keys create` are accepted"
        );
    }
    let watcher = crate::reload::watch(app.clone())?;
    crate::health::spawn(app.clone());
    let listener = TcpListener::bind(&listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    let gateway = crate::server::Gateway::new(app.clone(), max_body);
    let connections = app.connections.clone();
    let (shutdown, stop) = oneshot::channel::<()>();
    let (hurry, sooner) = oneshot::channel::<()>();
    let live = app.clone();
    let server = tokio::spawn(async move {
        let stop = async move {
            let _ = stop.await;
            // The grace period in force when the shutdown begins (a reload may have changed it).
            live.config.load().system.shutdown_grace
        };
        let sooner = async move {
            // Only a message hurries; a sender dropped unused leaves the grace period whole.
            if sooner.await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        crate::server::serve(
            listener,
            gateway,
            header_timeout,
            idle_spin,
            connections,
            stop,
            sooner,
        )
        .await;
    });
    tracing::info!(workers, %addr, "smart-router listening");
    Ok(Running {
        addr,
        app,
        shutdown,
        hurry,
        server,
        _watcher: watcher,
    })
}
