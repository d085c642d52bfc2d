//! Turns the parsed files into a validated [`Config`].

use std::collections::BTreeMap;

use rustc_hash::FxHashMap as HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::channels::{apply, group_channel, new_channel};
use super::files::{GroupsFile, PricingFile, ProvidersFile, SystemFile};
use super::{Channel, Config, ConfigError, CorsOrigins, Group, Member, Provider, Secret, System};

pub(super) const PROVIDERS: &str = "providers.yaml";
pub(super) const GROUPS: &str = "model_groups.yaml";
const SYSTEM: &str = "system.yaml";

/// Validates and resolves parsed files. `env` looks up `${VAR}` references.
pub fn resolve(
    dir: &Path,
    providers_file: ProvidersFile,
    groups_file: GroupsFile,
    system_file: SystemFile,
    pricing: PricingFile,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let system = system(dir, system_file)?;
    let mut warnings = Vec::new();
    let mut providers = HashMap::default();
    let mut channels: Vec<Channel> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::default();
    // Why each provider's channels are out of rotation, if they are.
    let mut provider_off: HashMap<String, Option<String>> = HashMap::default();

    for (name, entry) in providers_file.providers {
        let at = |field: &str| format!("providers.{name}.{field}");
        check_name(PROVIDERS, &at("adapter"), &entry.adapter)?;
        let base_url =
            expand(PROVIDERS, &at("base_url"), &entry.base_url, env)?.ok_or_else(|| {
                ConfigError::at(
                    PROVIDERS,
                    at("base_url"),
                    "references an environment variable that is not set",
                )
            })?;
        if !(base_url.starts_with("http://")
            || base_url.starts_with("https://")
            || base_url.starts_with("mock://"))
        {
            return Err(ConfigError::at(
                PROVIDERS,
                at("base_url"),
                format!("`{base_url}` must start with http://, https:// or mock://"),
            ));
        }
        let mut key_missing = None;
        let api_key = match &entry.api_key {
            None => None,
            Some(raw) => match expand(PROVIDERS, &at("api_key"), raw, env)? {
                Some(v) if !v.is_empty() => Some(Secret::new(v)),
                Some(_) => None,
                None => {
                    key_missing = Some(format!(
                        "provider `{name}`: its api_key references an environment variable that is not set; its channels are disabled"
                    ));
                    None
                }
            },
        };
        if let Some(w) = &key_missing {
            warnings.push(w.clone());
        }
        let options = entry.options.unwrap_or_else(|| serde_json::json!({}));
        if !options.is_object() {
            return Err(ConfigError::at(
                PROVIDERS,
                at("options"),
                "must be a mapping",
            ));
        }
        let off = if !entry.enabled {
            Some("its provider is disabled".to_string())
        } else {
            key_missing.map(|_| "its provider's api_key is not set".to_string())
        };
        provider_off.insert(name.clone(), off.clone());
        for (i, ch) in entry.channels.iter().enumerate() {
            let field = format!("providers.{name}.channels[{i}]");
            if ch.channel.is_some() {
                return Err(ConfigError::at(
                    PROVIDERS,
                    format!("{field}.channel"),
                    "only group entries name a channel; define it with `model`",
                ));
            }
            if ch.provider.as_ref().is_some_and(|p| p != &name) {
                return Err(ConfigError::at(
                    PROVIDERS,
                    format!("{field}.provider"),
                    "a channel belongs to the provider it is listed under",
                ));
            }
            let model = ch
                .model
                .clone()
                .ok_or_else(|| ConfigError::at(PROVIDERS, &field, "missing field `model`"))?;
            let id = ch.id.clone().unwrap_or_else(|| format!("{name}/{model}"));
            if index.contains_key(&id) {
                return Err(ConfigError::at(
                    PROVIDERS,
                    format!("{field}.id"),
                    format!("channel `{id}` is defined twice"),
                ));
            }
            let mut channel = new_channel(id.clone(), name.clone(), model);
            apply(&mut channel, ch, PROVIDERS, &field)?;
            if channel.disabled.is_none() {
                channel.disabled = off.clone();
            }
            index.insert(id, channels.len());
            channels.push(channel);
        }
        providers.insert(
            name.clone(),
            Arc::new(Provider {
                name: name.clone(),
                adapter: entry.adapter,
                base_url: base_url.trim_end_matches('/').to_string(),
                api_key,
                options_json: options.to_string(),
                timeout: entry
                    .timeout_secs
                    .map(Duration::from_secs)
                    .unwrap_or(system.request_timeout),
            }),
        );
    }

    let mut groups = BTreeMap::new();
    for (name, entry) in groups_file.model_groups {
        let at = |field: &str| format!("model_groups.{name}.{field}");
        let strategy = entry
            .strategy
            .unwrap_or_else(|| system.default_strategy.clone());
        check_name(GROUPS, &at("strategy"), &strategy)?;
        let mut params = entry.strategy_params.unwrap_or_default();
        if let Some(rs) = entry.routing_strategy {
            if !rs.is_array() {
                return Err(ConfigError::at(
                    GROUPS,
                    at("routing_strategy"),
                    "must be a list of {field, order, weight}",
                ));
            }
            params.insert("routing_strategy".into(), rs);
        }
        if let Some(p) = &entry.filters.providers {
            for (i, prov) in p.iter().enumerate() {
                if !providers.contains_key(prov) {
                    return Err(ConfigError::at(
                        GROUPS,
                        at(&format!("filters.providers[{i}]")),
                        format!("unknown provider `{prov}`"),
                    ));
                }
            }
        }
        let members = match entry.channels {
            None => (0..channels.len())
                .map(|i| Member {
                    channel: i,
                    priority: channels[i].priority,
                    weight: channels[i].weight,
                })
                .collect(),
            Some(list) => {
                let mut members: Vec<Member> = Vec::with_capacity(list.len());
                for (i, ch) in list.iter().enumerate() {
                    let field = at(&format!("channels[{i}]"));
                    let idx = group_channel(
                        ch,
                        &field,
                        &providers,
                        &provider_off,
                        &mut channels,
                        &mut index,
                    )?;
                    if members.iter().any(|m| m.channel == idx) {
                        return Err(ConfigError::at(
                            GROUPS,
                            &field,
                            format!("channel `{}` is listed twice", channels[idx].id),
                        ));
                    }
                    members.push(Member {
                        channel: idx,
                        priority: ch.priority.unwrap_or(channels[idx].priority),
                        weight: ch.weight.unwrap_or(channels[idx].weight),
                    });
                }
                members
            }
        };
        groups.insert(
            name.clone(),
            Group {
                name: name.clone(),
                display_name: entry.display_name,
                description: entry.description,
                strategy,
                params_json: serde_json::Value::Object(params).to_string(),
                filters: entry.filters,
                budget: budget_limits(&name, entry.budget)?,
                members,
                cache_ttl_secs: entry.cache.map(|c| c.ttl_secs),
            },
        );
    }

    let mut models: BTreeMap<String, Vec<Member>> = BTreeMap::new();
    for (i, ch) in channels.iter().enumerate() {
        let member = Member {
            channel: i,
            priority: ch.priority,
            weight: ch.weight,
        };
        models.entry(ch.model.clone()).or_default().push(member);
        if ch.id != ch.model {
            models.entry(ch.id.clone()).or_default().push(member);
        }
    }

    let policies = pricing
        .pricing_policies
        .into_iter()
        .enumerate()
        .map(|(i, p)| crate::pricing::Policy::parse(i, p))
        .collect::<Result<Vec<_>, _>>()?;
    let clock = crate::quota::DayClock::new(system.timezone.clone());
    Ok(Config {
        dir: dir.to_path_buf(),
        system,
        providers,
        channels: channels.into_iter().map(Arc::new).collect(),
        groups,
        models,
        policies,
        clock,
        warnings,
    })
}

