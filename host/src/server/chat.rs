//! `POST /v1/chat/completions` and `POST /v1/embeddings`: plan, then try channels in order until
//! one answers.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::auth::Caller;
use super::error::ApiError;
use crate::app::{App, Counters};
use crate::cache::{Cache, Directive, Flight, Hit};
use crate::proxy::{Failure, RequestScope, attempt};
use crate::ratelimit::{Allowance, Refused};
use crate::router::{Endpoint, Facts, plan, request_facts};
use crate::server::CarryOn;
use crate::stats::now_ms;
use crate::store::UsageRecord;

/// `POST` to one of [`CHAT_PATHS`] or [`EMBEDDINGS_PATHS`], from the connection straight (see
/// [`super::Gateway`]) or through the router (a browser's request, with its CORS layer): the
/// key, the client's request id, its `Cache-Control`, then the body up to `max_body` bytes.
pub async fn direct<B>(
    app: Arc<App>,
    req: axum::http::Request<B>,
    endpoint: Endpoint,
    max_body: usize,
) -> Response
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut parts, body) = req.into_parts();
    let caller = match Caller::from_request_parts(&mut parts, &app).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let client_id = match ClientRequestId::from_request_parts(&mut parts, &()).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let Ok(CacheControl(cache)) = CacheControl::from_request_parts(&mut parts, &()).await;
    let body = {
        use http_body_util::BodyExt;
        match http_body_util::Limited::new(body, max_body).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                Some("request_too_large"),
                "The request body is larger than the gateway accepts (system.yaml server.max_body_bytes).",
            )),
            Err(e) => Err(ApiError::invalid(format!(
                "Could not read the request body: {e}"
            ))),
        }
    };
    serve(app, caller, client_id, body, Ask { endpoint, cache }).await
}

/// The chat API's paths, with and without the `/v1` prefix.
pub const CHAT_PATHS: [&str; 2] = ["/v1/chat/completions", "/chat/completions"];
/// The embeddings API's paths, with and without the `/v1` prefix.
pub const EMBEDDINGS_PATHS: [&str; 2] = ["/v1/embeddings", "/embeddings"];

/// What the client asked for besides its body: the API, and what the answer cache may do.
#[derive(Clone, Copy)]
struct Ask {
    endpoint: Endpoint,
    cache: Directive,
}

/// The client's `Cache-Control`, as the answer cache reads it.
pub struct CacheControl(Directive);

impl<S: Send + Sync> FromRequestParts<S> for CacheControl {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let value = parts.headers.get(header::CACHE_CONTROL);
        Ok(Self(Directive::from_header(
            value.and_then(|v| v.to_str().ok()),
        )))
    }
}

/// The client's own id for a request: OpenAI's `X-Client-Request-Id`, or else an `X-Request-Id`
/// that a proxy or tracing layer in front set. Kept on the request's usage rows, named in its log
/// lines and echoed back as `X-Client-Request-Id`, beside the gateway's own `X-Request-Id`.
pub struct ClientRequestId(Option<String>);

/// The most a client's request id may hold, as OpenAI allows.
const CLIENT_ID_MAX: usize = 512;

impl<S: Send + Sync> FromRequestParts<S> for ClientRequestId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let headers = &parts.headers;
        if let Some(v) = headers.get("x-client-request-id").filter(|v| !v.is_empty()) {
            // Asked for by name: a bad one is the client's mistake, said so rather than dropped.
            return match client_id(v) {
                Some(id) => Ok(Self(Some(id))),
                None => Err(ApiError::invalid(format!(
                    "The X-Client-Request-Id header must be at most {CLIENT_ID_MAX} printable ASCII characters."
                ))),
            };
        }
        // Set by infrastructure the client may not control: a bad one is only ignored.
        Ok(Self(headers.get("x-request-id").and_then(client_id)))
    }
}

