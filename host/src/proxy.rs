//! One upstream attempt: translate with the adapter, send, translate back, account.

mod errors;
mod outcome;
mod stream;

pub use errors::{class_name, redact};
use errors::{client_error, fallback_classification};

use std::sync::Arc;
use std::time::Instant;

use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::app::{App, Counters};
use crate::budget::{Hold, Limits, Owner};
use crate::components::adapter_api::exports::smart_router::gateway::translation::{
    ChatResponse, RequestContext, Usage,
};
use crate::components::{AdapterComponent, CallError, Components};
use crate::config::{Channel, Config, Provider};
use crate::pricing::{self, Moment};
use crate::router::{Endpoint, Facts};
use crate::server::error::ApiError;
use crate::stats::{ChannelStats, InFlight, Reservation, now_ms};
use crate::upstream::{UpstreamError, read_body};

/// Completion tokens assumed for a quota reservation (and a key's tokens-per-minute hold) when
/// the request sets no `max_tokens`.
const DEFAULT_OUTPUT_ESTIMATE: u32 = 256;
/// Completion tokens a budget hold assumes when the request sets no `max_tokens`.
const BUDGET_OUTPUT_ESTIMATE: u32 = 1024;
/// The answer's tokens a request is assumed to use before it ends: its `max_tokens`, else
/// [`DEFAULT_OUTPUT_ESTIMATE`], for each of its `n` answers; none for embeddings.
pub(crate) fn output_estimate(facts: &Facts) -> u32 {
    answers(facts, DEFAULT_OUTPUT_ESTIMATE)
}

/// `max_tokens` (else `default`) times the answers asked for; 0 for embeddings.
fn answers(facts: &Facts, default: u32) -> u32 {
    match facts.endpoint {
        Endpoint::Embeddings => 0,
        Endpoint::Chat => facts
            .max_output_tokens
            .unwrap_or(default)
            .saturating_mul(facts.choices.unwrap_or(1)),
    }
}

/// Cooldown after a 429 that names no `Retry-After`.
const DEFAULT_RATE_LIMIT_MS: u64 = 10_000;
/// How long an account whose key is refused or out of credit (or a missing model) stays parked:
/// until its configuration changes, or this long — after which one real request probes it.
const ACCOUNT_FAILURE_MS: u64 = 3_600_000;

/// Largest error body read from an upstream.
const ERROR_BODY_LIMIT: usize = 256 << 10;

/// What a request carries into each attempt.
pub struct RequestScope {
    pub app: Arc<App>,
    pub cfg: Arc<Config>,
    pub comps: Arc<Components>,
    pub facts: Facts,
    pub body: String,
    pub request_id: String,
    /// The client's own id for the request (`X-Client-Request-Id`), when it sent one.
    pub client_request_id: Option<String>,
    pub key_id: String,
    pub key_budget: crate::budget::Limits,
    pub group: Option<String>,
    /// Microseconds spent waiting on upstreams, over every attempt (for the overhead metric).
    pub upstream_us: std::sync::atomic::AtomicU64,
    /// Set once an attempt has built its usage row: a request whose every channel was passed
    /// over before anything was sent (cooling down, over budget, unsupported) has none, and gets
    /// one row of its own.
    pub recorded: std::sync::atomic::AtomicBool,
    /// The key's tokens per minute, when it has a limit.
    pub key_tpm: Option<u32>,
    /// Tokens taken from the key's per-minute allowance when the request was let in (its prompt
    /// estimate), not yet settled against what an attempt really used.
    pub tpm_held: std::sync::atomic::AtomicU32,
    /// Where a successful answer is kept, and for how many seconds: set when the answer cache
    /// applies to the request.
    pub cache: Option<(crate::cache::CacheKey, u64)>,
}

impl Drop for RequestScope {
    /// A request that ended with no attempt settling its token hold (every channel passed over
    /// or failed without using tokens) gives the hold back.
    fn drop(&mut self) {
        let held = *self.tpm_held.get_mut();
        if let (Some(limit), 1..) = (self.key_tpm, held) {
            let (key, now) = (&self.key_id, now_ms());
            self.app
                .key_tokens
                .settle(key, limit, -i64::from(held), now);
        }
    }
}