fn budget_limits(
    group: &str,
    b: Option<super::files::BudgetEntry>,
) -> Result<crate::budget::Limits, ConfigError> {
    let Some(b) = b else {
        return Ok(crate::budget::Limits::default());
    };
    let micros = |v: Option<f64>, period: &str| -> Result<Option<u64>, ConfigError> {
        match v {
            Some(x) if !(x.is_finite() && x >= 0.0) => Err(ConfigError::at(
                GROUPS,
                format!("model_groups.{group}.budget.{period}"),
                "must be a number ≥ 0 (US dollars)",
            )),
            Some(x) => Ok(Some((x * 1_000_000.0).round() as u64)),
            None => Ok(None),
        }
    };
    Ok(crate::budget::Limits {
        daily_micros: micros(b.daily, "daily")?,
        monthly_micros: micros(b.monthly, "monthly")?,
    })
}

/// `server.cors_origins`: `*` alone, or origins written as browsers send them.
fn cors_origins(list: Option<&[String]>) -> Result<CorsOrigins, ConfigError> {
    let Some(list) = list else {
        return Ok(CorsOrigins::Any);
    };
    if list.iter().any(|o| o == "*") {
        if list.len() > 1 {
            return Err(ConfigError::at(
                SYSTEM,
                "server.cors_origins",
                "`*` allows every origin: list it alone",
            ));
        }
        return Ok(CorsOrigins::Any);
    }
    for origin in list {
        let rest = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        let ok = rest.is_some_and(|host| {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        });
        if !ok {
            return Err(ConfigError::at(
                SYSTEM,
                "server.cors_origins",
                format!(
                    "`{origin}` is not an origin: write it as a browser sends it, \
                     `https://host` or `http://host:port`, with no path or trailing slash"
                ),
            ));
        }
    }
    // Browsers send the scheme and host in lower case.
    Ok(CorsOrigins::List(
        list.iter().map(|o| o.to_ascii_lowercase()).collect(),
    ))
}