fn client_id(v: &HeaderValue) -> Option<String> {
    let b = v.as_bytes();
    let printable = b.iter().all(|c| (b' '..=b'~').contains(c));
    let id = std::str::from_utf8(b).ok()?.trim();
    (printable && !id.is_empty() && b.len() <= CLIENT_ID_MAX).then(|| id.to_string())
}

/// A request's ids: the gateway's own, and the client's when it sent one.
#[derive(Clone, Copy)]
struct Ids<'a> {
    request: &'a str,
    client: Option<&'a str>,
}

async fn serve(
    app: Arc<App>,
    caller: Caller,
    ClientRequestId(client): ClientRequestId,
    body: Result<Bytes, ApiError>,
    ask: Ask,
) -> Response {
    Counters::bump(&app.counters.requests);
    // A client that leaves while a provider is answering drops this future, not the request's
    // work: that ends as it would have (recorded, settled, cached); only the response is lost.
    let work = CarryOn::new(async move {
        let request_id = new_request_id();
        let ids = Ids {
            request: &request_id,
            client: client.as_deref(),
        };
        let mut allowances = [None; 2];
        let result = handle(&app, caller, body, ids, ask, &mut allowances).await;
        (result, allowances, request_id, client)
    });
    let (result, allowances, request_id, client) = work.await;
    let mut resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            let mut resp = e.into_response();
            let headers = resp.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&request_id) {
                headers.insert("x-request-id", v);
            }
            if let Some(v) = client.and_then(|c| HeaderValue::from_str(&c).ok()) {
                headers.insert("x-client-request-id", v);
            }
            resp
        }
    };
    for a in allowances.iter().flatten() {
        for (name, value) in a.headers() {
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp.headers_mut().insert(name, v);
            }
        }
    }
    resp
}

