//! Routing: the model name to candidate channels, host-side filters, then the strategy's order.

use axum::http::StatusCode;
use std::collections::BTreeMap;

use serde_json::Value;
use serde_json::value::RawValue;

use crate::app::{App, Counters};
use crate::components::Components;
use crate::components::strategy_api::smart_router::gateway::types::{
    Candidate, Endpoint as WitEndpoint, Health, RequestInfo,
};
use crate::config::{Capability, Config, Member};
use crate::pricing::{self, Moment};
use crate::server::error::ApiError;
use crate::stats::{Breaker, now_ms};

/// The OpenAI API a request came in on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Endpoint {
    #[default]
    Chat,
    Embeddings,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Embeddings => "embeddings",
        }
    }
}

/// What the host reads off a request.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub endpoint: Endpoint,
    pub model: String,
    pub is_stream: bool,
    pub include_usage: bool,
    pub needs_tools: bool,
    pub needs_vision: bool,
    pub needs_json: bool,
    pub estimated_prompt_tokens: u32,
    pub max_output_tokens: Option<u32>,
}

/// A JSON object's top-level members, each value kept as its raw text: validated, never built.
/// The gateway reads a few members and measures the messages; a long prompt is not turned into
/// a tree of allocations only to be dropped again.
pub type Members<'a> = BTreeMap<String, &'a RawValue>;

/// Any JSON value, walked as strictly as building it would check it — numbers in range, string
/// escapes that decode, nesting no deeper than 128 — but never built: strings without escapes
/// are borrowed, not copied. (`IgnoredAny` and raw values check only the syntax.)
pub struct Strict;

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Strict;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Strict, E> {
                Ok(Strict)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Strict, E> {
                Ok(Strict)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Strict, E> {
                Ok(Strict)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Strict, E> {
                Ok(Strict)
            }
            fn visit_str<E>(self, _: &str) -> Result<Strict, E> {
                Ok(Strict)
            }
            fn visit_unit<E>(self) -> Result<Strict, E> {
                Ok(Strict)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Strict, A::Error> {
                while seq.next_element::<Strict>()?.is_some() {}
                Ok(Strict)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Strict, A::Error> {
                while map.next_entry::<Strict, Strict>()?.is_some() {}
                Ok(Strict)
            }
        }
        d.deserialize_any(Visit)
    }
}

/// A member's value, built (for the small ones the gateway reads whole).
fn member(body: &Members<'_>, key: &str) -> Option<Value> {
    body.get(key)
        .map(|raw| serde_json::from_str(raw.get()).unwrap_or(Value::Null))
}

/// The decoded length in bytes of a raw JSON string (0 when it is not a string).
fn string_len(raw: &RawValue) -> usize {
    if !raw.get().starts_with('"') {
        return 0;
    }
    serde_json::from_str::<&str>(raw.get())
        .map(str::len)
        .or_else(|_| serde_json::from_str::<String>(raw.get()).map(|s| s.len()))
        .unwrap_or(0)
}

/// The members of a raw JSON object; `None` when it is not an object.
fn object(raw: &RawValue) -> Option<Members<'_>> {
    if raw.get().starts_with('{') {
        serde_json::from_str(raw.get()).ok()
    } else {
        None
    }
}

/// The items of a raw JSON array; `None` when it is not an array.
fn array(raw: &RawValue) -> Option<Vec<&RawValue>> {
    if raw.get().starts_with('[') {
        serde_json::from_str(raw.get()).ok()
    } else {
        None
    }
}

fn model_of(body: &Members<'_>) -> Result<String, ApiError> {
    match member(body, "model") {
        Some(Value::String(m)) if !m.is_empty() => Ok(m),
        Some(_) => Err(ApiError::invalid_param(
            "model",
            "`model` must be a non-empty string",
        )),
        None => Err(ApiError::invalid_param(
            "model",
            "you must provide a model parameter",
        )),
    }
}

/// Validates an embeddings request (`input`: a string, a list of strings, a list of token ids,
/// or a list of token-id lists; never empty) and estimates its tokens.
pub fn embeddings_facts(body: &Members<'_>) -> Result<Facts, ApiError> {
    let model = model_of(body)?;
    let bad = |why: &str| ApiError::invalid_param("input", why.to_string());
    let tokens = match member(body, "input").as_ref() {
        None | Some(Value::Null) => return Err(bad("missing required parameter: `input`")),
        Some(Value::String(s)) if s.is_empty() => {
            return Err(bad("`input` must not be an empty string"));
        }
        Some(Value::String(s)) => s.len() / 4 + 1,
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(bad("`input` must not be an empty array"));
        }
        Some(Value::Array(items)) => {
            // One kind throughout: strings, token ids, or lists of token ids.
            let kind = |v: &Value| match v {
                Value::String(s) if !s.is_empty() => Some(0),
                Value::Number(n) if n.is_u64() => Some(1),
                Value::Array(ids) if !ids.is_empty() && ids.iter().all(Value::is_u64) => Some(2),
                _ => None,
            };
            let first = kind(&items[0]);
            let mut tokens = 0usize;
            for (i, item) in items.iter().enumerate() {
                if first.is_none() || kind(item) != first {
                    return Err(bad(&format!(
                        "input[{i}] must be a non-empty string, a token id or a list of token ids, like every other item"
                    )));
                }
                tokens += match item {
                    Value::String(s) => s.len() / 4 + 1,
                    Value::Array(ids) => ids.len(),
                    _ => 1,
                };
            }
            tokens
        }
        Some(_) => {
            return Err(bad(
                "`input` must be a string, a list of strings or a list of token ids",
            ));
        }
    };
    Ok(Facts {
        endpoint: Endpoint::Embeddings,
        model,
        estimated_prompt_tokens: tokens.min(u32::MAX as usize) as u32,
        ..Facts::default()
    })
}