impl RequestScope {
    /// Counts time spent waiting on an upstream.
    pub fn waited(&self, since: Instant) {
        self.upstream_us.fetch_add(
            since.elapsed().as_micros() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

/// Why an attempt did not produce a response.
#[derive(Debug)]
pub enum Failure {
    /// Try the next channel.
    Retry {
        class: &'static str,
        message: String,
        retry_after_ms: Option<u64>,
    },
    /// Stop: the client's request is at fault.
    Fatal(ApiError),
}

/// The channel being tried, with everything an attempt touches.
pub(crate) struct Attempt {
    pub scope: Arc<RequestScope>,
    pub channel: Arc<Channel>,
    pub provider: Arc<Provider>,
    pub number: u32,
    pub stats: Arc<ChannelStats>,
    pub started: Instant,
    pub started_ms: u64,
    /// The price factor in force when the attempt started (channel multiplier × policies).
    pub multiplier: f64,
    pub reservation: Reservation,
    pub hold: Hold,
}

/// The half-open probe slot an attempt holds: freed when the attempt ends, unless its outcome
/// already closed or reopened the breaker (which frees it too).
struct ProbeSlot<'a> {
    stats: &'a ChannelStats,
    claimed: u64,
}

impl Drop for ProbeSlot<'_> {
    fn drop(&mut self) {
        self.stats.release_probe(self.claimed);
    }
}

/// Tries channel `idx` as attempt `number`.
pub async fn attempt(
    scope: &Arc<RequestScope>,
    idx: usize,
    number: u32,
) -> Result<Response, Failure> {
    let channel = scope.cfg.channels[idx].clone();
    let Some(provider) = scope.cfg.providers.get(&channel.provider).cloned() else {
        return Err(retry("config", "provider vanished", None));
    };
    let Some(adapter) = scope.comps.adapters.get(&provider.adapter).cloned() else {
        return Err(retry(
            "adapter_missing",
            format!("adapter `{}` is not loaded", provider.adapter),
            None,
        ));
    };
    let stats = scope.app.stats.channel(&channel.id);
    let now = now_ms();
    // Parked while this request was failing over (a sibling's 429, say): skip it.
    if let Some(until) = stats.cooling(now) {
        return Err(retry(
            "cooling_down",
            format!("channel `{}` is cooling down", channel.id),
            Some(until - now),
        ));
    }
    let Some(claimed) = stats.claim(now) else {
        return Err(retry(
            "circuit_open",
            format!("channel `{}` is being probed after failures", channel.id),
            None,
        ));
    };
    // A probe that ends without a verdict on the channel gives its slot back.
    let _probe = ProbeSlot {
        stats: &stats,
        claimed,
    };
    let (day, weekday) = scope.cfg.clock.day(now);
    let moment = Moment {
        minute_of_day: day.minute_of_day(now),
        weekday,
    };
    let multiplier = pricing::multiplier(
        &scope.cfg.policies,
        &channel,
        moment,
        stats.quota.used_share(&channel, day.id),
    );
    let prompt_estimate = u64::from(scope.facts.estimated_prompt_tokens);
    let output_estimate = u64::from(output_estimate(&scope.facts));
    let cost_estimate = channel
        .cost_micros(prompt_estimate, output_estimate, multiplier)
        .max(0) as u64;
    let reservation = match stats.quota.reserve(
        &channel,
        day.id,
        prompt_estimate + output_estimate,
        cost_estimate,
    ) {
        Ok(r) => r,
        Err(limit) => {
            return Err(retry(
                "daily_quota",
                format!("channel `{}` has reached its {limit}", channel.id),
                None,
            ));
        }
    };
    // Budgets hold an upper bound: a generous prompt estimate and the most the answer may cost.
    let budget_estimate = channel
        .cost_micros(
            prompt_estimate + prompt_estimate / 4 + 1,
            u64::from(answers(&scope.facts, BUDGET_OUTPUT_ESTIMATE)),
            multiplier,
        )
        .max(0) as u64;
    let hold = match scope
        .app
        .budgets
        .hold(&budgets_of(scope, &channel), &day, budget_estimate)
    {
        Ok(h) => h,
        Err(exceeded) => {
            stats.quota.cancel(&reservation);
            return Err(retry("budget", exceeded.to_string(), None));
        }
    };
    let unreserve = |stats: &ChannelStats| {
        stats.quota.cancel(&reservation);
        scope.app.budgets.release(&hold);
    };
    let ctx = RequestContext {
        model: channel.model.clone(),
        is_stream: scope.facts.is_stream,
        include_usage: scope.facts.include_usage,
        options: provider.options_json.clone(),
    };
    let mut session = match adapter.session(&scope.app.runtime) {
        Ok(s) => s,
        Err(e) => {
            unreserve(&stats);
            return Err(adapter_failed(&scope.app, &adapter, e));
        }
    };
    let embeddings = scope.facts.endpoint == Endpoint::Embeddings;
    let translated = if embeddings {
        session.translate_embeddings_request(&ctx, &scope.body)
    } else {
        session.translate_request(&ctx, &scope.body)
    };
    let http = match translated {
        Ok(Ok(r)) => r,
        Ok(Err(perr)) => {
            unreserve(&stats);
            return Err(match class_name(perr.class) {
                "bad_request" | "content_filtered" => {
                    Failure::Fatal(client_error(&perr, &provider))
                }
                class => retry(class, redact(&perr.message, &provider), None),
            });
        }
        Err(e) => {
            unreserve(&stats);
            return Err(adapter_failed(&scope.app, &adapter, e));
        }
    };
    // The instance goes back to the pool while the upstream answers.
    session.release();
    let att = Attempt {
        scope: scope.clone(),
        channel,
        provider,
        number,
        stats: stats.clone(),
        started: Instant::now(),
        started_ms: now,
        multiplier,
        reservation,
        hold,
    };
    let guard = stats.enter();
    let first_byte = scope.cfg.system.first_byte_timeout;
    // A shutdown whose grace period runs out stops the wait; the attempt still gets its row.
    let cutoff = crate::server::cutoff();
    let mut cut = std::pin::pin!(cutoff.wait());
    let waiting = Instant::now();
    let sent = tokio::select! {
        biased;
        () = &mut cut => None,
        sent = scope.app.upstream.send(&att.provider, http, first_byte) => Some(sent),
    };
    scope.waited(waiting);
    let Some(sent) = sent else {
        return Err(att.cut_off(0, None, None).await);
    };
    let resp = match sent {
        Ok(r) => r,
        Err(UpstreamError::InvalidRequest(why)) => {
            // Nothing was sent: give the quota and budgets back whole.
            att.stats.quota.cancel(&att.reservation);
            scope.app.budgets.release(&att.hold);
            return Err(adapter_failed(
                &scope.app,
                &adapter,
                CallError::Malformed {
                    component: session.name().to_string(),
                    reason: why,
                },
            ));
        }
        Err(e) => {
            let class = if matches!(e, UpstreamError::Timeout) {
                "timeout"
            } else {
                "connect"
            };
            att.fail(class, &e.to_string(), 0, None, None).await;
            return Err(retry(class, e.to_string(), None));
        }
    };
    if !(200..300).contains(&resp.status) {
        let status = resp.status;
        let body = read_body(resp.body, ERROR_BODY_LIMIT)
            .await
            .unwrap_or_default();
        let perr = match session.classify_error(status, &resp.headers, &body) {
            Ok(p) => p,
            Err(e) => {
                adapter_failed(&scope.app, &adapter, e);
                fallback_classification(status, &resp.headers)
            }
        };
        return Err(att.provider_failed(perr, status).await);
    }
    if scope.facts.is_stream {
        // Boxed: inline, its state (about 3.5 KB) would make every attempt's future that much
        // larger, and every request would copy it on the way in.
        return Box::pin(stream::start(att, session, ctx, resp, guard)).await;
    }
    let waiting = Instant::now();
    let body = tokio::select! {
        biased;
        () = &mut cut => None,
        body = read_body(resp.body, scope.cfg.system.max_response_bytes) => Some(body),
    };
    scope.waited(waiting);
    let Some(body) = body else {
        return Err(att.cut_off(resp.status, None, None).await);
    };
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            att.fail("body", &e.to_string(), resp.status, None, None)
                .await;
            return Err(retry("body", e.to_string(), None));
        }
    };
    let translated = if embeddings {
        session
            .translate_embeddings_response(&ctx, resp.status, &body)
            .map(|r| r.map(|out| with_estimated_usage(out, scope.facts.estimated_prompt_tokens)))
    } else {
        session.translate_response(&ctx, resp.status, &body)
    };
    match translated {
        Ok(Ok(out)) if !is_json_object(&out.body) => {
            let e = CallError::Malformed {
                component: adapter.name.to_string(),
                reason: "its response body is not a JSON object".into(),
            };
            att.fail("adapter_error", &e.to_string(), resp.status, None, None)
                .await;
            Err(adapter_failed(&scope.app, &adapter, e))
        }
        Ok(Ok(out)) => {
            adapter.streak.success();
            let usage = out.usage.or_else(|| {
                let estimate = scope.facts.estimated_prompt_tokens;
                Some(estimated_chat_usage(&out.body, estimate))
            });
            let body = bytes::Bytes::from(out.body);
            att.keep(&body, false, usage.as_ref());
            att.succeed(usage, resp.status, None).await;
            drop(guard);
            let mut response = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
            att.tag(&mut response);
            Ok(response)
        }
        Ok(Err(perr)) => Err(att.provider_failed(perr, resp.status).await),
        Err(e) => {
            att.fail("adapter_error", &e.to_string(), resp.status, None, None)
                .await;
            Err(adapter_failed(&scope.app, &adapter, e))
        }
    }
}

