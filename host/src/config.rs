//! Configuration: the YAML folder read, validated and resolved into an immutable [`Config`].
//!
//! Everything a reload checks is checked here, so `smart-router check` and a hot reload agree.

mod channels;
pub mod files;
mod resolve;

use std::collections::BTreeMap;

use rustc_hash::FxHashMap as HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use files::{Capability, Filters};
pub use resolve::resolve;

/// A configuration error, pointing at a file and, where known, a field.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {location}{message}")]
pub struct ConfigError {
    pub file: String,
    /// `field.path: ` or `line N column M: `, or empty.
    pub location: String,
    pub message: String,
}

impl ConfigError {
    pub fn at(file: &str, field: impl AsRef<str>, message: impl Into<String>) -> Self {
        let field = field.as_ref();
        ConfigError {
            file: file.to_string(),
            location: if field.is_empty() {
                String::new()
            } else {
                format!("{field}: ")
            },
            message: message.into(),
        }
    }
}

/// A secret (provider key). Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    /// The value, for injecting into an outgoing request and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Which browser origins may call the gateway (`server.cors_origins`).
#[derive(Debug, Clone, PartialEq)]
pub enum CorsOrigins {
    /// Any page (`*`): keys are bearer tokens a page must send itself, never cookies.
    Any,
    /// These origins exactly (`scheme://host[:port]`); empty: none.
    List(Vec<String>),
}

/// Process-wide settings from `system.yaml`, with defaults filled in.
#[derive(Debug, Clone)]
pub struct System {
    pub listen: Option<String>,
    pub max_body_bytes: usize,
    pub header_read_timeout: Duration,
    /// How long a shutdown waits for in-flight requests before cutting them off.
    pub shutdown_grace: Duration,
    /// How long a serving thread polls without sleeping after a request begins (zero: never).
    pub idle_spin: Duration,
    /// Origins whose browser pages may call the gateway.
    pub cors_origins: CorsOrigins,
    pub components_dir: PathBuf,
    pub component_timeout: Duration,
    pub component_memory_bytes: usize,
    pub default_strategy: String,
    pub max_attempts: usize,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub request_timeout: Duration,
    pub max_response_bytes: usize,
    /// Whose midnight resets daily limits and whose clock pricing windows read.
    pub timezone: jiff::tz::TimeZone,
    /// Usage rows are committed before the response is sent.
    pub durable_usage: bool,
    /// Time between active health-check rounds; `None`: off.
    pub health_interval: Option<Duration>,
    pub health_include_paid: bool,
    /// Seconds answers are cached for models and groups without their own setting (0: off).
    pub cache_ttl_secs: u64,
    pub cache_max_bytes: usize,
}

/// A provider account.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub adapter: String,
    /// Without a trailing slash.
    pub base_url: String,
    pub api_key: Option<Secret>,
    /// The adapter's `options`, serialised once.
    pub options_json: String,
    pub timeout: Duration,
}

/// One way to reach one model.
#[derive(Debug, Clone)]
pub struct Channel {
    pub id: String,
    pub provider: String,
    pub model: String,
    pub priority: u32,
    pub weight: f64,
    pub daily_limit: Option<u64>,
    pub daily_token_limit: Option<u64>,
    pub daily_cost_limit_micros: Option<u64>,
    pub monthly_cost_limit_micros: Option<u64>,
    pub input_cost_per_1k: f64,
    pub output_cost_per_1k: f64,
    pub cost_multiplier: f64,
    pub context_length: Option<u32>,
    /// `None`: not declared (unknown, never filtered out); `Some`: exactly these.
    pub capabilities: Option<Vec<Capability>>,
    /// Why the channel is out of rotation, if it is.
    pub disabled: Option<String>,
    /// A 429 on a sibling channel does not cool this one down.
    pub separate_rate_limit: bool,
    /// Explicit opt-in or opt-out of active health checks.
    pub health_check: Option<bool>,
}