/// `server.idle_spin_us` when unset.
pub const DEFAULT_IDLE_SPIN_US: u64 = 200;
const MAX_IDLE_SPIN_US: u64 = 10_000;

fn system(dir: &Path, f: SystemFile) -> Result<System, ConfigError> {
    let components_dir = dir.join(f.components_dir.as_deref().unwrap_or("components"));
    let default_strategy = f
        .routing
        .default_strategy
        .unwrap_or_else(|| "weighted-sort".into());
    check_name(SYSTEM, "routing.default_strategy", &default_strategy)?;
    let max_attempts = f.routing.max_attempts.unwrap_or(4);
    if max_attempts == 0 {
        return Err(ConfigError::at(
            SYSTEM,
            "routing.max_attempts",
            "must be at least 1",
        ));
    }
    let cors_origins = cors_origins(f.server.cors_origins.as_deref())?;
    let timeout_ms = f.components.timeout_ms.unwrap_or(100);
    if timeout_ms == 0 {
        return Err(ConfigError::at(
            SYSTEM,
            "components.timeout_ms",
            "must be at least 1",
        ));
    }
    let timezone = match f.quota.timezone.as_deref() {
        None | Some("UTC") => jiff::tz::TimeZone::UTC,
        Some(name) => jiff::tz::TimeZone::get(name).map_err(|e| {
            ConfigError::at(
                SYSTEM,
                "quota.timezone",
                format!("`{name}` is not a known time zone: {e}"),
            )
        })?,
    };
    let idle_spin_us = f.server.idle_spin_us.unwrap_or(DEFAULT_IDLE_SPIN_US);
    if idle_spin_us > MAX_IDLE_SPIN_US {
        return Err(ConfigError::at(
            SYSTEM,
            "server.idle_spin_us",
            format!(
                "must be at most {MAX_IDLE_SPIN_US} (10 ms): a serving thread burns its CPU for \
                 that long after each request; 0 turns spinning off"
            ),
        ));
    }
    let cache_max_mb = f.cache.max_mb.unwrap_or(64);
    if cache_max_mb > 1 << 20 {
        return Err(ConfigError::at(
            SYSTEM,
            "cache.max_mb",
            "must be at most 1048576 (1 TiB)",
        ));
    }
    Ok(System {
        cache_ttl_secs: f.cache.ttl_secs.unwrap_or(0),
        cache_max_bytes: (cache_max_mb as usize) << 20,
        durable_usage: f.usage.durable,
        timezone,
        health_interval: f
            .health_checks
            .interval_secs
            .filter(|s| *s > 0)
            .map(Duration::from_secs),
        health_include_paid: f.health_checks.include_paid,
        listen: f.server.listen,
        max_body_bytes: f.server.max_body_bytes.unwrap_or(16 << 20),
        header_read_timeout: Duration::from_secs(
            f.server.header_read_timeout_secs.unwrap_or(10).max(1),
        ),
        shutdown_grace: Duration::from_secs(f.server.shutdown_grace_secs.unwrap_or(25)),
        idle_spin: Duration::from_micros(idle_spin_us),
        cors_origins,
        components_dir,
        component_timeout: Duration::from_millis(timeout_ms),
        component_memory_bytes: (f.components.memory_limit_mb.unwrap_or(64) as usize) << 20,
        default_strategy,
        max_attempts,
        connect_timeout: Duration::from_millis(f.upstream.connect_timeout_ms.unwrap_or(5_000)),
        first_byte_timeout: Duration::from_secs(f.upstream.first_byte_timeout_secs.unwrap_or(60)),
        request_timeout: Duration::from_secs(f.upstream.timeout_secs.unwrap_or(600)),
        max_response_bytes: f.upstream.max_response_bytes.unwrap_or(32 << 20),
    })
}