/// The budgets an attempt on `channel` spends from that have a limit: the key's, the group's, the
/// channel's. The others are never held against, so they are not listed (nor their owners' names
/// copied) — with no budget configured, nothing is built.
fn budgets_of(scope: &RequestScope, channel: &Channel) -> Vec<(Owner, Limits)> {
    let mut out = Vec::new();
    if !scope.key_budget.is_empty() {
        out.push((Owner::Key(scope.key_id.clone()), scope.key_budget));
    }
    if let Some(g) = scope.group.as_ref().and_then(|g| scope.cfg.groups.get(g))
        && !g.budget.is_empty()
    {
        out.push((Owner::Group(g.name.clone()), g.budget));
    }
    let limits = Limits {
        daily_micros: None,
        monthly_micros: channel.monthly_cost_limit_micros,
    };
    if !limits.is_empty() {
        out.push((Owner::Channel(channel.id.clone()), limits));
    }
    out
}

fn retry(class: &'static str, message: impl Into<String>, retry_after_ms: Option<u64>) -> Failure {
    Failure::Retry {
        class,
        message: message.into(),
        retry_after_ms,
    }
}

/// An embeddings answer from a provider that reports no token counts (Gemini's) is billed on the
/// host's estimate, and the client's body gains the `usage` object OpenAI's format promises.
fn with_estimated_usage(mut out: ChatResponse, estimate: u32) -> ChatResponse {
    if out.usage.is_some() {
        return out;
    }
    let trimmed = out.body.trim_end();
    if let Some(open) = trimmed.strip_suffix('}') {
        let separator = if open.trim_end().ends_with('{') {
            ""
        } else {
            ","
        };
        out.body = format!(
            "{open}{separator}\"usage\":{{\"prompt_tokens\":{estimate},\"total_tokens\":{estimate}}}}}"
        );
    }
    out.usage = Some(Usage {
        prompt_tokens: estimate,
        completion_tokens: 0,
        cached_tokens: 0,
        reasoning_tokens: 0,
    });
    out
}

