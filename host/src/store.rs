//! Storage through sqlx: SQLite by default, Postgres when several gateways share one database.
//! One code path serves both (sqlx's `Any` driver, `$N` placeholders work on both).

mod usage;

use std::path::Path;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};

pub use usage::{MAX_BATCH, QUEUE, UsageRecord, UsageSink, spawn_writer};

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("cannot create the database folder {0}: {1}")]
    Folder(String, std::io::Error),
    #[error("unsupported database URL (use sqlite:… or postgres://…)")]
    Url,
    #[error("the database task did not finish: {0}")]
    Stopped(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Embedded migrations, per backend: (version, SQL).
const SQLITE: &[(i64, &str)] = &[
    (1, include_str!("../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../migrations/sqlite/0002_key_budgets.sql")),
    (
        3,
        include_str!("../migrations/sqlite/0003_usage_endpoint.sql"),
    ),
    (
        4,
        include_str!("../migrations/sqlite/0004_client_request_id.sql"),
    ),
    (
        5,
        include_str!("../migrations/sqlite/0005_key_rpm_limit.sql"),
    ),
    (
        6,
        include_str!("../migrations/sqlite/0006_key_tpm_limit.sql"),
    ),
];
const POSTGRES: &[(i64, &str)] = &[
    (1, include_str!("../migrations/postgres/0001_init.sql")),
    (
        2,
        include_str!("../migrations/postgres/0002_key_budgets.sql"),
    ),
    (
        3,
        include_str!("../migrations/postgres/0003_usage_endpoint.sql"),
    ),
    (
        4,
        include_str!("../migrations/postgres/0004_client_request_id.sql"),
    ),
    (
        5,
        include_str!("../migrations/postgres/0005_key_rpm_limit.sql"),
    ),
    (
        6,
        include_str!("../migrations/postgres/0006_key_tpm_limit.sql"),
    ),
];

/// A gateway key as stored (never the key itself).
#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    /// Models and groups the key may use; `None` = all.
    pub allowed_models: Option<Vec<String>>,
    /// The key's budget.
    pub budget: crate::budget::Limits,
    /// Requests per minute; `None` = no limit.
    pub rpm_limit: Option<u32>,
    /// Tokens (prompt and completion) per minute; `None` = no limit.
    pub tpm_limit: Option<u32>,
}

/// What a new key may spend and how fast it may call.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyLimits {
    pub budget: crate::budget::Limits,
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
}

impl From<crate::budget::Limits> for KeyLimits {
    fn from(budget: crate::budget::Limits) -> Self {
        KeyLimits {
            budget,
            ..Default::default()
        }
    }
}

/// A per-minute limit column (`rpm_limit`, `tpm_limit`).
fn per_minute(r: &sqlx::any::AnyRow, column: &str) -> Option<u32> {
    let v = r.get::<Option<i64>, _>(column)?;
    Some(v.clamp(1, i64::from(u32::MAX)) as u32)
}

/// A gateway key as listed: what it may do, not what it is.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub key: KeyRecord,
    pub created_at_ms: u64,
    pub revoked: bool,
}

fn allowed_models(r: &sqlx::any::AnyRow) -> Option<Vec<String>> {
    r.get::<Option<String>, _>("allowed_models").map(|s| {
        s.split(',')
            .map(|m| m.trim().to_string())
            .filter(|m| !m.is_empty())
            .collect()
    })
}

fn key_budget(r: &sqlx::any::AnyRow) -> crate::budget::Limits {
    let micros = |col: &str| r.get::<Option<i64>, _>(col).map(|v| v.max(0) as u64);
    crate::budget::Limits {
        daily_micros: micros("budget_daily_micros"),
        monthly_micros: micros("budget_monthly_micros"),
    }
}

/// The database.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The runtime the store was opened on. A pooled Postgres connection is driven by the runtime
    /// that opened it, so queries from serving threads (whose runtimes stop first at shutdown,
    /// and may be busy) run here instead.
    home: Option<tokio::runtime::Handle>,
}