async fn handle(
    app: &Arc<App>,
    caller: Caller,
    body: Result<Bytes, ApiError>,
    ids: Ids<'_>,
    ask: Ask,
    allowances: &mut [Option<Allowance>; 2],
) -> Result<Response, ApiError> {
    let t0 = std::time::Instant::now();
    // The body as text, kept for the attempts: taken over without a copy when the collected
    // body owns its buffer alone (a body that came in several reads: a 31 KB conversation was
    // copied once more here, on every request).
    let text = String::from_utf8(Vec::from(body?))
        .map_err(|_| ApiError::invalid("The request body is not valid UTF-8."))?;
    let facts = request_facts(&text, ask.endpoint)?;
    let started = now_ms();
    if !caller.may_use(&facts.model) {
        let e = ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            Some("model_not_allowed"),
            format!("This key may not use the model `{}`.", facts.model),
        );
        record_unanswered(app, &caller.key_id, ids, &facts, None, started, &e).await;
        return Err(e);
    }
    let cfg = app.config.load_full();
    // An answer already given to this key for this very body: no provider, no tokens, no cost.
    let cache = (cfg.cache_ttl_secs(&facts.model))
        .filter(|_| ask.cache != Directive::Bypass)
        .map(|ttl| {
            (
                Cache::key(&caller.key_id, ask.endpoint, text.as_bytes()),
                ttl,
            )
        });
    // Held until this request's answer is stored: identical ones that arrive meanwhile wait
    // for it rather than each going to a provider.
    let mut _leading = None;
    if let Some((key, _)) = &cache {
        let mut hit = (ask.cache == Directive::Use)
            .then(|| app.cache.get(key, started))
            .flatten();
        if hit.is_none() && !facts.is_stream {
            match app.cache.lead(key) {
                Flight::Lead(leading) => {
                    _leading = Some(leading);
                    // The one before may have stored its answer and let go between the
                    // look-up above and this lead: a second look costs less than a call.
                    if ask.cache == Directive::Use {
                        hit = app.cache.get(key, now_ms());
                    }
                }
                Flight::Follow(first) if ask.cache == Directive::Use => {
                    // At most as long as the first could take to an answer, every attempt
                    // timing out.
                    let bound = cfg
                        .system
                        .first_byte_timeout
                        .saturating_mul(cfg.system.max_attempts.min(u32::MAX as usize) as u32);
                    Flight::finished(first, bound).await;
                    hit = app.cache.get(key, now_ms());
                }
                // A fresh answer is asked for: this one goes too.
                Flight::Follow(_) => {}
            }
        }
        if let Some(hit) = hit {
            Counters::bump(&app.counters.cache_hits);
            let group = cfg.groups.get(&facts.model).map(|g| g.name.clone());
            return Ok(replay(app, &caller.key_id, ids, &facts, group, hit, started).await);
        }
        Counters::bump(&app.counters.cache_misses);
    }
    let held = match admit(app, &caller, &facts, started, allowances) {
        Ok(held) => held,
        Err(e) => {
            record_unanswered(app, &caller.key_id, ids, &facts, None, started, &e).await;
            return Err(e);
        }
    };
    let comps = app.components.load_full();
    // Inline: a call into a warm strategy takes microseconds, and the epoch deadline bounds a
    // hostile one (which is quarantined after a few failures).
    let plan = match plan(app, &cfg, &comps, &facts) {
        Ok(p) => p,
        Err(e) => {
            if let (Some(limit), 1..) = (caller.tpm_limit, held) {
                // Nothing is sent: the tokens held are given back.
                let key = &caller.key_id;
                app.key_tokens
                    .settle(key, limit, -i64::from(held), now_ms());
            }
            let group = cfg.groups.get(&facts.model).map(|g| g.name.clone());
            record_unanswered(app, &caller.key_id, ids, &facts, group, started, &e).await;
            return Err(e);
        }
    };
    let scope = Arc::new(RequestScope {
        app: app.clone(),
        cfg: cfg.clone(),
        comps,
        group: plan.group.clone(),
        facts,
        body: text,
        request_id: ids.request.to_string(),
        client_request_id: ids.client.map(str::to_string),
        key_id: caller.key_id,
        key_budget: caller.budget,
        upstream_us: Default::default(),
        recorded: Default::default(),
        key_tpm: caller.tpm_limit,
        tpm_held: held.into(),
        cache,
    });

    let mut failures: Vec<(String, &'static str, String, Option<u64>)> = Vec::new();
    let mut fatal = None;
    for (n, &idx) in plan
        .channels
        .iter()
        .take(cfg.system.max_attempts)
        .enumerate()
    {
        if n > 0 {
            Counters::bump(&app.counters.failovers);
        }
        match attempt(&scope, idx, n as u32 + 1).await {
            Ok(resp) => {
                let upstream = scope.upstream_us.load(std::sync::atomic::Ordering::Relaxed);
                app.counters
                    .overhead
                    .observe((t0.elapsed().as_micros() as u64).saturating_sub(upstream));
                return Ok(resp);
            }
            Err(Failure::Fatal(e)) => {
                fatal = Some(e);
                break;
            }
            Err(Failure::Retry {
                class,
                message,
                retry_after_ms,
            }) => {
                let id = cfg.channels[idx].id.clone();
                let (request_id, client_request_id) = (ids.request, ids.client);
                tracing::info!(request_id, client_request_id, channel = %id, class, "attempt failed: {message}");
                failures.push((id, class, message, retry_after_ms));
            }
        }
    }
    let e = fatal.unwrap_or_else(|| all_failed(&failures));
    // Every channel was passed over before anything was sent (cooling down, over budget, the
    // adapter refusing the request): no attempt has a row, so the request gets one.
    if !scope.recorded.load(std::sync::atomic::Ordering::Relaxed) {
        let s = &scope;
        record_unanswered(app, &s.key_id, ids, &s.facts, s.group.clone(), started, &e).await;
    }
    Err(e)
}

