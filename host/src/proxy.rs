//! One upstream attempt: translate with the adapter, send, translate back, account.

mod stream;

use std::sync::Arc;
use std::time::Instant;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::app::{App, Counters};
use crate::budget::{Hold, Limits, Owner};
use crate::components::adapter_api::exports::smart_router::gateway::translation::{
    ErrorClass, ProviderError, RequestContext, Usage,
};
use crate::components::{AdapterComponent, CallError, Components};
use crate::config::{Channel, Config, Provider};
use crate::pricing::{self, Moment};
use crate::router::Facts;
use crate::server::error::ApiError;
use crate::stats::{ChannelStats, InFlight, Reservation, now_ms};
use crate::store::UsageRecord;
use crate::upstream::{UpstreamError, read_body};

/// Completion tokens assumed for a quota reservation when the request sets no `max_tokens`.
const DEFAULT_OUTPUT_ESTIMATE: u32 = 256;
/// Completion tokens a budget hold assumes when the request sets no `max_tokens`.
const BUDGET_OUTPUT_ESTIMATE: u32 = 1024;
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
    pub key_id: String,
    pub key_budget: crate::budget::Limits,
    pub group: Option<String>,
    /// Microseconds spent waiting on upstreams, over every attempt (for the overhead metric).
    pub upstream_us: std::sync::atomic::AtomicU64,
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
    pub channel: Channel,
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
    if !stats.try_probe(now) {
        return Err(retry(
            "circuit_open",
            format!("channel `{}` is being probed after failures", channel.id),
            None,
        ));
    }
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
    let output_estimate = u64::from(
        scope
            .facts
            .max_output_tokens
            .unwrap_or(DEFAULT_OUTPUT_ESTIMATE),
    );
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
            u64::from(
                scope
                    .facts
                    .max_output_tokens
                    .unwrap_or(BUDGET_OUTPUT_ESTIMATE),
            ),
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
    let http = match session.translate_request(&ctx, &scope.body) {
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
    let waiting = Instant::now();
    let sent = scope
        .app
        .upstream
        .send(&att.provider, http, first_byte)
        .await;
    scope.waited(waiting);
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
        return stream::start(att, session, ctx, resp, guard).await;
    }
    let waiting = Instant::now();
    let body = read_body(resp.body, scope.cfg.system.max_response_bytes).await;
    scope.waited(waiting);
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            att.fail("body", &e.to_string(), resp.status, None, None)
                .await;
            return Err(retry("body", e.to_string(), None));
        }
    };
    match session.translate_response(&ctx, resp.status, &body) {
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
            att.succeed(out.usage, resp.status, None).await;
            drop(guard);
            let mut response =
                ([(header::CONTENT_TYPE, "application/json")], out.body).into_response();
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

impl Attempt {
    /// Adds the gateway's response headers.
    pub fn tag(&self, response: &mut Response) {
        let headers = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&self.scope.request_id) {
            headers.insert("x-request-id", v);
        }
        if let Ok(v) = HeaderValue::from_str(&self.channel.id) {
            headers.insert("x-smart-router-channel", v);
        }
    }

    /// The attempt's usage row; settles its quota reservation and budget holds, so call it once,
    /// at the end.
    fn record(
        &self,
        status: u16,
        outcome: &'static str,
        class: Option<&str>,
        message: Option<String>,
        usage: Option<&Usage>,
        ttft_ms: Option<u64>,
    ) -> UsageRecord {
        let s = &self.scope;
        let (p, c) = usage.map_or((0, 0), |u| {
            (u64::from(u.prompt_tokens), u64::from(u.completion_tokens))
        });
        let cost_micros = self.channel.cost_micros(p, c, self.multiplier);
        // The attempt is over: its quota reservation and budget holds become what it really used.
        self.stats.quota.settle(
            &self.reservation,
            &self.channel,
            p + c,
            cost_micros.max(0) as u64,
        );
        self.scope
            .app
            .budgets
            .settle(&self.hold, cost_micros.max(0) as u64);
        UsageRecord {
            request_id: s.request_id.clone(),
            attempt: self.number,
            created_at_ms: self.started_ms,
            key_id: s.key_id.clone(),
            requested_model: s.facts.model.clone(),
            group_name: s.group.clone(),
            channel_id: Some(self.channel.id.clone()),
            provider: Some(self.channel.provider.clone()),
            upstream_model: Some(self.channel.model.clone()),
            is_stream: s.facts.is_stream,
            prompt_tokens: p,
            completion_tokens: c,
            cached_tokens: usage.map_or(0, |u| u64::from(u.cached_tokens)),
            reasoning_tokens: usage.map_or(0, |u| u64::from(u.reasoning_tokens)),
            cost_micros,
            latency_ms: self.started.elapsed().as_millis() as u64,
            ttft_ms,
            status,
            outcome,
            error_class: class.map(str::to_string),
            error_message: message,
        }
    }

    /// A successful attempt: statistics and the usage row.
    pub async fn succeed(&self, usage: Option<Usage>, status: u16, ttft_ms: Option<u64>) {
        let latency = self.started.elapsed().as_secs_f64() * 1000.0;
        self.stats.record_success(
            latency,
            ttft_ms.map(|t| t as f64),
            usage.as_ref().map_or(0, |u| u.completion_tokens),
        );
        let rec = self.record(status, "success", None, None, usage.as_ref(), ttft_ms);
        self.scope.app.usage.record(rec).await;
    }

    /// A failed attempt that reached (or tried to reach) the upstream: health, cooldowns, the
    /// usage row.
    pub async fn fail(
        &self,
        class: &str,
        message: &str,
        status: u16,
        usage: Option<&Usage>,
        retry_after_ms: Option<u64>,
    ) {
        let now = now_ms();
        let unhealthy = matches!(
            class,
            "server_error"
                | "timeout"
                | "connect"
                | "stream_broken"
                | "bad_stream"
                | "empty_stream"
                | "body"
                | "unknown"
        );
        self.stats.record_failure(now, unhealthy);
        match class {
            // The account's limit: every channel sharing the provider's key waits.
            "rate_limited" => {
                self.park_account(now + retry_after_ms.unwrap_or(DEFAULT_RATE_LIMIT_MS), true)
            }
            // The key itself is refused or out of credit: the whole account, for long.
            "auth" | "quota_exhausted" => self.park_account(now + ACCOUNT_FAILURE_MS, false),
            "model_not_found" => self.stats.cool_down(now + ACCOUNT_FAILURE_MS),
            _ => {}
        }
        Counters::bump(&self.scope.app.counters.upstream_failures);
        let rec = self.record(
            status,
            "error",
            Some(class),
            Some(redact(message, &self.provider)),
            usage,
            None,
        );
        self.scope.app.usage.record(rec).await;
    }

    /// Cools down this channel and its siblings under the same provider entry (those with
    /// `separate_rate_limit` are spared when `rate_limit`).
    fn park_account(&self, until: u64, rate_limit: bool) {
        self.stats.cool_down(until);
        for ch in &self.scope.cfg.channels {
            if ch.provider == self.channel.provider
                && ch.id != self.channel.id
                && !(rate_limit && ch.separate_rate_limit)
            {
                self.scope.app.stats.channel(&ch.id).cool_down(until);
            }
        }
    }

    /// Applies a classified provider error: health, cooldown, usage row, and the decision.
    async fn provider_failed(&self, perr: ProviderError, status: u16) -> Failure {
        let class = class_name(perr.class);
        let client_fault = matches!(
            perr.class,
            ErrorClass::BadRequest | ErrorClass::ContentFiltered
        );
        if client_fault {
            let rec = self.record(
                status,
                "client_error",
                Some(class),
                Some(redact(&perr.message, &self.provider)),
                None,
                None,
            );
            self.scope.app.usage.record(rec).await;
            return Failure::Fatal(client_error(&perr, &self.provider));
        }
        self.fail(class, &perr.message, status, None, perr.retry_after_ms)
            .await;
        retry(
            class,
            redact(&perr.message, &self.provider),
            perr.retry_after_ms,
        )
    }
}

