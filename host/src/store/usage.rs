//! Usage records: written off the request path in batches, never dropped.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::Store;

/// One upstream attempt (or one request that reached no upstream, with `channel_id` empty).
#[derive(Debug, Clone, Default)]
pub struct UsageRecord {
    pub request_id: String,
    /// The client's own id for the request (`X-Client-Request-Id`), when it sent one.
    pub client_request_id: Option<String>,
    /// 1 for the first channel tried, 2 for the first failover…; 0 when no channel was tried.
    pub attempt: u32,
    pub created_at_ms: u64,
    /// The gateway key's id (`master` for the master key); never the key.
    pub key_id: String,
    pub requested_model: String,
    /// The API the request came in on.
    pub endpoint: crate::router::Endpoint,
    pub group_name: Option<String>,
    pub channel_id: Option<String>,
    pub provider: Option<String>,
    pub upstream_model: Option<String>,
    pub is_stream: bool,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    pub cost_micros: i64,
    pub latency_ms: u64,
    pub ttft_ms: Option<u64>,
    /// The upstream's HTTP status; 0 when none arrived.
    pub status: u16,
    /// `success`, `error`, `client_error` or `client_closed`.
    pub outcome: &'static str,
    pub error_class: Option<String>,
    pub error_message: Option<String>,
}

/// Most records in one transaction.
pub const MAX_BATCH: usize = 2048;
/// Records queued for the writer; when full, requests wait rather than the queue growing. So
/// without `durable`, a crash loses at most `QUEUE + MAX_BATCH` records.
pub const QUEUE: usize = 4096;
/// Without `durable`, how long the writer lets records gather before committing them, in steps
/// of `LINGER_STEP`: SQLite's cost is mostly per transaction (every index page it touches is
/// written again), so fewer, larger transactions cost far less per row. The writer sleeps
/// through each step rather than waking for each record, so a request queueing its record
/// wakes no other thread; it stops early once `MAX_BATCH / 2` records have gathered, and after
/// a step that brought fewer than `BUSY_STEP_ROWS`: under light traffic a short transaction now
/// beats a long one later, whose write would hold up the requests sharing its cores.
const LINGER_STEP: std::time::Duration = std::time::Duration::from_millis(10);
const LINGER_STEPS: u32 = 5;
/// Records per step (6,400 a second) from which the writer keeps lingering.
const BUSY_STEP_ROWS: usize = 64;
/// Rows per INSERT statement (23 values each, well under SQLite's and Postgres's limits).
const ROWS_PER_STATEMENT: usize = 128;
const COLUMNS: usize = 23;

enum Msg {
    Record(Box<UsageRecord>),
    Flush(oneshot::Sender<()>),
}

/// Where request handlers send usage records.
#[derive(Clone)]
pub struct UsageSink {
    tx: mpsc::Sender<Msg>,
    /// Each `record` waits until its row is committed (group commit), so a crash loses nothing
    /// that a client was answered for. Off: records are written in the background within
    /// milliseconds, and a `kill -9` can lose the ones not yet committed.
    durable: bool,
}

impl UsageSink {
    /// Queues a record — and, when durable, waits for it to be committed. Waits (back-pressure)
    /// rather than dropping when the writer is behind.
    pub async fn record(&self, record: UsageRecord) {
        if self.tx.send(Msg::Record(Box::new(record))).await.is_err() {
            tracing::error!("usage writer has stopped; a usage record could not be queued");
            return;
        }
        if self.durable {
            self.flush().await;
        }
    }

    /// Waits until every record queued before this call is in the database.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// Starts the writer. It ends, after writing everything queued, when every sink is dropped.
pub fn spawn_writer(store: Store, durable: bool) -> (UsageSink, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Msg>(QUEUE);
    let handle = tokio::spawn(async move {
        let mut batch: Vec<UsageRecord> = Vec::with_capacity(256);
        let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
        let mut conn = None;
        while let Some(first) = rx.recv().await {
            take(first, &mut batch, &mut waiters);
            // Gather whatever else is already queued, up to a batch.
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => take(m, &mut batch, &mut waiters),
                    Err(_) => break,
                }
            }
            // Nobody waits on this batch: let it fill a little longer, then take what came.
            let mut steps = 0;
            while !durable
                && waiters.is_empty()
                && batch.len() < MAX_BATCH / 2
                && steps < LINGER_STEPS
            {
                let before = batch.len();
                tokio::time::sleep(LINGER_STEP).await;
                steps += 1;
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(m) => take(m, &mut batch, &mut waiters),
                        Err(_) => break,
                    }
                }
                if batch.len() - before < BUSY_STEP_ROWS {
                    break;
                }
            }
            write(&store, &mut conn, &mut batch).await;
            for w in waiters.drain(..) {
                let _ = w.send(());
            }
        }
    });
    (UsageSink { tx, durable }, handle)
}