/// The key's per-minute limits: takes one request, and holds the prompt estimate and the
/// answer's (its `max_tokens`, else the quota's default) from its tokens, settled by the first
/// attempt that uses some. Returns the tokens held: at most what the bucket had and a minute of
/// debt.
fn admit(
    app: &App,
    caller: &Caller,
    facts: &Facts,
    now: u64,
    allowances: &mut [Option<Allowance>; 2],
) -> Result<u32, ApiError> {
    let key = &caller.key_id;
    if let Some(limit) = caller.rpm_limit {
        match app.key_rates.take(key, limit, 1, now) {
            Ok(a) => allowances[0] = Some(a),
            Err(refused) => {
                allowances[0] = Some(refused.allowance);
                return Err(rate_limited(key, limit, refused));
            }
        }
    }
    let Some(limit) = caller.tpm_limit else {
        return Ok(0);
    };
    let held = facts
        .estimated_prompt_tokens
        .saturating_add(crate::proxy::output_estimate(facts));
    match app.key_tokens.take(key, limit, held, now) {
        Ok(a) => {
            allowances[1] = Some(a);
            Ok(a.taken)
        }
        Err(refused) => {
            allowances[1] = Some(refused.allowance);
            if let (Some(rpm), Some(a)) = (caller.rpm_limit, &mut allowances[0]) {
                // Not sent: the request taken from the key's requests per minute goes back.
                app.key_rates.settle(key, rpm, -1, now);
                a.remaining += 1;
            }
            Err(rate_limited(key, limit, refused))
        }
    }
}

/// OpenAI's answer to a request over a per-minute limit, with `Retry-After`.
fn rate_limited(key: &str, limit: u32, refused: Refused) -> ApiError {
    let wait = refused.retry_after_ms;
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_error",
        Some("rate_limit_exceeded"),
        format!(
            "Rate limit reached for key `{key}`: {limit} {} per minute. Retry in {:.1}s.",
            refused.allowance.unit.name(),
            wait as f64 / 1000.0
        ),
    )
    .with_retry_after(Some(wait.div_ceil(1000)))
}

/// The client's error when every channel tried failed.
fn all_failed(failures: &[(String, &'static str, String, Option<u64>)]) -> ApiError {
    let summary = failures
        .iter()
        .map(|(id, class, msg, _)| format!("{id}: {class} ({msg})"))
        .collect::<Vec<_>>()
        .join("; ");
    let retry_after = failures
        .iter()
        .filter_map(|f| f.3)
        .min()
        .map(|ms| ms.div_ceil(1000).max(1));
    let all = |c: &str| !failures.is_empty() && failures.iter().all(|f| f.1 == c);
    let limited = !failures.is_empty()
        && failures
            .iter()
            .all(|f| matches!(f.1, "rate_limited" | "cooling_down"));
    let message = format!("All {} channel(s) tried failed. {summary}", failures.len());
    if all("budget") {
        ApiError::new(
            StatusCode::PAYMENT_REQUIRED,
            "insufficient_quota",
            Some("budget_exceeded"),
            message,
        )
    } else if limited {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            Some("rate_limit_exceeded"),
            message,
        )
        .with_retry_after(retry_after.or(Some(10)))
    } else if all("timeout") {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_error",
            Some("upstream_timeout"),
            message,
        )
    } else if all("unsupported") {
        // No channel offers what the request asks for (`n: 3` where every channel answers one
        // choice, say): trying again will not help, so it is the client's error.
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("unsupported_by_channels"),
            message,
        )
    } else if all("daily_quota") {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            Some("daily_quota_exhausted"),
            message,
        )
    } else {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            Some("all_channels_failed"),
            message,
        )
        .with_retry_after(retry_after)
    }
}

/// The row of a request no attempt answered: attempt 0, no channel; the caller fills in how it
/// ended.
fn own_row(
    key_id: &str,
    ids: Ids<'_>,
    facts: &Facts,
    group_name: Option<String>,
    started: u64,
) -> UsageRecord {
    UsageRecord {
        request_id: ids.request.to_string(),
        client_request_id: ids.client.map(str::to_string),
        attempt: 0,
        created_at_ms: started,
        key_id: key_id.to_string(),
        requested_model: facts.model.clone(),
        endpoint: facts.endpoint,
        group_name,
        is_stream: facts.is_stream,
        latency_ms: now_ms().saturating_sub(started),
        ..UsageRecord::default()
    }
}