/// The messages measured member by member: the authority on what is wrong with them.
/// Returns how many there are, their text in bytes, and whether any carries an image.
fn measure_messages(body: &Members<'_>) -> Result<(usize, usize, bool), ApiError> {
    let messages = match body.get("messages").map(|raw| array(raw)) {
        Some(Some(m)) if !m.is_empty() => m,
        Some(Some(_)) => {
            return Err(ApiError::invalid_param(
                "messages",
                "`messages` must contain at least one message",
            ));
        }
        Some(None) => {
            return Err(ApiError::invalid_param(
                "messages",
                "`messages` must be an array",
            ));
        }
        None => {
            return Err(ApiError::invalid_param(
                "messages",
                "missing required parameter: `messages`",
            ));
        }
    };
    let mut text_bytes = 0usize;
    let mut needs_vision = false;
    for (i, m) in messages.iter().enumerate() {
        let Some(obj) = object(m) else {
            return Err(ApiError::invalid_param(
                "messages",
                format!("messages[{i}] must be an object"),
            ));
        };
        if !obj.get("role").is_some_and(|r| r.get().starts_with('"')) {
            return Err(ApiError::invalid_param(
                "messages",
                format!("messages[{i}].role must be a string"),
            ));
        }
        if let Some(content) = obj.get("content") {
            if content.get().starts_with('"') {
                text_bytes += string_len(content);
            } else if let Some(parts) = array(content) {
                for p in parts {
                    let (image, n) = measure_part(p);
                    needs_vision |= image;
                    text_bytes += n;
                }
            }
        }
        if let Some(calls) = obj.get("tool_calls") {
            text_bytes += tool_calls_len(calls);
        }
    }
    Ok((messages.len(), text_bytes, needs_vision))
}

/// [`measure_messages`] in one pass over well-formed messages, the usual case: each message is
/// decoded straight into what is measured, its text never copied. Anything unusual (a message
/// that is not an object, a role that is not a string or has escapes, no messages) gives
/// `None`, and the member-by-member path answers, with the reason.
fn measure_fast(messages: &RawValue) -> Option<(usize, usize, bool)> {
    let list: Vec<Message<'_>> = serde_json::from_str(messages.get()).ok()?;
    if list.is_empty() {
        return None;
    }
    let (mut text, mut vision) = (0usize, false);
    for m in &list {
        m.role.as_ref()?;
        match m.content {
            Some(Content::Text(n)) => text += n,
            Some(Content::Parts { text: n, vision: v }) => {
                text += n;
                vision |= v;
            }
            Some(Content::Other) | None => {}
        }
        if let Some(calls) = m.tool_calls {
            text += tool_calls_len(calls);
        }
    }
    Some((list.len(), text, vision))
}