fn take(m: Msg, batch: &mut Vec<UsageRecord>, waiters: &mut Vec<oneshot::Sender<()>>) {
    match m {
        Msg::Record(r) => batch.push(*r),
        Msg::Flush(w) => waiters.push(w),
    }
}

/// Writes a batch in one transaction, retrying until the database takes it. The writer keeps
/// one connection: its page cache stays warm, where a connection that another one wrote behind
/// would read the table's pages again.
async fn write(
    store: &Store,
    conn: &mut Option<sqlx::pool::PoolConnection<sqlx::Any>>,
    batch: &mut Vec<UsageRecord>,
) {
    if batch.is_empty() {
        return;
    }
    let mut delay = Duration::from_millis(50);
    loop {
        let result = match conn {
            Some(c) => insert(c, store.backend(), batch).await,
            None => match store.pool().acquire().await {
                Ok(c) => insert(conn.insert(c), store.backend(), batch).await,
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(()) => {
                batch.clear();
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, pending = batch.len(), "usage write failed; retrying");
                // A fresh connection for the retry, in case this one is what broke.
                *conn = None;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn insert(
    conn: &mut sqlx::AnyConnection,
    backend: super::Backend,
    batch: &[UsageRecord],
) -> Result<(), sqlx::Error> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    // Statements of 128, 64, …, 1 rows only: eight statement texts, all kept prepared, instead of
    // one per batch size (preparing a 2,800-parameter statement costs more than running it).
    let mut rest = batch;
    while !rest.is_empty() {
        let n = ROWS_PER_STATEMENT.min(1 << rest.len().ilog2());
        let (rows, tail) = rest.split_at(n);
        rest = tail;
        // The statement text depends only on the number of rows: every value is a bound
        // parameter. Statements are cached per row count.
        let sql = insert_sql(rows.len(), backend);
        let mut q = sqlx::query(&sql);
        for r in rows {
            q = q
                .bind(r.request_id.as_str())
                .bind(i64::from(r.attempt))
                .bind(r.created_at_ms as i64)
                .bind(r.key_id.as_str())
                .bind(r.requested_model.as_str())
                .bind(r.group_name.as_deref())
                .bind(r.channel_id.as_deref())
                .bind(r.provider.as_deref())
                .bind(r.upstream_model.as_deref())
                .bind(i64::from(r.is_stream))
                .bind(r.prompt_tokens as i64)
                .bind(r.completion_tokens as i64)
                .bind(r.cached_tokens as i64)
                .bind(r.reasoning_tokens as i64)
                .bind(r.cost_micros)
                .bind(r.latency_ms as i64)
                .bind(r.ttft_ms.map(|t| t as i64))
                .bind(i64::from(r.status))
                .bind(r.outcome)
                .bind(r.error_class.as_deref())
                .bind(r.error_message.as_deref())
                .bind(r.endpoint.as_str())
                .bind(r.client_request_id.as_deref());
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// `INSERT … VALUES ($1, …, $21), ($22, …), …` for `rows` rows — with plain `?` on SQLite, whose
/// driver looks numbered parameters up by name one by one (quadratic in a big statement).
///
/// On SQLite it is `INSERT OR FAIL`: a plain multi-row `INSERT` whose `NOT NULL` columns could
/// abort it keeps a statement journal, a copy of every page the statement changes, so that an
/// abort can undo the statement's rows alone. Here any failure rolls the whole transaction back
/// (and [`write`] retries the batch), so that copy is never used. Instructions inside
/// `sqlite3_step` per row, this table and its indexes (callgrind): 0.958x the plain `INSERT`'s
/// with 32 rows a transaction, 0.974x with 1,024.
fn insert_sql(rows: usize, backend: super::Backend) -> String {
    let mut sql = String::from(match backend {
        super::Backend::Sqlite => "INSERT OR FAIL",
        super::Backend::Postgres => "INSERT",
    });
    sql.push_str(
        " INTO usage (request_id, attempt, created_at_ms, key_id, requested_model, group_name, channel_id, provider, \
         upstream_model, is_stream, prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, cost_micros, \
         latency_ms, ttft_ms, status, outcome, error_class, error_message, endpoint, client_request_id) VALUES ",
    );
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for col in 0..COLUMNS {
            if col > 0 {
                sql.push_str(", ");
            }
            match backend {
                super::Backend::Sqlite => sql.push('?'),
                super::Backend::Postgres => {
                    sql.push('$');
                    sql.push_str(&(row * COLUMNS + col + 1).to_string());
                }
            }
        }
        sql.push(')');
    }
    sql
}
