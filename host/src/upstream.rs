//! Sending an adapter's request upstream: the host owns the base URL and injects the secret.

pub mod mock;
mod plain;
pub mod sse;

use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

use crate::components::adapter_api::exports::smart_router::gateway::translation::{
    Auth, HttpRequest,
};
use crate::config::Provider;

/// A response body arriving in pieces.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send>>;

/// A transport-level failure (no classified provider answer).
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to the provider: {0}")]
    Connect(String),
    #[error("the provider did not answer in time")]
    Timeout,
    #[error("the provider's response broke off: {0}")]
    Body(String),
    #[error("the provider's response is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the adapter produced an invalid request: {0}")]
    InvalidRequest(String),
}

/// Status, headers and a body stream.
pub struct UpstreamResponse {
    pub status: u16,
    /// The response's headers. From a real upstream only when it is not a success (only the
    /// adapter's `classify-error` reads them); the built-in mock always gives its content type.
    pub headers: Vec<(String, String)>,
    pub body: BodyStream,
}

/// HTTP clients (connection pooling, keep-alive): one per serving thread, so a request and the
/// connection it uses live on the same thread, and one shared by every other thread. reqwest
/// for HTTPS; plain-HTTP upstreams over hyper-util's pool directly (see `plain`).
#[derive(Clone)]
pub struct Upstream {
    connect_timeout: Duration,
    /// Index 0: threads that are not serving threads; index `n`: serving thread `n`.
    clients: std::sync::Arc<[std::sync::OnceLock<reqwest::Client>]>,
    /// The same for plain-HTTP upstreams; empty when a proxy for plain HTTP is configured.
    plain: std::sync::Arc<[std::sync::OnceLock<std::sync::Arc<plain::Pool>>]>,
}

/// Headers an adapter may not set: the host owns them.
const FORBIDDEN: [&str; 7] = [
    "authorization",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "x-api-key",
    "cookie",
];

impl Upstream {
    /// Clients for `workers` serving threads (see `server::serve`) and everything else.
    pub fn new(connect_timeout: Duration, workers: usize) -> Result<Self, reqwest::Error> {
        let clients: std::sync::Arc<[_]> =
            (0..=workers).map(|_| std::sync::OnceLock::new()).collect();
        let direct = if plain::proxied() { 0 } else { workers + 1 };
        let plain = (0..direct).map(|_| std::sync::OnceLock::new()).collect();
        let up = Upstream {
            connect_timeout,
            clients,
            plain,
        };
        // Fail at start-up, not on a first request, if no client can be built (TLS set-up).
        let first = up.build()?;
        let _ = up.clients[0].set(first);
        Ok(up)
    }

    fn build(&self) -> Result<reqwest::Client, reqwest::Error> {
        reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
    }

    /// This thread's plain-HTTP pool, unless a proxy is configured.
    fn plain(&self) -> Option<&std::sync::Arc<plain::Pool>> {
        let slot = self
            .plain
            .get(crate::server::current_worker())
            .or_else(|| self.plain.first())?;
        Some(slot.get_or_init(|| plain::Pool::new(self.connect_timeout)))
    }

    /// This thread's client. A pooled connection is driven by a task on the runtime that opened
    /// it, so each serving thread keeps its own pool.
    fn client(&self) -> &reqwest::Client {
        let shared = &self.clients[0];
        let slot = match self.clients.get(crate::server::current_worker()) {
            Some(slot) => slot,
            None => shared,
        };
        if let Some(c) = slot.get() {
            return c;
        }
        // Built once already at start-up with the same settings; should it fail now, the shared
        // client still works (its connections are just driven from another thread).
        match self.build() {
            Ok(c) => slot.get_or_init(|| c),
            Err(_) => shared.get_or_init(reqwest::Client::new),
        }
    }

    /// Sends `req` to `provider`, waiting at most `first_byte` for the response headers.
    pub async fn send(
        &self,
        provider: &Provider,
        req: HttpRequest,
        first_byte: Duration,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let headers = validate(&req)?;
        if provider.base_url.starts_with("mock:") {
            return Ok(mock::respond(&req));
        }
        let mut url = format!("{}{}", provider.base_url, req.path);
        let method = reqwest::Method::from_bytes(req.method.as_bytes())
            .map_err(|_| UpstreamError::InvalidRequest(format!("method `{}`", req.method)))?;
        let key = provider.api_key.as_ref().map(|k| k.expose());
        if let (Auth::Query(name), Some(key)) = (&req.auth, key) {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(name);
            url.push('=');
            url.push_str(&percent_encode(key));
        }
        // A URL carrying the key in its query is parsed each time: keys are not kept in caches.
        let keyed = matches!(req.auth, Auth::Query(_));
        if url.starts_with("http://")
            && let Some(pool) = self.plain()
            && let Some(target) = plain::target(&url, !keyed)
        {
            return plain::send(pool, target, method, req, headers, provider, first_byte).await;
        }
        // Its own, boxed future: inline, reqwest's state (about 2 KB) would make every request's
        // future that much larger, plain-HTTP ones included, and be copied with it.
        Box::pin(self.send_reqwest(provider, req, headers, method, url, first_byte)).await
    }