/// One chat message as [`measure_fast`] reads it. Only a JSON object decodes (a list does not,
/// though a derived struct would take one); the last of a repeated member counts.
struct Message<'a> {
    /// `None` unless a string without escapes (the member-by-member path then decides).
    role: Option<&'a str>,
    content: Option<Content>,
    /// Present with any value, `null` included.
    tool_calls: Option<&'a RawValue>,
}

impl<'de> serde::Deserialize<'de> for Message<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Message<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a message object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Message<'de>, A::Error> {
                let mut m = Message {
                    role: None,
                    content: None,
                    tool_calls: None,
                };
                while let Some(key) = map.next_key::<Field>()? {
                    match key {
                        Field::Role => m.role = map.next_value()?,
                        Field::Content => m.content = map.next_value()?,
                        Field::ToolCalls => m.tool_calls = Some(map.next_value()?),
                        Field::Other => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(m)
            }
        }
        d.deserialize_map(Visit)
    }
}

/// A message member's name, read without copying it.
enum Field {
    Role,
    Content,
    ToolCalls,
    Other,
}

impl<'de> serde::Deserialize<'de> for Field {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Field;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E>(self, v: &str) -> Result<Field, E> {
                Ok(match v {
                    "role" => Field::Role,
                    "content" => Field::Content,
                    "tool_calls" => Field::ToolCalls,
                    _ => Field::Other,
                })
            }
        }
        d.deserialize_identifier(Visit)
    }
}

/// A message's `content`, measured: a string's length in bytes, or its parts' text and
/// whether one is an image.
enum Content {
    Text(usize),
    Parts { text: usize, vision: bool },
    Other,
}

impl<'de> serde::Deserialize<'de> for Content {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Content;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("message content")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Content, E> {
                Ok(Content::Text(v.len()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Content, A::Error> {
                let (mut text, mut vision) = (0, false);
                while let Some(part) = seq.next_element::<&'de RawValue>()? {
                    let (image, n) = measure_part(part);
                    vision |= image;
                    text += n;
                }
                Ok(Content::Parts { text, vision })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Content, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Content::Other)
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Content, E> {
                Ok(Content::Other)
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Content, E> {
                Ok(Content::Other)
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Content, E> {
                Ok(Content::Other)
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Content, E> {
                Ok(Content::Other)
            }
        }
        d.deserialize_any(Visit)
    }
}

/// A message's `tool_calls` as they count towards the prompt: their compact JSON's length.
fn tool_calls_len(calls: &RawValue) -> usize {
    serde_json::from_str::<Value>(calls.get()).map_or(0, |v| v.to_string().len())
}

/// One part of a message's `content` list: whether it is an image, else its text's length in
/// bytes. A part that is not an object counts as no text, as does a `text` that is not a string.
fn measure_part(p: &RawValue) -> (bool, usize) {
    let part = object(p).unwrap_or_default();
    match part
        .get("type")
        .map(|t| serde_json::from_str::<Value>(t.get()))
    {
        Some(Ok(Value::String(t))) if t == "image_url" || t == "input_image" => (true, 0),
        _ => (false, part.get("text").map_or(0, |t| string_len(t))),
    }
}

/// Validates the parts of a chat request the gateway relies on and derives its needs.
pub fn facts(body: &Members<'_>) -> Result<Facts, ApiError> {
    let model = model_of(body)?;
    let (count, mut text_bytes, needs_vision) =
        match body.get("messages").and_then(|m| measure_fast(m)) {
            Some(measured) => measured,
            None => measure_messages(body)?,
        };
    let is_stream = match member(body, "stream").as_ref() {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::invalid_param(
                "stream",
                "`stream` must be a boolean",
            ));
        }
    };
    let max_output_tokens = match member(body, "max_completion_tokens")
        .or_else(|| member(body, "max_tokens"))
        .as_ref()
    {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n) => Some(n.min(u64::from(u32::MAX)) as u32),
            None => {
                return Err(ApiError::invalid_param(
                    "max_tokens",
                    "`max_tokens` must be a non-negative integer",
                ));
            }
        },
    };
    let needs_tools = match member(body, "tools").as_ref() {
        None | Some(Value::Null) => false,
        Some(Value::Array(t)) => {
            // Measured without copying the tool list.
            text_bytes += serde_json::to_vec(t).map_or(0, |v| v.len());
            !t.is_empty()
        }
        Some(_) => return Err(ApiError::invalid_param("tools", "`tools` must be an array")),
    };
    let needs_json = member(body, "response_format")
        .as_ref()
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str)
        .is_some_and(|t| t != "text");
    let include_usage = member(body, "stream_options")
        .as_ref()
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        == Some(true);
    Ok(Facts {
        endpoint: Endpoint::Chat,
        model,
        is_stream,
        include_usage,
        needs_tools,
        needs_vision,
        needs_json,
        estimated_prompt_tokens: (text_bytes / 4 + 4 * count).min(u32::MAX as usize) as u32,
        max_output_tokens,
    })
}

