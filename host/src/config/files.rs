//! The YAML files of a configuration folder, exactly as written (strict: unknown fields are refused).

use std::collections::BTreeMap;

use serde::Deserialize;

/// `providers.yaml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvidersFile {
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderEntry>,
}

/// One provider account: an adapter, a base URL and a key, and the channels it serves.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderEntry {
    /// The adapter component's name (its file name without `.wasm`).
    pub adapter: String,
    /// The upstream base URL; the adapter appends its own path. `mock://` is the built-in mock.
    pub base_url: String,
    /// The key, usually an environment reference such as `${GROQ_API_KEY}`.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Options passed to the adapter as JSON (for example `anthropic_version`).
    #[serde(default)]
    pub options: Option<serde_json::Value>,
    /// Whole-request timeout in seconds.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Set to false to take every channel of this provider out of rotation.
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub channels: Vec<ChannelEntry>,
}

impl std::fmt::Debug for ProviderEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderEntry")
            .field("adapter", &self.adapter)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}

fn yes() -> bool {
    true
}

/// Channel settings. In `providers.yaml` they define a channel; in a group's `channels` list they
/// name one (`provider` + `model`, or `channel`) and may add the settings it lacks.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelEntry {
    /// Channel id (default `provider/model`).
    #[serde(default)]
    pub id: Option<String>,
    /// In a group: the channel id to include.
    #[serde(default)]
    pub channel: Option<String>,
    /// In a group: the provider the channel belongs to.
    #[serde(default)]
    pub provider: Option<String>,
    /// The upstream model name.
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub priority: Option<u32>,
    #[serde(default)]
    pub weight: Option<f64>,
    /// Requests per local day.
    #[serde(default)]
    pub daily_limit: Option<u64>,
    /// Prompt + completion tokens per local day.
    #[serde(default)]
    pub daily_token_limit: Option<u64>,
    /// US dollars per local day.
    #[serde(default)]
    pub daily_cost_limit: Option<f64>,
    /// US dollars per local month.
    #[serde(default)]
    pub monthly_cost_limit: Option<f64>,
    /// Probe this channel on the `health_checks` schedule (default: free channels only).
    #[serde(default)]
    pub health_check: Option<bool>,
    #[serde(default)]
    pub input_cost_per_1k: Option<f64>,
    #[serde(default)]
    pub output_cost_per_1k: Option<f64>,
    #[serde(default)]
    pub cost_multiplier: Option<f64>,
    #[serde(default)]
    pub context_length: Option<u32>,
    #[serde(default)]
    pub capabilities: Option<Vec<Capability>>,
    #[serde(default)]
    pub enabled: Option<bool>,
    /// The channel has a rate limit of its own: a 429 on a sibling under the same provider entry
    /// does not park it (by default siblings share the account's limits).
    #[serde(default)]
    pub separate_rate_limit: Option<bool>,
}

/// What a channel's model can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    FunctionCalling,
    Vision,
    JsonMode,
    Reasoning,
    Code,
    Chinese,
    /// An embeddings model: serves `/v1/embeddings` (and never chat).
    Embeddings,
}

/// `model_groups.yaml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupsFile {
    #[serde(default)]
    pub model_groups: BTreeMap<String, GroupEntry>,
}

/// A virtual model name clients ask for.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupEntry {
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// The strategy component's name (default from `system.yaml`, `weighted-sort`).
    #[serde(default)]
    pub strategy: Option<String>,
    /// The brief's multi-field sort, passed to the strategy as `routing_strategy`.
    #[serde(default)]
    pub routing_strategy: Option<serde_json::Value>,
    /// Any other strategy parameters, passed to the strategy as a JSON object.
    #[serde(default)]
    pub strategy_params: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub filters: Filters,
    /// Spending limits for the whole group, in US dollars.
    #[serde(default)]
    pub budget: Option<BudgetEntry>,
    /// The channels of the group. Omitted: every channel, narrowed by `filters`.
    #[serde(default)]
    pub channels: Option<Vec<ChannelEntry>>,
    /// Answers kept for identical requests (default: `system.yaml`'s `cache`).
    #[serde(default)]
    pub cache: Option<GroupCache>,
}

/// A group's answer cache.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupCache {
    /// How long an answer is served again, in seconds; 0 turns the cache off for the group.
    pub ttl_secs: u64,
}

/// A budget in US dollars.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetEntry {
    #[serde(default)]
    pub daily: Option<f64>,
    #[serde(default)]
    pub monthly: Option<f64>,
}

/// Host-side filters applied before the strategy.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filters {
    /// Highest acceptable effective price per 1,000 tokens in US dollars (0 = free only).
    #[serde(default)]
    pub max_cost_per_1k: Option<f64>,
    /// Smallest acceptable context window (channels with an unknown one pass).
    #[serde(default)]
    pub min_context_length: Option<u32>,
    /// Capabilities every channel must declare.
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// Only these providers.
    #[serde(default)]
    pub providers: Option<Vec<String>>,
    /// Never these providers.
    #[serde(default)]
    pub exclude_providers: Vec<String>,
}

