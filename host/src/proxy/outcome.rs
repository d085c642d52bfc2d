//! How an attempt ends: its usage row, the channel's live statistics, cooldowns, and the decision
//! between failing over and answering the client.

use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;

use super::errors::{class_name, client_error, redact};
use super::{ACCOUNT_FAILURE_MS, Attempt, DEFAULT_RATE_LIMIT_MS, Failure, retry};
use crate::app::Counters;
use crate::components::adapter_api::exports::smart_router::gateway::translation::{
    ErrorClass, ProviderError, Usage,
};
use crate::stats::now_ms;
use crate::store::UsageRecord;

/// The error class of an attempt cut off by the shutdown.
pub(super) const SHUTDOWN: &str = "shutdown";

impl Attempt {
    /// Adds the gateway's response headers.
    pub fn tag(&self, response: &mut Response) {
        // Names made from constants: a name given as text is parsed, and copied, on every insert.
        const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
        const CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("x-client-request-id");
        const CHANNEL: HeaderName = HeaderName::from_static("x-smart-router-channel");
        const CACHE: HeaderName = HeaderName::from_static("x-smart-router-cache");
        let headers = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&self.scope.request_id) {
            headers.insert(REQUEST_ID, v);
        }
        if let Some(v) =
            (self.scope.client_request_id.as_deref()).and_then(|c| HeaderValue::from_str(c).ok())
        {
            headers.insert(CLIENT_REQUEST_ID, v);
        }
        if let Ok(v) = HeaderValue::from_str(&self.channel.id) {
            headers.insert(CHANNEL, v);
        }
        if self.scope.cache.is_some() {
            headers.insert(CACHE, HeaderValue::from_static("miss"));
        }
    }

    /// Keeps a successful answer in the answer cache, when it applies to the request: a JSON
    /// body, or a stream's events. Copied, so the entry holds no spare capacity the cache's
    /// bound would not see.
    pub(super) fn keep(&self, body: &[u8], stream: bool, usage: Option<&Usage>) {
        let Some((key, ttl_secs)) = self.scope.cache else {
            return;
        };
        let hit = crate::cache::Hit {
            body: bytes::Bytes::copy_from_slice(body),
            stream,
            channel: self.channel.id.clone(),
            prompt_tokens: usage.map_or(0, |u| u64::from(u.prompt_tokens)),
            completion_tokens: usage.map_or(0, |u| u64::from(u.completion_tokens)),
        };
        let max = self.scope.cfg.system.cache_max_bytes;
        (self.scope.app.cache).put(key, hit, ttl_secs.saturating_mul(1000), max, now_ms());
    }

    /// The attempt's usage row; settles its quota reservation and budget holds, so call it once,
    /// at the end.
    pub(super) fn record(
        &self,
        status: u16,
        outcome: &'static str,
        class: Option<&str>,
        message: Option<String>,
        usage: Option<&Usage>,
        ttft_ms: Option<u64>,
    ) -> UsageRecord {
        let s = &self.scope;
        s.recorded.store(true, std::sync::atomic::Ordering::Relaxed);
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
        if let Some(limit) = s.key_tpm.filter(|_| p + c > 0) {
            // The first attempt that used tokens settles the request's hold; later ones add what
            // they used. One that used none (a failover) leaves the hold to the next attempt, or
            // to the request's end, which gives it back.
            let held = s.tpm_held.swap(0, std::sync::atomic::Ordering::Relaxed);
            let used = (p + c).min(i64::MAX as u64) as i64;
            let (app, now) = (&s.app, now_ms());
            app.key_tokens
                .settle(&s.key_id, limit, used - i64::from(held), now);
        }
        UsageRecord {
            request_id: s.request_id.clone(),
            client_request_id: s.client_request_id.clone(),
            attempt: self.number,
            created_at_ms: self.started_ms,
            key_id: s.key_id.clone(),
            requested_model: s.facts.model.clone(),
            endpoint: s.facts.endpoint,
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

    /// The shutdown's grace period ran out during this attempt: its usage row, with what was
    /// used so far, and the client's answer. Not the channel's fault, so its health is left alone.
    pub(super) async fn cut_off(
        &self,
        status: u16,
        usage: Option<&Usage>,
        ttft_ms: Option<u64>,
    ) -> Failure {
        let rec = self.record(
            status,
            "error",
            Some(SHUTDOWN),
            Some("the gateway shut down before the attempt finished".into()),
            usage,
            ttft_ms,
        );
        self.scope.app.usage.record(rec).await;
        Failure::Fatal(crate::server::error::ApiError::shutting_down())
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
    pub(super) async fn provider_failed(&self, perr: ProviderError, status: u16) -> Failure {
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
