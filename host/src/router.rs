//! Routing: the model name to candidate channels, host-side filters, then the strategy's order.

use axum::http::StatusCode;

use crate::app::{App, Counters};
use crate::components::Components;
use crate::components::strategy_api::smart_router::gateway::types::{
    Candidate, Endpoint as WitEndpoint, Health, RequestInfo,
};
use crate::config::{Capability, Config, Member};
use crate::pricing::{self, Moment};
use crate::server::error::ApiError;
use crate::stats::{Breaker, now_ms};

mod request;

pub use request::request_facts;

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
    /// How many answers the request asks for (`n`), when it says.
    pub choices: Option<u32>,
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