/// A chat answer from a provider that reports no usage is billed on estimates, never as free:
/// the prompt's, and a token per four bytes of the answer's text and tool calls. The client's
/// body is left as the provider sent it.
fn estimated_chat_usage(body: &str, prompt_estimate: u32) -> Usage {
    let answer: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let mut bytes = 0usize;
    let text = |v: &serde_json::Value| v.as_str().map_or(0, str::len);
    for choice in answer["choices"].as_array().into_iter().flatten() {
        let message = &choice["message"];
        bytes += text(&message["content"]) + text(&message["reasoning_content"]);
        for call in message["tool_calls"].as_array().into_iter().flatten() {
            bytes += text(&call["function"]["name"]) + text(&call["function"]["arguments"]);
        }
    }
    Usage {
        prompt_tokens: prompt_estimate,
        completion_tokens: bytes.div_ceil(4).clamp(1, u32::MAX as usize) as u32,
        cached_tokens: 0,
        reasoning_tokens: 0,
    }
}

/// True when `text` is one JSON object (checked without building it).
pub(crate) fn is_json_object(text: &str) -> bool {
    text.trim_start().starts_with('{')
        && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

fn adapter_failed(app: &App, adapter: &AdapterComponent, e: CallError) -> Failure {
    Counters::bump(&app.counters.adapter_failures);
    adapter.streak.failure(&adapter.name);
    tracing::warn!("adapter failed: {e}");
    retry("adapter_error", e.to_string(), None)
}

/// A guard kept alive for the whole of an attempt.
pub(crate) type Guard = InFlight;