/// Component names are file names: letters, digits, `-` and `_`.
fn check_name(file: &str, field: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ConfigError::at(
            file,
            field,
            format!("`{name}` is not a component name (letters, digits, - and _)"),
        ));
    }
    Ok(())
}

/// Expands `${VAR}` references. `Ok(None)`: a referenced variable is not set.
fn expand(
    file: &str,
    field: &str,
    raw: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, ConfigError> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| ConfigError::at(file, field, "unclosed `${`"))?;
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(ConfigError::at(
                file,
                field,
                format!("`${{{name}}}` is not an environment variable name"),
            ));
        }
        match env(name) {
            Some(v) => out.push_str(&v),
            None => return Ok(None),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::channels::new_channel;
    use crate::config::parse_str;

    fn load(providers: &str, groups: &str) -> Result<Config, ConfigError> {
        let p: ProvidersFile = parse_str(PROVIDERS, providers)?;
        let g: GroupsFile = parse_str(GROUPS, groups)?;
        resolve(
            Path::new("/cfg"),
            p,
            g,
            SystemFile::default(),
            PricingFile::default(),
            &|n| (n == "SET").then(|| "sk-123".to_string()),
        )
    }

    #[test]
    fn cors_origins_are_star_alone_or_origins_as_browsers_send_them() {
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(cors_origins(None).expect("default"), CorsOrigins::Any);
        assert_eq!(
            cors_origins(Some(&list(&["*"]))).expect("star"),
            CorsOrigins::Any
        );
        assert_eq!(
            cors_origins(Some(&[])).expect("none"),
            CorsOrigins::List(Vec::new())
        );
        let ok = list(&[
            "https://chat.example.com",
            "http://localhost:3000",
            "http://[::1]:8080",
        ]);
        assert_eq!(
            cors_origins(Some(&ok)).expect("origins"),
            CorsOrigins::List(ok)
        );
        assert_eq!(
            cors_origins(Some(&list(&["https://Chat.Example.com"]))).expect("mixed case"),
            CorsOrigins::List(list(&["https://chat.example.com"]))
        );
        for bad in [
            &["https://chat.example.com/"][..],
            &["https://chat.example.com/app"],
            &["chat.example.com"],
            &["https://"],
            &["ftp://example.com"],
            &["*", "https://chat.example.com"],
        ] {
            let e = cors_origins(Some(&list(bad)))
                .expect_err("refused")
                .to_string();
            assert!(e.contains("server.cors_origins"), "{bad:?}: {e}");
        }
    }

    const BRIEF: &str = r#"
model_groups:
  auto:free:
    display_name: "免费模型组"
    routing_strategy:
      - field: "effective_cost"
        order: "asc"
        weight: 1.0
    filters:
      max_cost_per_1k: 0.0
      min_context_length: 4000
    channels:
      - provider: "groq"
        model: "llama-3.1-8b-instant"
        priority: 1
        weight: 1.5
        daily_limit: 1000
      - provider: "openrouter"
        model: "meta-llama/llama-3.1-8b-instruct:free"
        priority: 2
        weight: 1.0
        daily_limit: 1000
"#;

    #[test]
    fn the_briefs_group_example_loads_as_written() {
        let cfg = load(
            "providers:\n  groq: {adapter: openai, base_url: 'https://api.groq.com/openai/v1', api_key: '${SET}'}\n  openrouter: {adapter: openai, base_url: 'https://openrouter.ai/api/v1', api_key: '${UNSET}'}\n",
            BRIEF,
        )
        .expect("loads");
        let g = &cfg.groups["auto:free"];
        assert_eq!(g.members.len(), 2);
        assert_eq!(g.members[0].weight, 1.5);
        assert_eq!(cfg.channels[g.members[1].channel].daily_limit, Some(1000));
        assert!(g.params_json.contains("effective_cost"));
        assert!(
            cfg.channels[g.members[1].channel].disabled.is_some(),
            "unset key disables"
        );
        assert!(cfg.channels[g.members[0].channel].disabled.is_none());
        assert_eq!(cfg.warnings.len(), 1);
    }

    #[test]
    fn errors_point_at_file_and_field() {
        let e = load("providers:\n  groq: {adapter: openai, base_url: 'https://x', channels: [{model: m, daily_limt: 3}]}\n", "")
            .expect_err("typo refused");
        let text = e.to_string();
        assert!(
            text.starts_with("providers.yaml: providers.groq.channels[0]"),
            "{text}"
        );
        assert!(text.contains("daily_limt"), "{text}");

        let e = load("providers: {}", BRIEF).expect_err("unknown provider");
        assert_eq!(e.file, "model_groups.yaml");
        assert!(
            e.location
                .contains("model_groups.auto:free.channels[0].provider"),
            "{e}"
        );
    }

    #[test]
    fn idle_spin_defaults_on_can_be_turned_off_and_is_bounded() {
        let sys = |yaml: &str| {
            let f: SystemFile = parse_str(SYSTEM, yaml)?;
            system(Path::new("/cfg"), f)
        };
        assert_eq!(
            sys("{}").expect("default").idle_spin,
            Duration::from_micros(DEFAULT_IDLE_SPIN_US)
        );
        assert_eq!(
            sys("server: {idle_spin_us: 0}").expect("off").idle_spin,
            Duration::ZERO
        );
        assert_eq!(
            sys("server: {idle_spin_us: 10000}").expect("max").idle_spin,
            Duration::from_millis(10)
        );
        let e = sys("server: {idle_spin_us: 10001}").expect_err("too long");
        assert!(
            e.to_string()
                .starts_with("system.yaml: server.idle_spin_us: must be at most 10000"),
            "{e}"
        );
        assert!(sys("server: {idle_spin_us: -1}").is_err());
    }

    #[test]
    fn conflicting_settings_are_refused() {
        let e = load(
            "providers:\n  p: {adapter: openai, base_url: 'http://x', channels: [{model: m, daily_limit: 5}]}\n",
            "model_groups:\n  g: {channels: [{provider: p, model: m, daily_limit: 6}]}\n",
        )
        .expect_err("conflict");
        assert!(e.to_string().contains("daily_limit"), "{e}");
    }

    #[test]
    fn cost_is_exact_micro_dollars() {
        let mut ch = new_channel("a".into(), "p".into(), "m".into());
        ch.input_cost_per_1k = 0.15;
        ch.output_cost_per_1k = 0.6;
        // (1000*0.15 + 500*0.6)/1000 * 0.5 = 0.225 $
        assert_eq!(ch.cost_micros(1000, 500, 0.5), 225_000);
    }
}