/// The channels to try, best first.
#[derive(Debug)]
pub struct Plan {
    /// The group, when the model named one.
    pub group: Option<String>,
    /// Channel indices into the config's channel list.
    pub channels: Vec<usize>,
}

/// Picks and orders the channels for a request.
pub fn plan(app: &App, cfg: &Config, comps: &Components, facts: &Facts) -> Result<Plan, ApiError> {
    let (group, members, strategy, params): (Option<String>, &[Member], &str, &str) =
        match cfg.groups.get(&facts.model) {
            Some(g) => (
                Some(g.name.clone()),
                &g.members,
                &g.strategy,
                &g.params_json,
            ),
            None => match cfg.models.get(&facts.model) {
                Some(m) => (None, m, &cfg.system.default_strategy, "{}"),
                None => return Err(ApiError::model_not_found(&facts.model)),
            },
        };
    let filters = group
        .as_ref()
        .and_then(|g| cfg.groups.get(g))
        .map(|g| &g.filters);
    let now = now_ms();
    let (day, weekday) = cfg.clock.day(now);
    let moment = Moment {
        minute_of_day: day.minute_of_day(now),
        weekday,
    };
    let mut candidates: Vec<Candidate> = Vec::with_capacity(members.len());
    let mut chosen: Vec<&Member> = Vec::with_capacity(members.len());
    let mut earliest_recovery: Option<u64> = None;
    let mut unfit = 0usize;
    let mut other_endpoint = 0usize;
    for m in members {
        let ch = &cfg.channels[m.channel];
        if ch.disabled.is_some() {
            continue;
        }
        let Some(provider) = cfg.providers.get(&ch.provider) else {
            continue;
        };
        // A missing or quarantined adapter takes its channels out of rotation.
        if comps
            .adapters
            .get(&provider.adapter)
            .is_none_or(|a| a.streak.quarantined())
        {
            continue;
        }
        let needed = facts
            .estimated_prompt_tokens
            .saturating_add(facts.max_output_tokens.unwrap_or(0));
        // Embeddings models serve `/v1/embeddings` only, and only they do.
        if ch.is_embeddings() != (facts.endpoint == Endpoint::Embeddings) {
            other_endpoint += 1;
            continue;
        }
        let fits = (!facts.needs_tools || ch.has(Capability::FunctionCalling))
            && (!facts.needs_vision || ch.has(Capability::Vision))
            && (!facts.needs_json || ch.has(Capability::JsonMode))
            && ch.context_length.is_none_or(|c| needed <= c);
        let stats = app.stats.channel(&ch.id);
        let used_share = stats.quota.used_share(ch, day.id);
        let multiplier = pricing::multiplier(&cfg.policies, ch, moment, used_share);
        let passes_group = filters.is_none_or(|f| {
            f.max_cost_per_1k
                .is_none_or(|max| ch.effective_cost_per_1k(multiplier) <= max + 1e-12)
                && f.min_context_length
                    .is_none_or(|min| ch.context_length.is_none_or(|c| c >= min))
                && f.capabilities.iter().all(|c| {
                    ch.capabilities
                        .as_ref()
                        .is_some_and(|caps| caps.contains(c))
                })
                && f.providers
                    .as_ref()
                    .is_none_or(|p| p.contains(&ch.provider))
                && !f.exclude_providers.contains(&ch.provider)
        });
        if !passes_group {
            continue;
        }
        if !fits {
            unfit += 1;
            continue;
        }
        let breaker = stats.breaker(now);
        let cooling = match breaker {
            Breaker::Open(until) => Some(until),
            _ => stats.cooling(now),
        };
        if let Some(until) = cooling {
            earliest_recovery = Some(earliest_recovery.map_or(until, |e| e.min(until)));
            continue;
        }
        let half_open = breaker == Breaker::HalfOpen;
        let snap = stats.snapshot();
        if used_share.is_some_and(|u| u >= 1.0) {
            continue;
        }
        candidates.push(Candidate {
            id: ch.id.clone(),
            provider: ch.provider.clone(),
            model: ch.model.clone(),
            priority: m.priority,
            weight: m.weight,
            input_cost_per_1k: ch.input_cost_per_1k * multiplier,
            output_cost_per_1k: ch.output_cost_per_1k * multiplier,
            effective_cost: ch.effective_cost_per_1k(multiplier),
            context_length: ch.context_length,
            latency_ms: snap.latency_ms,
            ttft_ms: snap.ttft_ms,
            tokens_per_second: snap.tokens_per_second,
            success_rate: snap.success_rate,
            in_flight: snap.in_flight,
            consecutive_failures: snap.consecutive_failures,
            quota_remaining: used_share.map(|u| (1.0 - u).clamp(0.0, 1.0)),
            quota_remaining_requests: ch
                .daily_limit
                .map(|l| l.saturating_sub(stats.quota.requests.used(day.id))),
            health: if half_open {
                Health::Probing
            } else if snap.success_rate < 0.9 || snap.consecutive_failures > 0 {
                Health::Degraded
            } else {
                Health::Healthy
            },
        });
        chosen.push(m);
    }

    if candidates.is_empty() {
        let label = group.as_deref().unwrap_or(&facts.model);
        if let Some(until) = earliest_recovery {
            let secs = (until.saturating_sub(now)).div_ceil(1000).max(1);
            return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", Some("all_channels_cooling_down"),
                format!("Every channel of `{label}` is cooling down after errors or rate limits; retry in {secs}s."))
                .with_retry_after(Some(secs)));
        }
        if unfit > 0 {
            let need = [
                (facts.needs_tools, "function calling"),
                (facts.needs_vision, "vision"),
                (facts.needs_json, "JSON mode"),
            ]
            .iter()
            .filter(|(n, _)| *n)
            .map(|(_, s)| *s)
            .collect::<Vec<_>>();
            let need = if need.is_empty() {
                "a context window this large".to_string()
            } else {
                need.join(", ")
            };
            return Err(ApiError::invalid(format!(
                "No channel of `{label}` supports what this request needs ({need})."
            )));
        }
        if other_endpoint > 0 {
            let (kind, endpoint) = match facts.endpoint {
                Endpoint::Chat => ("chat", "/v1/embeddings"),
                Endpoint::Embeddings => ("embeddings", "/v1/chat/completions"),
            };
            return Err(ApiError::invalid(format!(
                "`{label}` has no {kind} models: its channels serve {endpoint}."
            )));
        }
        return Err(ApiError::unavailable(format!(
            "No channel of `{label}` is available right now (disabled, out of daily quota, or its adapter is not loaded)."
        )));
    }

    let order = rank(app, comps, strategy, params, facts, &candidates, now);
    Ok(Plan {
        group,
        channels: order.into_iter().map(|i| chosen[i].channel).collect(),
    })
}