    /// [`Self::send`] through reqwest: HTTPS, a proxy from the environment, a URL only reqwest's
    /// parser takes.
    async fn send_reqwest(
        &self,
        provider: &Provider,
        req: HttpRequest,
        headers: hyper::HeaderMap,
        method: reqwest::Method,
        url: String,
        first_byte: Duration,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let key = provider.api_key.as_ref().map(|k| k.expose());
        let url = if matches!(req.auth, Auth::Query(_)) {
            reqwest::Url::parse(&url).map_err(|e| e.to_string())
        } else {
            parsed(&url)
        }
        .map_err(|e| UpstreamError::InvalidRequest(format!("URL: {e}")))?;
        let mut builder = self
            .client()
            .request(method, url)
            .timeout(provider.timeout)
            .headers(headers);
        match (&req.auth, key) {
            (Auth::Bearer, Some(key)) => builder = builder.bearer_auth(key),
            (Auth::Header(name), Some(key)) => builder = builder.header(name.as_str(), key),
            _ => {}
        }
        let send = builder.body(req.body).send();
        let resp = match tokio::time::timeout(first_byte, send).await {
            Err(_) => return Err(UpstreamError::Timeout),
            Ok(Err(e)) if e.is_timeout() => return Err(UpstreamError::Timeout),
            // Never echo the URL: it may carry a key in its query.
            Ok(Err(e)) => return Err(UpstreamError::Connect(describe(e))),
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status().as_u16();
        let headers = error_headers(resp.status(), resp.headers());
        let body = resp.bytes_stream().map(|r| {
            r.map_err(|e| {
                if e.is_timeout() {
                    UpstreamError::Timeout
                } else {
                    UpstreamError::Body(describe(e))
                }
            })
        });
        Ok(UpstreamResponse {
            status,
            headers,
            body: Box::pin(body),
        })
    }
}

/// The headers of a response that is not a success; none for a success. Only an error's are
/// read (by the adapter's `classify-error`): a success's (a score of them from most providers)
/// are not copied.
fn error_headers(status: hyper::StatusCode, headers: &hyper::HeaderMap) -> Vec<(String, String)> {
    if status.is_success() {
        return Vec::new();
    }
    headers
        .iter()
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_string(), v.to_string()))
        })
        .collect()
}

/// `url` parsed, from a per-thread cache: the same few URLs come back on every request, and
/// parsing one (host normalisation included) costs more than looking it up.
fn parsed(url: &str) -> Result<reqwest::Url, String> {
    thread_local! {
        static CACHE: UrlCache<reqwest::Url> = UrlCache::default();
    }
    cached(&CACHE, url, || {
        reqwest::Url::parse(url).map_err(|e| e.to_string())
    })
}

/// What a thread has made of the URLs it has sent to.
type UrlCache<T> = std::cell::RefCell<std::collections::HashMap<String, T>>;

/// What `make` makes of `url`, kept in `cache` (at most 1,024 URLs: past that it starts over).
fn cached<T: Clone, E>(
    cache: &'static std::thread::LocalKey<UrlCache<T>>,
    url: &str,
    make: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    cache.with_borrow_mut(|cache| {
        if let Some(made) = cache.get(url) {
            return Ok(made.clone());
        }
        let made = make()?;
        if cache.len() >= 1024 {
            cache.clear();
        }
        cache.insert(url.to_string(), made.clone());
        Ok(made)
    })
}