/// A request that no upstream answered nor was sent (refused, unroutable, every channel passed
/// over) still leaves a row: attempt 0, no channel, the client's error code as its class.
async fn record_unanswered(
    app: &App,
    key_id: &str,
    ids: Ids<'_>,
    facts: &Facts,
    group_name: Option<String>,
    started: u64,
    e: &ApiError,
) {
    app.usage
        .record(UsageRecord {
            // The request itself was at fault (a model it may not use, `n` no channel offers),
            // not the gateway nor a provider (429, 402, 502).
            outcome: if e.kind == "invalid_request_error" {
                "client_error"
            } else {
                "error"
            },
            error_class: Some(e.code.unwrap_or("no_channel").to_string()),
            error_message: Some(e.message.clone()),
            status: 0,
            ..own_row(key_id, ids, facts, group_name, started)
        })
        .await;
}

/// A cached answer, as it was first given, and its usage row: outcome `cache_hit`, the tokens
/// the answer held, no channel and no cost.
async fn replay(
    app: &App,
    key_id: &str,
    ids: Ids<'_>,
    facts: &Facts,
    group_name: Option<String>,
    hit: Hit,
    started: u64,
) -> Response {
    app.usage
        .record(UsageRecord {
            prompt_tokens: hit.prompt_tokens,
            completion_tokens: hit.completion_tokens,
            ttft_ms: facts.is_stream.then_some(0),
            status: 200,
            outcome: "cache_hit",
            ..own_row(key_id, ids, facts, group_name, started)
        })
        .await;
    let mut resp = if hit.stream {
        let events = [hit.body, Bytes::from_static(b"data: [DONE]\n\n")];
        let body = futures_util::stream::iter(events.map(Ok::<_, std::convert::Infallible>));
        let mut resp = Response::new(axum::body::Body::from_stream(body));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        resp
    } else {
        ([(header::CONTENT_TYPE, "application/json")], hit.body).into_response()
    };
    let h = resp.headers_mut();
    h.insert("x-smart-router-cache", HeaderValue::from_static("hit"));
    for (name, value) in [
        ("x-request-id", Some(ids.request)),
        ("x-client-request-id", ids.client),
        ("x-smart-router-channel", Some(hit.channel.as_str())),
    ] {
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            h.insert(name, v);
        }
    }
    resp
}

/// `req_` and 24 hex digits: the millisecond clock, then 48 random bits. Ids sort by time, so
/// the usage table's index on them grows at its end instead of touching a random page per row.
/// Written digit by digit: `format!` costs several times as much, on every request.
fn new_request_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(28);
    id.push_str("req_");
    for part in [crate::stats::now_ms(), fastrand::u64(..)] {
        for shift in (0..12).rev() {
            id.push(char::from(HEX[(part >> (shift * 4)) as usize & 0xf]));
        }
    }
    id
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_the_clock_then_random_bits_in_hex() {
        let before = crate::stats::now_ms() & 0xffff_ffff_ffff;
        let (a, b) = (super::new_request_id(), super::new_request_id());
        let after = crate::stats::now_ms() & 0xffff_ffff_ffff;
        for id in [&a, &b] {
            assert_eq!(id.len(), 28, "{id}");
            let hex = id.strip_prefix("req_").expect("prefix");
            assert!(
                hex.bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
                "{id}"
            );
            let clock = u64::from_str_radix(&hex[..12], 16).expect("hex");
            assert!(
                (before..=after).contains(&clock),
                "{id}: {before}..={after}"
            );
        }
        assert_ne!(a[16..], b[16..], "the random part differs");
    }
}