impl Channel {
    /// The blended price per 1,000 tokens routing compares, under price factor `multiplier`
    /// (the channel's `cost_multiplier` times the pricing policies that apply).
    pub fn effective_cost_per_1k(&self, multiplier: f64) -> f64 {
        (self.input_cost_per_1k + self.output_cost_per_1k) / 2.0 * multiplier
    }

    /// Cost of one call in micro-dollars under price factor `multiplier`.
    pub fn cost_micros(&self, prompt_tokens: u64, completion_tokens: u64, multiplier: f64) -> i64 {
        let dollars = (prompt_tokens as f64 * self.input_cost_per_1k
            + completion_tokens as f64 * self.output_cost_per_1k)
            / 1000.0
            * multiplier;
        (dollars * 1_000_000.0).round() as i64
    }

    /// True when the channel has any daily limit.
    pub fn has_daily_limits(&self) -> bool {
        self.daily_limit.is_some()
            || self.daily_token_limit.is_some()
            || self.daily_cost_limit_micros.is_some()
    }

    /// An embeddings model, which serves `/v1/embeddings` only: it must say so.
    pub fn is_embeddings(&self) -> bool {
        self.capabilities
            .as_ref()
            .is_some_and(|caps| caps.contains(&Capability::Embeddings))
    }

    pub fn has(&self, capability: Capability) -> bool {
        self.capabilities
            .as_ref()
            .is_none_or(|caps| caps.contains(&capability))
    }
}

/// A channel's membership in a group or model list.
#[derive(Debug, Clone, Copy)]
pub struct Member {
    /// Index into [`Config::channels`].
    pub channel: usize,
    pub priority: u32,
    pub weight: f64,
}

/// A model group.
#[derive(Debug)]
pub struct Group {
    pub name: String,
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub strategy: String,
    /// Strategy parameters as a JSON object, serialised once.
    pub params_json: String,
    pub filters: Filters,
    pub budget: crate::budget::Limits,
    pub members: Vec<Member>,
    /// The group's own cache lifetime in seconds (0: off); `None` follows `system.yaml`.
    pub cache_ttl_secs: Option<u64>,
}

impl Config {
    /// How long answers to `model` (a group or a plain model name) are cached, if at all.
    pub fn cache_ttl_secs(&self, model: &str) -> Option<u64> {
        let own = self.groups.get(model).and_then(|g| g.cache_ttl_secs);
        Some(own.unwrap_or(self.system.cache_ttl_secs)).filter(|&t| t > 0)
    }
}

/// The whole resolved configuration. Immutable; a reload builds a new one.
#[derive(Debug)]
pub struct Config {
    pub dir: PathBuf,
    pub system: System,
    pub providers: HashMap<String, Arc<Provider>>,
    /// Shared: an attempt holds its channel without copying it.
    pub channels: Vec<Arc<Channel>>,
    pub groups: BTreeMap<String, Group>,
    /// Plain model names (and channel ids) clients may ask for, with the channels serving them.
    pub models: BTreeMap<String, Vec<Member>>,
    /// Pricing policies, in file order.
    pub policies: Vec<crate::pricing::Policy>,
    /// Local days in `system.timezone`.
    pub clock: crate::quota::DayClock,
    /// Things that load but deserve a look (a key that is not set, …).
    pub warnings: Vec<String>,
}

/// The files of a configuration folder.
pub const FILES: [&str; 4] = [
    "providers.yaml",
    "model_groups.yaml",
    "system.yaml",
    "pricing_policies.yaml",
];

/// Reads and validates the configuration folder `dir`.
pub fn load(dir: &Path) -> Result<Config, ConfigError> {
    let providers: files::ProvidersFile = parse(dir, "providers.yaml")?;
    let groups: files::GroupsFile = parse(dir, "model_groups.yaml")?;
    let system: files::SystemFile = parse(dir, "system.yaml")?;
    let pricing: files::PricingFile = parse(dir, "pricing_policies.yaml")?;
    resolve(dir, providers, groups, system, pricing, &|name| {
        std::env::var(name).ok()
    })
}