impl Store {
    /// Connects to `url` (creating a SQLite file and its folder if needed) and migrates.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::Url);
        };
        let mut url = url.to_string();
        if backend == Backend::Sqlite {
            let path = url
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:");
            let path = path.split('?').next().unwrap_or_default();
            if !path.is_empty() && path != ":memory:" {
                if let Some(parent) = Path::new(path)
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| StoreError::Folder(parent.display().to_string(), e))?;
                }
                if !url.contains("mode=") {
                    url.push_str(if url.contains('?') {
                        "&mode=rwc"
                    } else {
                        "?mode=rwc"
                    });
                }
            }
        }
        let sqlite = backend == Backend::Sqlite;
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 4 } else { 8 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // WAL + NORMAL: a commit survives the process being killed (not a power
                        // cut) without an fsync per transaction.
                        sqlx::Executor::execute(&mut *conn, "PRAGMA synchronous=NORMAL").await?;
                        sqlx::Executor::execute(&mut *conn, "PRAGMA busy_timeout=5000").await?;
                        // A multi-row INSERT keeps a statement journal; past 64 KiB SQLite
                        // spills it to a temporary file (open, unlink, write) per transaction.
                        sqlx::Executor::execute(&mut *conn, "PRAGMA temp_store=MEMORY").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        if backend == Backend::Sqlite {
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&pool)
                .await?;
        }
        let store = Store {
            pool,
            backend,
            home: tokio::runtime::Handle::try_current().ok(),
        };
        store.migrate().await?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::raw_sql("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY)")
            .execute(&self.pool)
            .await?;
        let migrations = match self.backend {
            Backend::Sqlite => SQLITE,
            Backend::Postgres => POSTGRES,
        };
        for (version, sql) in migrations {
            let mut tx = self.pool.begin().await?;
            let done = sqlx::query("SELECT version FROM schema_migrations WHERE version = $1")
                .bind(*version)
                .fetch_optional(&mut *tx)
                .await?;
            if done.is_none() {
                sqlx::raw_sql(sql).execute(&mut *tx).await?;
                sqlx::query("INSERT INTO schema_migrations (version) VALUES ($1)")
                    .bind(*version)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        }
        Ok(())
    }

    /// Runs `query` on the store's own runtime when called from a serving thread.
    async fn at_home<T: Send + 'static>(
        &self,
        query: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        match &self.home {
            Some(home) if crate::server::current_worker() != 0 => match home.spawn(query).await {
                Ok(r) => r,
                Err(e) => Err(StoreError::Stopped(e.to_string())),
            },
            _ => query.await,
        }
    }

    /// Looks a key up by its SHA-256 hash (hex).
    pub async fn find_key(&self, key_hash: &str) -> Result<Option<KeyRecord>, StoreError> {
        let (store, key_hash) = (self.clone(), key_hash.to_string());
        self.at_home(async move { store.find_key_here(&key_hash).await })
            .await
    }

    async fn find_key_here(&self, key_hash: &str) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, name, allowed_models, budget_daily_micros, budget_monthly_micros, rpm_limit, tpm_limit FROM api_keys WHERE key_hash = $1 AND disabled = 0",
        )
        .bind(key_hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| KeyRecord {
            id: r.get("id"),
            name: r.get("name"),
            allowed_models: allowed_models(&r),
            budget: key_budget(&r),
            rpm_limit: per_minute(&r, "rpm_limit"),
            tpm_limit: per_minute(&r, "tpm_limit"),
        }))
    }

    /// Every key, revoked ones too, oldest first.
    pub async fn list_keys(&self) -> Result<Vec<KeyInfo>, StoreError> {
        let store = self.clone();
        self.at_home(async move {
            let rows = sqlx::query(
                "SELECT id, name, allowed_models, budget_daily_micros, budget_monthly_micros, rpm_limit, tpm_limit, created_at_ms, disabled \
                 FROM api_keys ORDER BY created_at_ms, id",
            )
            .fetch_all(&store.pool)
            .await?;
            Ok(rows
                .iter()
                .map(|r| KeyInfo {
                    key: KeyRecord {
                        id: r.get("id"),
                        name: r.get("name"),
                        allowed_models: allowed_models(r),
                        budget: key_budget(r),
                        rpm_limit: per_minute(r, "rpm_limit"),
                        tpm_limit: per_minute(r, "tpm_limit"),
                    },
                    created_at_ms: r.get::<i64, _>("created_at_ms").max(0) as u64,
                    revoked: r.get::<i64, _>("disabled") != 0,
                })
                .collect())
        })
        .await
    }

    /// Revokes the key with this id; false when there is none.
    pub async fn revoke_key(&self, id: &str) -> Result<bool, StoreError> {
        let (store, id) = (self.clone(), id.to_string());
        self.at_home(async move {
            let done = sqlx::query("UPDATE api_keys SET disabled = 1 WHERE id = $1")
                .bind(&id)
                .execute(&store.pool)
                .await?;
            Ok(done.rows_affected() > 0)
        })
        .await
    }

    /// Stores a new key's hash, with its allowed models and budget.
    pub async fn create_key(
        &self,
        id: &str,
        name: &str,
        key_hash: &str,
        allowed_models: Option<&str>,
        limits: KeyLimits,
    ) -> Result<(), StoreError> {
        let KeyLimits { budget, rpm, tpm } = limits;
        let store = self.clone();
        let owned = |s: &str| s.to_string();
        let (id, name, key_hash) = (owned(id), owned(name), owned(key_hash));
        let allowed_models = allowed_models.map(owned);
        self.at_home(async move {
            sqlx::query("INSERT INTO api_keys (id, name, key_hash, allowed_models, created_at_ms, disabled, budget_daily_micros, budget_monthly_micros, rpm_limit, tpm_limit) VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $8, $9)")
                .bind(id)
                .bind(name)
                .bind(key_hash)
                .bind(allowed_models)
                .bind(crate::stats::now_ms() as i64)
                .bind(budget.daily_micros.map(|v| v as i64))
                .bind(budget.monthly_micros.map(|v| v as i64))
                .bind(rpm.map(i64::from))
                .bind(tpm.map(i64::from))
                .execute(&store.pool)
                .await?;
            Ok(())
        })
        .await
    }

    /// Requests, tokens and cost per channel since `since_ms` (seeds the daily limits at start-up).
    pub async fn used_since(&self, since_ms: u64) -> Result<Vec<ChannelUse>, StoreError> {
        let rows = sqlx::query(
            "SELECT channel_id, COUNT(*) AS n, CAST(COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS BIGINT) AS tokens, \
             CAST(COALESCE(SUM(cost_micros), 0) AS BIGINT) AS cost FROM usage \
             WHERE created_at_ms >= $1 AND channel_id IS NOT NULL GROUP BY channel_id",
        )
        .bind(since_ms as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| ChannelUse {
                channel: r.get("channel_id"),
                requests: r.get::<i64, _>("n").max(0) as u64,
                tokens: r.get::<i64, _>("tokens").max(0) as u64,
                cost_micros: r.get::<i64, _>("cost").max(0) as u64,
            })
            .collect())
    }
}

