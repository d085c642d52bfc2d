//! Channels: defined in `providers.yaml`, named (or, in the brief's form, created) by groups, and
//! their settings merged — a setting given twice with different values is an error.

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

use super::files::ChannelEntry;
use super::resolve::GROUPS;
use super::{Channel, ConfigError, Provider};

pub(super) fn new_channel(id: String, provider: String, model: String) -> Channel {
    Channel {
        id,
        provider,
        model,
        priority: 1,
        weight: 1.0,
        daily_limit: None,
        daily_token_limit: None,
        daily_cost_limit_micros: None,
        monthly_cost_limit_micros: None,
        input_cost_per_1k: 0.0,
        output_cost_per_1k: 0.0,
        cost_multiplier: 1.0,
        context_length: None,
        capabilities: None,
        disabled: None,
        separate_rate_limit: false,
        health_check: None,
    }
}

/// Finds (or, for the brief's inline form, creates) the channel a group entry names.
pub(super) fn group_channel(
    ch: &ChannelEntry,
    field: &str,
    providers: &HashMap<String, Arc<Provider>>,
    provider_off: &HashMap<String, Option<String>>,
    channels: &mut Vec<Channel>,
    index: &mut HashMap<String, usize>,
) -> Result<usize, ConfigError> {
    let idx = if let Some(id) = &ch.channel {
        *index.get(id).ok_or_else(|| {
            ConfigError::at(
                GROUPS,
                format!("{field}.channel"),
                format!("unknown channel `{id}`"),
            )
        })?
    } else {
        let provider = ch.provider.as_ref().ok_or_else(|| {
            ConfigError::at(
                GROUPS,
                field,
                "name a `channel`, or a `provider` and a `model`",
            )
        })?;
        let model = ch
            .model
            .as_ref()
            .ok_or_else(|| ConfigError::at(GROUPS, field, "missing field `model`"))?;
        let id = ch
            .id
            .clone()
            .unwrap_or_else(|| format!("{provider}/{model}"));
        match index.get(&id) {
            Some(&i) => i,
            None => {
                if !providers.contains_key(provider) {
                    return Err(ConfigError::at(
                        GROUPS,
                        format!("{field}.provider"),
                        format!("unknown provider `{provider}` (define it in providers.yaml)"),
                    ));
                }
                let mut channel = new_channel(id.clone(), provider.clone(), model.clone());
                // A provider's state (disabled, key missing) applies to channels declared here too.
                channel.disabled = provider_off.get(provider).cloned().flatten();
                index.insert(id, channels.len());
                channels.push(channel);
                channels.len() - 1
            }
        }
    };
    // Settings a group entry adds to the channel (priority and weight are the group's own).
    let mut extra = ch.clone();
    extra.priority = None;
    extra.weight = None;
    merge(&mut channels[idx], &extra, field)?;
    Ok(idx)
}

/// Applies a channel definition's settings.
pub(super) fn apply(
    channel: &mut Channel,
    ch: &ChannelEntry,
    file: &str,
    field: &str,
) -> Result<(), ConfigError> {
    if let Some(p) = ch.priority {
        channel.priority = p;
    }
    if let Some(w) = ch.weight {
        if !(w.is_finite() && w > 0.0) {
            return Err(ConfigError::at(
                file,
                format!("{field}.weight"),
                "must be a positive number",
            ));
        }
        channel.weight = w;
    }
    merge(channel, ch, field).map_err(|mut e| {
        e.file = file.to_string();
        e
    })
}

/// Adds settings to a channel; a setting given twice with different values is an error.
fn merge(channel: &mut Channel, ch: &ChannelEntry, field: &str) -> Result<(), ConfigError> {
    fn price(field: &str, name: &str, v: Option<f64>) -> Result<Option<f64>, ConfigError> {
        match v {
            Some(x) if !(x.is_finite() && x >= 0.0) => Err(ConfigError::at(
                GROUPS,
                format!("{field}.{name}"),
                "must be a number ≥ 0",
            )),
            other => Ok(other),
        }
    }
    let conflict = |name: &str| {
        ConfigError::at(
            GROUPS,
            format!("{field}.{name}"),
            format!(
                "channel `{}` already sets {name} to a different value; set it in one place",
                channel.id
            ),
        )
    };
    if let Some(w) = ch.weight
        && !(w.is_finite() && w > 0.0)
    {
        return Err(ConfigError::at(
            GROUPS,
            format!("{field}.weight"),
            "must be a positive number",
        ));
    }
    if let Some(v) = ch.daily_limit {
        if channel.daily_limit.is_some_and(|x| x != v) {
            return Err(conflict("daily_limit"));
        }
        channel.daily_limit = Some(v);
    }
    if let Some(v) = ch.daily_token_limit {
        if channel.daily_token_limit.is_some_and(|x| x != v) {
            return Err(conflict("daily_token_limit"));
        }
        channel.daily_token_limit = Some(v);
    }
    if let Some(v) = price(field, "daily_cost_limit", ch.daily_cost_limit)? {
        let micros = (v * 1_000_000.0).round() as u64;
        if channel.daily_cost_limit_micros.is_some_and(|x| x != micros) {
            return Err(conflict("daily_cost_limit"));
        }
        channel.daily_cost_limit_micros = Some(micros);
    }
    if let Some(v) = price(field, "monthly_cost_limit", ch.monthly_cost_limit)? {
        let micros = (v * 1_000_000.0).round() as u64;
        if channel
            .monthly_cost_limit_micros
            .is_some_and(|x| x != micros)
        {
            return Err(conflict("monthly_cost_limit"));
        }
        channel.monthly_cost_limit_micros = Some(micros);
    }
    if let Some(v) = price(field, "input_cost_per_1k", ch.input_cost_per_1k)? {
        channel.input_cost_per_1k = v;
    }
    if let Some(v) = price(field, "output_cost_per_1k", ch.output_cost_per_1k)? {
        channel.output_cost_per_1k = v;
    }
    if let Some(v) = price(field, "cost_multiplier", ch.cost_multiplier)? {
        channel.cost_multiplier = v;
    }
    if let Some(v) = ch.context_length {
        if channel.context_length.is_some_and(|x| x != v) {
            return Err(conflict("context_length"));
        }
        channel.context_length = Some(v);
    }
    if let Some(v) = &ch.capabilities {
        if channel.capabilities.as_ref().is_some_and(|x| x != v) {
            return Err(conflict("capabilities"));
        }
        channel.capabilities = Some(v.clone());
    }
    if ch.enabled == Some(false) {
        channel.disabled = Some("disabled in the configuration".into());
    }
    if let Some(v) = ch.separate_rate_limit {
        channel.separate_rate_limit = v;
    }
    if let Some(v) = ch.health_check {
        channel.health_check = Some(v);
    }
    Ok(())
}
