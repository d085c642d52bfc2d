//! A real gateway in a temporary folder: its own config, components and SQLite file, on port 0.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;
use smart_router::app::App;
use smart_router::{Options, Running};

/// The master key every harness gateway accepts.
pub const KEY: &str = "sk-test-master";

/// Everything the gateway logged in this process.
pub fn logs() -> String {
    String::from_utf8_lossy(&log_buffer().lock().expect("lock")).into_owned()
}

fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .try_init();
        buf
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(b);
        // Also show them in the test's own output, for when a test fails.
        eprint!("{}", String::from_utf8_lossy(b));
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A fresh temporary folder, removed when the gateway is dropped.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "smart-router-{tag}-{}-{:x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Configures a gateway for a test.
pub struct GatewayBuilder {
    providers: String,
    groups: String,
    system: String,
    strategies: Vec<String>,
    adapters: Vec<String>,
    database: Option<String>,
    workers: Option<usize>,
}

impl Default for GatewayBuilder {
    fn default() -> Self {
        GatewayBuilder {
            providers: "providers: {}\n".into(),
            groups: "model_groups: {}\n".into(),
            system: "components_dir: components\nupstream:\n  first_byte_timeout_secs: 5\n".into(),
            strategies: vec!["priority".into(), "weighted-sort".into()],
            adapters: vec!["openai".into()],
            database: None,
            workers: None,
        }
    }
}