/// Asks the strategy; on any failure falls back to priority order, logging and counting it.
fn rank(
    app: &App,
    comps: &Components,
    strategy: &str,
    params: &str,
    facts: &Facts,
    candidates: &[Candidate],
    now: u64,
) -> Vec<usize> {
    // Priority order; within a tier, channels failing right now last, then by weight.
    let fallback = || {
        let mut idx: Vec<usize> = (0..candidates.len()).collect();
        idx.sort_by(|&a, &b| {
            let (x, y) = (&candidates[a], &candidates[b]);
            x.priority
                .cmp(&y.priority)
                .then((x.consecutive_failures > 0).cmp(&(y.consecutive_failures > 0)))
                .then(y.weight.total_cmp(&x.weight))
        });
        idx
    };
    let Some(component) = comps
        .strategies
        .get(strategy)
        .filter(|c| !c.streak.quarantined())
    else {
        tracing::debug!(
            strategy,
            "strategy not loaded or quarantined; priority order"
        );
        return fallback();
    };
    if candidates.len() == 1 {
        return vec![0];
    }
    let info = RequestInfo {
        model: facts.model.clone(),
        estimated_prompt_tokens: facts.estimated_prompt_tokens,
        max_output_tokens: facts.max_output_tokens,
        is_stream: facts.is_stream,
        needs_tools: facts.needs_tools,
        needs_vision: facts.needs_vision,
        needs_json: facts.needs_json,
        now_ms: now,
        random: fastrand::u64(..),
        sequence: app.stats.next_sequence(&facts.model),
        endpoint: match facts.endpoint {
            Endpoint::Chat => WitEndpoint::Chat,
            Endpoint::Embeddings => WitEndpoint::Embeddings,
        },
    };
    match component.rank(&app.runtime, &info, candidates, params) {
        Ok(r) if !r.order.is_empty() => {
            if let Some(why) = &r.explanation {
                tracing::debug!(strategy, explanation = %why, "ranked");
            }
            r.order.into_iter().map(|i| i as usize).collect()
        }
        Ok(_) => {
            Counters::bump(&app.counters.strategy_failures);
            tracing::warn!(
                strategy,
                "strategy dropped every candidate; using priority order"
            );
            fallback()
        }
        Err(e) => {
            Counters::bump(&app.counters.strategy_failures);
            tracing::warn!(strategy, "strategy failed: {e}; using priority order");
            fallback()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<Facts, ApiError> {
        let members: Members<'_> = serde_json::from_str(body).expect("a JSON object");
        facts(&members)
    }

    fn message(body: &str) -> String {
        chat(body).expect_err("refused").message
    }

    #[test]
    fn facts_measure_decoded_text_and_find_every_need() {
        let f = chat(
            r#"{"model": "m", "stream": true, "max_tokens": 9, "stream_options": {"include_usage": true},
                "response_format": {"type": "json_object"}, "tools": [ {"type": "function"} ],
                "messages": [
                  {"role": "user", "content": "caf\u00e9 \"q\""},
                  {"role": "user", "content": [{"type": "text", "text": "abcd"}, {"type": "image_url", "image_url": {"url": "x"}}, 5]},
                  {"role": "assistant", "content": null, "tool_calls": [ {"id": "1"} ]}
                ]}"#,
        )
        .expect("valid");
        // Text: `café "q"` decodes to 9 bytes, `abcd` 4, the tool calls re-serialized
        // `[{"id":"1"}]` 12 and the tools `[{"type":"function"}]` 21: 46 bytes, plus 4 tokens
        // per message.
        assert_eq!(f.estimated_prompt_tokens, 46 / 4 + 4 * 3);
        assert_eq!(f.model, "m");
        assert!(f.is_stream && f.include_usage && f.needs_tools && f.needs_vision && f.needs_json);
        assert_eq!(f.max_output_tokens, Some(9));
    }

    #[test]
    fn the_last_of_repeated_members_counts_as_in_a_json_object() {
        let f = chat(r#"{"model": "a", "model": "b", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1, "max_completion_tokens": 2}"#)
            .expect("valid");
        assert_eq!(f.model, "b");
        assert_eq!(f.max_output_tokens, Some(2));
        assert!(!f.is_stream && !f.needs_tools && !f.needs_vision && !f.needs_json);
    }

    #[test]
    fn malformed_chat_requests_are_refused_with_the_reason() {
        let cases = [
            (r#"{"messages": []}"#, "you must provide a model parameter"),
            (r#"{"model": 5}"#, "`model` must be a non-empty string"),
            (
                r#"{"model": "m"}"#,
                "missing required parameter: `messages`",
            ),
            (
                r#"{"model": "m", "messages": {}}"#,
                "`messages` must be an array",
            ),
            (
                r#"{"model": "m", "messages": []}"#,
                "`messages` must contain at least one message",
            ),
            (
                r#"{"model": "m", "messages": [1]}"#,
                "messages[0] must be an object",
            ),
            (
                r#"{"model": "m", "messages": [{"content": "x"}]}"#,
                "messages[0].role must be a string",
            ),
            (
                r#"{"model": "m", "stream": "yes", "messages": [{"role": "user"}]}"#,
                "`stream` must be a boolean",
            ),
            (
                r#"{"model": "m", "max_tokens": -1, "messages": [{"role": "user"}]}"#,
                "`max_tokens` must be a non-negative integer",
            ),
            (
                r#"{"model": "m", "tools": {}, "messages": [{"role": "user"}]}"#,
                "`tools` must be an array",
            ),
        ];
        for (body, why) in cases {
            assert_eq!(message(body), why, "{body}");
        }
    }

    /// The one-pass measurement agrees with the member-by-member one wherever that one accepts
    /// the messages, and gives way (to its error) wherever it does not.
    #[test]
    fn both_measurements_agree() {
        let cases = [
            r#"[{"role": "user", "content": "plain"}]"#,
            r#"[{"role": "user", "content": "caf\u00e9 \"q\"", "name": "n"}]"#,
            r#"[{"role": "user", "content": [{"type": "text", "text": "ab"}, {"text": "c", "type": "input_image"}, 7, [1], {"type": 3, "text": "xyz"}, {"type": "text", "text": 5}]}]"#,
            r#"[{"role": "user", "content": [{"type": "image_url", "type": "text", "text": "ab", "text": "abcd"}]}]"#,
            r#"[{"role": "assistant", "content": null, "tool_calls": null}]"#,
            r#"[{"role": "assistant", "tool_calls": [ {"id": "1", "function": {"arguments": "{}"}} ]}]"#,
            r#"[{"role": "user", "content": {"odd": true}}, {"role": "user", "content": 5}, {"role": "user", "content": false}]"#,
            r#"[{"content": "a", "role": "user", "content": "abc"}]"#,
            r#"[{"role": "us\u0065r", "content": "x"}]"#,
            r#"[{"role": null, "content": "x"}]"#,
            r#"[{"role": 5, "content": "x"}]"#,
            r#"[["user", "hi"]]"#,
            r#"[1]"#,
            r#"[]"#,
            r#"{"role": "user"}"#,
        ];
        for messages in cases {
            let body = format!(r#"{{"messages": {messages}}}"#);
            let members: Members<'_> = serde_json::from_str(&body).expect("json");
            let raw = members["messages"];
            match measure_messages(&members) {
                Ok(slow) => {
                    let fast = measure_fast(raw);
                    // The fast path may give way on valid input too (an escaped role), never
                    // disagree.
                    assert!(
                        fast.is_none_or(|f| f == slow),
                        "{messages}: {fast:?} vs {slow:?}"
                    );
                }
                Err(_) => assert_eq!(measure_fast(raw), None, "{messages}"),
            }
        }
        // The common shapes take the fast path.
        for messages in &cases[..8] {
            let body = format!(r#"{{"messages": {messages}}}"#);
            let members: Members<'_> = serde_json::from_str(&body).expect("json");
            assert!(measure_fast(members["messages"]).is_some(), "{messages}");
        }
    }

    /// What a full parse would refuse, the strict walk refuses too, though raw values and
    /// `IgnoredAny` let it through.
    #[test]
    fn the_strict_walk_refuses_what_building_would() {
        let deep = format!("{}1{}", "[".repeat(129), "]".repeat(129));
        for bad in [
            r#"{"t": 1e400}"#,
            r#"{"s": "\ud800"}"#,
            r#"{"\udfff": 1}"#,
            deep.as_str(),
        ] {
            assert!(serde_json::from_str::<Value>(bad).is_err(), "{bad}");
            assert!(
                serde_json::from_str::<serde::de::IgnoredAny>(bad).is_ok(),
                "{bad}"
            );
            assert!(serde_json::from_str::<Strict>(bad).is_err(), "{bad}");
        }
        let fine = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        for good in [
            r#"{"t": 1e300, "s": "caf\u00e9", "n": [null, true, -1, 2.5, {}]}"#,
            fine.as_str(),
        ] {
            assert!(serde_json::from_str::<Strict>(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn embeddings_inputs_are_checked_and_estimated() {
        let members: Members<'_> =
            serde_json::from_str(r#"{"model": "e", "input": ["abcdefgh", "ab"]}"#).expect("json");
        assert_eq!(
            embeddings_facts(&members)
                .expect("valid")
                .estimated_prompt_tokens,
            // 8 bytes: 2 tokens + 1; 2 bytes: 0 + 1.
            3 + 1
        );
        let members: Members<'_> =
            serde_json::from_str(r#"{"model": "e", "input": ["a", 1]}"#).expect("json");
        assert!(embeddings_facts(&members).is_err());
    }
}