/// The budgets an attempt on `channel` spends from: the key's, the group's, the channel's.
fn budgets_of(scope: &RequestScope, channel: &Channel) -> Vec<(Owner, Limits)> {
    let mut out = vec![(Owner::Key(scope.key_id.clone()), scope.key_budget)];
    if let Some(g) = scope.group.as_ref().and_then(|g| scope.cfg.groups.get(g)) {
        out.push((Owner::Group(g.name.clone()), g.budget));
    }
    out.push((
        Owner::Channel(channel.id.clone()),
        Limits {
            daily_micros: None,
            monthly_micros: channel.monthly_cost_limit_micros,
        },
    ));
    out
}

fn retry(class: &'static str, message: impl Into<String>, retry_after_ms: Option<u64>) -> Failure {
    Failure::Retry {
        class,
        message: message.into(),
        retry_after_ms,
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

/// The client's error from a provider's verdict that the request itself is at fault.
fn client_error(perr: &ProviderError, provider: &Provider) -> ApiError {
    let code = if perr.class == ErrorClass::ContentFiltered {
        Some("content_filter")
    } else {
        None
    };
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        code,
        format!(
            "The provider refused the request: {}",
            redact(&perr.message, provider)
        ),
    )
}

/// Never let a provider echo its key back to a client or a log.
pub fn redact(message: &str, provider: &Provider) -> String {
    let mut out: String = message.chars().take(1000).collect();
    if let Some(key) = &provider.api_key
        && key.expose().len() >= 4
    {
        out = out.replace(key.expose(), "<redacted>");
    }
    out
}

/// Used when the adapter cannot classify: the status decides.
fn fallback_classification(status: u16, headers: &[(String, String)]) -> ProviderError {
    let class = match status {
        429 => ErrorClass::RateLimited,
        401 | 403 => ErrorClass::Auth,
        402 => ErrorClass::QuotaExhausted,
        404 => ErrorClass::ModelNotFound,
        400 | 422 => ErrorClass::BadRequest,
        408 | 504 => ErrorClass::Timeout,
        _ => ErrorClass::ServerError,
    };
    let retry_after_ms = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
        .and_then(|(_, v)| v.trim().parse::<f64>().ok())
        .map(|s| (s * 1000.0) as u64);
    ProviderError {
        class,
        temporary: status >= 500 || status == 429,
        retry_after_ms,
        message: format!("upstream status {status}"),
    }
}

pub fn class_name(c: ErrorClass) -> &'static str {
    match c {
        ErrorClass::RateLimited => "rate_limited",
        ErrorClass::Auth => "auth",
        ErrorClass::QuotaExhausted => "quota_exhausted",
        ErrorClass::ContextTooLong => "context_too_long",
        ErrorClass::ContentFiltered => "content_filtered",
        ErrorClass::BadRequest => "bad_request",
        ErrorClass::ModelNotFound => "model_not_found",
        ErrorClass::ServerError => "server_error",
        ErrorClass::Timeout => "timeout",
        ErrorClass::Unknown => "unknown",
    }
}

/// A guard kept alive for the whole of an attempt.
pub(crate) type Guard = InFlight;