/// `system.yaml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemFile {
    #[serde(default)]
    pub server: ServerSection,
    /// Where `strategies/` and `adapters/` live; relative to the configuration folder.
    #[serde(default)]
    pub components_dir: Option<String>,
    #[serde(default)]
    pub components: ComponentsSection,
    #[serde(default)]
    pub routing: RoutingSection,
    #[serde(default)]
    pub upstream: UpstreamSection,
    #[serde(default)]
    pub quota: QuotaSection,
    #[serde(default)]
    pub health_checks: HealthChecksSection,
    #[serde(default)]
    pub usage: UsageSection,
    #[serde(default)]
    pub cache: CacheSection,
}

/// The answer cache (exact match, in memory, per instance).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    /// Keep answers this many seconds for every model and group without its own `cache`;
    /// omitted or 0: only groups that set one are cached.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// The most memory the cache may hold, in MiB (default 64).
    #[serde(default)]
    pub max_mb: Option<u64>,
}

/// Usage recording.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageSection {
    /// Answer a request only once its usage row is committed (group commit). Default false:
    /// rows are committed in the background, in batches gathered for 10 ms (up to 50 ms under
    /// heavy traffic).
    #[serde(default)]
    pub durable: bool,
}

/// Active health checks: a one-token request to each eligible channel on a schedule.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthChecksSection {
    /// Seconds between rounds; omitted or 0: off.
    #[serde(default)]
    pub interval_secs: Option<u64>,
    /// Probe paid channels too (by default only free ones, and those with `health_check: true`).
    #[serde(default)]
    pub include_paid: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSection {
    /// IANA time zone whose midnight resets daily limits and whose clock pricing windows use
    /// (default UTC).
    #[serde(default)]
    pub timezone: Option<String>,
}

/// `pricing_policies.yaml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingFile {
    #[serde(default)]
    pub pricing_policies: Vec<PolicyEntry>,
}

/// A rule that scales the effective price of matching channels while it applies.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyEntry {
    pub name: String,
    /// Channel ids it applies to (omitted: all, narrowed by `providers`).
    #[serde(default)]
    pub channels: Option<Vec<String>>,
    #[serde(default)]
    pub providers: Option<Vec<String>>,
    /// Local time of day `{start: "HH:MM", end: "HH:MM"}`; may wrap midnight.
    #[serde(default)]
    pub time_window: Option<TimeWindow>,
    /// Weekdays it applies on (`mon` … `sun`; omitted: every day).
    #[serde(default)]
    pub days: Option<Vec<String>>,
    /// Applies once the channel has used more than this share of its daily limit (0.0–1.0).
    #[serde(default)]
    pub quota_used_above: Option<f64>,
    /// Price factor while the policy applies.
    pub multiplier: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeWindow {
    pub start: String,
    pub end: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    #[serde(default)]
    pub listen: Option<String>,
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
    /// A client must send its request headers within this many seconds (default 10).
    #[serde(default)]
    pub header_read_timeout_secs: Option<u64>,
    /// On shutdown, how many seconds in-flight requests and streams get to finish (default 25,
    /// under the 30 a container orchestrator usually waits). Then they are cut off: each gets
    /// a `gateway_shutting_down` error and its usage row.
    #[serde(default)]
    pub shutdown_grace_secs: Option<u64>,
    /// Origins whose browser pages may call the gateway: `["*"]` (the default, as OpenAI's API),
    /// exact origins such as `https://chat.example.com`, or `[]` for none.
    #[serde(default)]
    pub cors_origins: Option<Vec<String>>,
    /// For this many microseconds after a request begins and after it is answered, its serving
    /// thread polls its sockets rather than sleeping, while at most two requests are in flight on
    /// it (default 200, at most 10000; 0: off). Cuts the latency of the next packet's wake-up, at
    /// the cost of CPU burnt for at most those windows. Read at start-up.
    #[serde(default)]
    pub idle_spin_us: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentsSection {
    /// Longest a component call may run, in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Most linear memory one component instance may use, in MiB.
    #[serde(default)]
    pub memory_limit_mb: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingSection {
    /// Strategy of groups that name none.
    #[serde(default)]
    pub default_strategy: Option<String>,
    /// Most channels tried for one request.
    #[serde(default)]
    pub max_attempts: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
    /// Longest wait for the response headers (and, for streams, the first event), in seconds.
    #[serde(default)]
    pub first_byte_timeout_secs: Option<u64>,
    /// Default whole-request timeout in seconds.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Largest upstream response body accepted, in bytes.
    #[serde(default)]
    pub max_response_bytes: Option<usize>,
}