fn parse<T: serde::de::DeserializeOwned + Default>(
    dir: &Path,
    file: &str,
) -> Result<T, ConfigError> {
    let path = dir.join(file);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(T::default()),
        Err(e) => {
            return Err(ConfigError::at(
                file,
                "",
                format!("cannot read {}: {e}", path.display()),
            ));
        }
    };
    parse_str(file, &text)
}

/// Parses one file's text; errors name the field path and the line.
pub fn parse_str<T: serde::de::DeserializeOwned + Default>(
    file: &str,
    text: &str,
) -> Result<T, ConfigError> {
    if text.trim().is_empty()
        || text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Ok(T::default());
    }
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let line = inner
            .location()
            .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
            .unwrap_or_default();
        let field = if path == "." { String::new() } else { path };
        ConfigError::at(file, field, format!("{inner}{line}"))
    })
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    /// The example configuration, as shipped.
    fn shipped(file: &str) -> String {
        std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../config")
                .join(file),
        )
        .expect("example config")
    }

    /// One edit a careless hand (or a bad merge) might make.
    #[derive(Debug, Clone)]
    enum Edit {
        Delete { at: usize, len: usize },
        Insert { at: usize, text: String },
        DropLine(usize),
        Dedent(usize),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            (any::<usize>(), 0usize..40).prop_map(|(at, len)| Edit::Delete { at, len }),
            (
                any::<usize>(),
                "[ -~\\n\\t]{0,20}|: |- |\\{|\\[|&a|\\*a|!!binary |~|1e999|-1"
            )
                .prop_map(|(at, text)| Edit::Insert { at, text }),
            any::<usize>().prop_map(Edit::DropLine),
            any::<usize>().prop_map(Edit::Dedent),
        ]
    }

    fn apply(text: &str, edits: &[Edit]) -> String {
        let mut s = text.to_string();
        for e in edits {
            let boundary = |s: &str, at: usize| {
                let mut at = at % (s.len() + 1);
                while !s.is_char_boundary(at) {
                    at -= 1;
                }
                at
            };
            match e {
                Edit::Delete { at, len } => {
                    let from = boundary(&s, *at);
                    let to = boundary(&s, from.saturating_add(*len).min(s.len()));
                    s.replace_range(from..to.max(from), "");
                }
                Edit::Insert { at, text } => {
                    let at = boundary(&s, *at);
                    s.insert_str(at, text);
                }
                Edit::DropLine(n) | Edit::Dedent(n) => {
                    let mut lines: Vec<String> = s.lines().map(str::to_string).collect();
                    if lines.is_empty() {
                        continue;
                    }
                    let i = n % lines.len();
                    if matches!(e, Edit::DropLine(_)) {
                        lines.remove(i);
                    } else {
                        lines[i] = lines[i].trim_start().to_string();
                    }
                    s = lines.join("\n");
                }
            }
        }
        s
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(192))]

        /// A damaged configuration never panics the loader: it loads, or it is refused with an
        /// error naming the file it is in.
        #[test]
        fn damaged_configurations_are_refused_with_a_located_error(
            which in 0usize..4,
            edits in proptest::collection::vec(edit(), 1..4),
        ) {
            let files = super::FILES;
            let dir = std::env::temp_dir().join(format!(
                "smart-router-fuzz-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            ));
            std::fs::create_dir_all(&dir).expect("mkdir");
            for (i, file) in files.iter().enumerate() {
                let text = shipped(file);
                let text = if i == which { apply(&text, &edits) } else { text };
                std::fs::write(dir.join(file), text).expect("write");
            }
            let result = super::load(&dir);
            let _ = std::fs::remove_dir_all(&dir);
            if let Err(e) = result {
                prop_assert!(files.contains(&e.file.as_str()), "error names no file: {e}");
                prop_assert!(!e.message.is_empty());
            }
        }
    }
}