/// The host's checks of what an adapter asks it to send; its headers, parsed.
fn validate(req: &HttpRequest) -> Result<hyper::HeaderMap, UpstreamError> {
    let bad = |why: String| Err(UpstreamError::InvalidRequest(why));
    if !matches!(
        req.method.as_str(),
        "GET" | "POST" | "PUT" | "PATCH" | "DELETE"
    ) {
        return bad(format!("method `{}` is not allowed", req.method));
    }
    if !req.path.starts_with('/')
        || req.path.starts_with("//")
        || req.path.contains("://")
        || req
            .path
            .chars()
            .any(|c| c.is_control() || c == ' ' || c == '#' || c == '@')
    {
        return bad("the path must be a plain path starting with `/`".into());
    }
    // Room for the headers the host adds (`Host`, `Accept`, the key's), so the map is allocated
    // once rather than grown on the way out.
    let mut headers = hyper::HeaderMap::with_capacity(req.headers.len() + 3);
    for (name, value) in &req.headers {
        let auth_header = matches!(&req.auth, Auth::Header(h) if h.eq_ignore_ascii_case(name));
        // A parsed name is in lower case.
        let parsed = hyper::header::HeaderName::from_bytes(name.as_bytes());
        if auth_header
            || parsed
                .as_ref()
                .is_ok_and(|n| FORBIDDEN.contains(&n.as_str()))
        {
            return bad(format!("header `{name}` is set by the host"));
        }
        match (parsed, hyper::header::HeaderValue::from_str(value)) {
            (Ok(name), Ok(value)) => {
                headers.append(name, value);
            }
            _ => return bad(format!("header `{name}` is not a valid HTTP header")),
        }
    }
    if let Auth::Header(h) | Auth::Query(h) = &req.auth
        && (h.is_empty()
            || !h
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    {
        return bad(format!("auth name `{h}` is not valid"));
    }
    Ok(headers)
}

/// Never with the URL: it may carry a key in its query.
fn describe(e: reqwest::Error) -> String {
    plain::describe(&e.without_url())
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reads a whole body, refusing more than `limit` bytes.
pub async fn read_body(mut body: BodyStream, limit: usize) -> Result<Bytes, UpstreamError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if buf.len() + chunk.len() > limit {
            return Err(UpstreamError::TooLarge(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn auth() -> impl Strategy<Value = Auth> {
        prop_oneof![
            Just(Auth::Bearer),
            Just(Auth::None),
            "[ -~]{0,12}".prop_map(Auth::Header),
            "[ -~]{0,12}".prop_map(Auth::Query),
        ]
    }

    /// Header names an adapter might try, hostile ones included, in any case.
    fn header_name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("Host".to_string()),
            Just("AUTHORIZATION".to_string()),
            Just("x-api-key".to_string()),
            Just("Content-Length".to_string()),
            Just("Transfer-Encoding".to_string()),
            "[a-zA-Z-]{1,16}",
            "[ -~]{0,16}",
        ]
    }

    fn request() -> impl Strategy<Value = HttpRequest> {
        (
            prop_oneof![
                Just("POST".to_string()),
                Just("GET".to_string()),
                "[ -~]{0,8}"
            ],
            prop_oneof![
                "/[a-z/:.@#?=&%-]{0,40}",
                "(//|/|https?://|)[ -~]{0,40}",
                "/[\\x00-\\x7f]{0,20}",
            ],
            proptest::collection::vec((header_name(), "[ -~\\t\\r\\n]{0,16}"), 0..4),
            auth(),
        )
            .prop_map(|(method, path, headers, auth)| HttpRequest {
                method,
                path,
                headers,
                body: Vec::new(),
                auth,
            })
    }

    proptest! {
        /// Whatever an adapter returns, what passes validation goes to the provider's own host,
        /// sets none of the headers the host owns, and makes a well-formed request.
        #[test]
        fn validated_requests_stay_on_the_providers_host(req in request()) {
            if validate(&req).is_err() {
                return Ok(());
            }
            // The host appends the path to the provider's base URL, with or without a path.
            for base in ["https://api.provider.test/v1", "https://api.provider.test"] {
                let url = format!("{base}{}", req.path);
                let parsed = reqwest::Url::parse(&url);
                prop_assert!(parsed.is_ok(), "unparsable URL {url}");
                let parsed = parsed.expect("checked");
                prop_assert_eq!(parsed.host_str(), Some("api.provider.test"));
                prop_assert_eq!(parsed.port(), None);
                prop_assert!(parsed.username().is_empty() && parsed.password().is_none());
            }
            prop_assert!(reqwest::Method::from_bytes(req.method.as_bytes()).is_ok());
            for (name, value) in &req.headers {
                let lower = name.to_ascii_lowercase();
                prop_assert!(!FORBIDDEN.contains(&lower.as_str()), "{name} passed");
                prop_assert!(reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok());
                prop_assert!(reqwest::header::HeaderValue::from_str(value).is_ok());
                if let Auth::Header(h) = &req.auth {
                    prop_assert!(!h.eq_ignore_ascii_case(name));
                }
            }
        }
    }

    #[test]
    fn hostile_requests_are_refused() {
        let base = HttpRequest {
            method: "POST".into(),
            path: "/chat/completions".into(),
            headers: Vec::new(),
            body: Vec::new(),
            auth: Auth::Bearer,
        };
        assert!(validate(&base).is_ok());
        for path in [
            "//evil.test/x",
            "https://evil.test/x",
            "/x@evil.test",
            "x",
            "/a b",
            "/a#b",
        ] {
            let req = HttpRequest {
                path: path.into(),
                ..base.clone()
            };
            assert!(validate(&req).is_err(), "{path}");
        }
        for name in ["Host", "authorization", "X-Api-Key", "content-length"] {
            let req = HttpRequest {
                headers: vec![(name.into(), "x".into())],
                ..base.clone()
            };
            assert!(validate(&req).is_err(), "{name}");
        }
    }
}