impl GatewayBuilder {
    pub fn providers(mut self, yaml: &str) -> Self {
        self.providers = yaml.to_string();
        self
    }
    pub fn groups(mut self, yaml: &str) -> Self {
        self.groups = yaml.to_string();
        self
    }
    pub fn system(mut self, yaml: &str) -> Self {
        self.system = yaml.to_string();
        self
    }
    /// The strategy components copied in at start (default: priority, weighted-sort).
    pub fn strategies(mut self, names: &[&str]) -> Self {
        self.strategies = names.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn adapters(mut self, names: &[&str]) -> Self {
        self.adapters = names.iter().map(|s| s.to_string()).collect();
        self
    }
    /// Serving threads (default: one per core).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }
    pub fn database(mut self, url: &str) -> Self {
        self.database = Some(url.to_string());
        self
    }

    pub async fn start(self) -> Gateway {
        log_buffer();
        let dir = temp_dir("gw");
        let config = dir.join("config");
        std::fs::create_dir_all(config.join("components/strategies")).expect("mkdir");
        std::fs::create_dir_all(config.join("components/adapters")).expect("mkdir");
        std::fs::write(config.join("providers.yaml"), &self.providers).expect("write");
        std::fs::write(config.join("model_groups.yaml"), &self.groups).expect("write");
        std::fs::write(config.join("system.yaml"), &self.system).expect("write");
        for s in &self.strategies {
            std::fs::copy(
                crate::component("strategies", s),
                config.join(format!("components/strategies/{s}.wasm")),
            )
            .expect("copy strategy");
        }
        for a in &self.adapters {
            std::fs::copy(
                crate::component("adapters", a),
                config.join(format!("components/adapters/{a}.wasm")),
            )
            .expect("copy adapter");
        }
        let database = self
            .database
            .unwrap_or_else(|| format!("sqlite://{}", dir.join("usage.db").display()));
        let running = smart_router::start(Options {
            config_dir: config.clone(),
            database_url: database,
            listen: Some("127.0.0.1:0".into()),
            master_key: Some(KEY.into()),
            // Shared by every test: each component is compiled once per run, not once per test.
            component_cache: Some(crate::target_dir().join("component-cache")),
            workers: self.workers,
        })
        .await
        .expect("gateway starts");
        Gateway {
            base: format!("http://{}", running.addr),
            app: running.app.clone(),
            running: Some(running),
            dir,
            config,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
        }
    }
}

/// The channel that answered a response (its `x-smart-router-channel`), empty when none did.
pub fn channel_of(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("x-smart-router-channel")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// A running gateway.
pub struct Gateway {
    pub base: String,
    pub app: Arc<App>,
    running: Option<Running>,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub client: reqwest::Client,
}

impl Gateway {
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder::default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `POST /v1/chat/completions` with the master key.
    pub async fn chat(&self, body: Value) -> reqwest::Response {
        self.post("/v1/chat/completions", body).await
    }

    /// `POST /v1/chat/completions` with the master key and `body` sent exactly as written (text,
    /// or bytes that need not be UTF-8).
    pub async fn chat_raw(&self, body: impl Into<Vec<u8>>) -> reqwest::Response {
        self.client
            .post(self.url("/v1/chat/completions"))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(body.into())
            .send()
            .await
            .expect("request")
    }

    /// `POST /v1/chat/completions` with the master key from a client that hangs up after
    /// `patience`, before any answer: fails the test if one comes sooner.
    pub async fn chat_abandoned(&self, body: Value, patience: std::time::Duration) {
        let sent = self
            .client
            .post(self.url("/v1/chat/completions"))
            .bearer_auth(KEY)
            .timeout(patience)
            .json(&body)
            .send()
            .await;
        assert!(
            sent.is_err_and(|e| e.is_timeout()),
            "answered within {patience:?}"
        );
    }

    /// `POST /v1/embeddings` with the master key.
    pub async fn embeddings(&self, body: Value) -> reqwest::Response {
        self.post("/v1/embeddings", body).await
    }

    /// `POST path` with the master key and a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    /// `GET path` with the master key; the body as text.
    pub async fn get_text(&self, path: &str) -> String {
        self.client
            .get(self.url(path))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("body")
    }

    /// The channel's entry in `GET /admin/channels` (breaker, failures, quota), or `null`.
    pub async fn channel_health(&self, id: &str) -> Value {
        let all: Value =
            serde_json::from_str(&self.get_text("/admin/channels").await).expect("json");
        all["data"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["id"] == id))
            .cloned()
            .unwrap_or_default()
    }

    /// Sends `body`; returns the status and the channel that answered (empty when none did).
    pub async fn status_and_channel(&self, body: Value) -> (u16, String) {
        let resp = self.chat(body).await;
        (resp.status().as_u16(), channel_of(&resp))
    }

    /// Sends `body`, requires a 200, and returns the channel that answered.
    pub async fn served_by(&self, body: Value) -> String {
        let resp = self.chat(body).await;
        let channel = channel_of(&resp);
        assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
        channel
    }

    /// The folder a strategy or adapter file goes in (`strategies` or `adapters`).
    pub fn components(&self, kind: &str) -> PathBuf {
        self.config.join("components").join(kind)
    }

    /// Replaces a file the way an editor or `cp` would not: atomically, so the watcher never sees
    /// half a file.
    pub fn write_atomic(&self, path: &Path, bytes: &[u8]) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).expect("write tmp");
        std::fs::rename(&tmp, path).expect("rename");
    }

    /// Waits until every usage record so far is in the database.
    pub async fn flush(&self) {
        self.app.usage.flush().await;
    }

    pub async fn rows(&self, sql: &str) -> Vec<sqlx::any::AnyRow> {
        self.flush().await;
        sqlx::query(sql)
            .fetch_all(self.app.store.pool())
            .await
            .expect("query")
    }

    /// Polls `f` until it returns true or `timeout` passes.
    pub async fn eventually<F, Fut>(&self, timeout: Duration, mut f: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if f().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    }

    /// Graceful shutdown (drain, flush usage); the folder stays until the value is dropped.
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A providers.yaml with one OpenAI-compatible provider `up` at `base_url` serving `models`
/// (channel ids `up/<model>`), each with `priority` in list order.
pub fn one_provider(base_url: &str, models: &[&str]) -> String {
    let mut s = format!(
        "providers:\n  up:\n    adapter: openai\n    base_url: {base_url}\n    api_key: sk-upstream-secret-0123456789\n    channels:\n"
    );
    for (i, m) in models.iter().enumerate() {
        s.push_str(&format!("      - {{ model: {m}, priority: {} }}\n", i + 1));
    }
    s
}