impl Store {
    /// Micro-dollars spent since `since_ms` per key, group and channel (seeds budgets at start-up).
    pub async fn spend_since(
        &self,
        since_ms: u64,
    ) -> Result<Vec<(crate::budget::Owner, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT 'key' AS kind, key_id AS name, CAST(COALESCE(SUM(cost_micros), 0) AS BIGINT) AS spent FROM usage WHERE created_at_ms >= $1 GROUP BY key_id \
             UNION ALL SELECT 'group', group_name, CAST(COALESCE(SUM(cost_micros), 0) AS BIGINT) FROM usage WHERE created_at_ms >= $1 AND group_name IS NOT NULL GROUP BY group_name \
             UNION ALL SELECT 'channel', channel_id, CAST(COALESCE(SUM(cost_micros), 0) AS BIGINT) FROM usage WHERE created_at_ms >= $1 AND channel_id IS NOT NULL GROUP BY channel_id",
        )
        .bind(since_ms as i64)
        .fetch_all(&self.pool)
        .await?;
        use crate::budget::Owner;
        Ok(rows
            .iter()
            .map(|r| {
                let name: String = r.get("name");
                let owner = match r.get::<String, _>("kind").as_str() {
                    "key" => Owner::Key(name),
                    "group" => Owner::Group(name),
                    _ => Owner::Channel(name),
                };
                (owner, r.get::<i64, _>("spent").max(0) as u64)
            })
            .collect())
    }
}

/// One usage row, as the statistics API reads it.
#[derive(Debug, Clone)]
pub struct StatRow {
    pub request_id: String,
    pub created_at_ms: u64,
    pub key_id: String,
    pub requested_model: String,
    pub group_name: Option<String>,
    pub channel_id: Option<String>,
    pub provider: Option<String>,
    pub success: bool,
    pub latency_ms: u64,
    pub ttft_ms: Option<u64>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_micros: i64,
}

impl Store {
    /// Usage rows since `since_ms`, oldest first.
    pub async fn rows_since(&self, since_ms: u64) -> Result<Vec<StatRow>, StoreError> {
        let store = self.clone();
        self.at_home(async move { store.rows_since_here(since_ms).await })
            .await
    }

    async fn rows_since_here(&self, since_ms: u64) -> Result<Vec<StatRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT request_id, created_at_ms, key_id, requested_model, group_name, channel_id, provider, outcome, latency_ms, ttft_ms, \
             prompt_tokens, completion_tokens, cost_micros FROM usage WHERE created_at_ms >= $1 ORDER BY created_at_ms",
        )
        .bind(since_ms as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| StatRow {
                request_id: r.get("request_id"),
                created_at_ms: r.get::<i64, _>("created_at_ms").max(0) as u64,
                key_id: r.get("key_id"),
                requested_model: r.get("requested_model"),
                group_name: r.get("group_name"),
                channel_id: r.get("channel_id"),
                provider: r.get("provider"),
                success: matches!(
                    r.get::<String, _>("outcome").as_str(),
                    "success" | "cache_hit"
                ),
                latency_ms: r.get::<i64, _>("latency_ms").max(0) as u64,
                ttft_ms: r.get::<Option<i64>, _>("ttft_ms").map(|t| t.max(0) as u64),
                prompt_tokens: r.get::<i64, _>("prompt_tokens").max(0) as u64,
                completion_tokens: r.get::<i64, _>("completion_tokens").max(0) as u64,
                cost_micros: r.get("cost_micros"),
            })
            .collect())
    }
}

/// One channel's use over a period.
#[derive(Debug, Clone)]
pub struct ChannelUse {
    pub channel: String,
    pub requests: u64,
    pub tokens: u64,
    pub cost_micros: u64,
}
