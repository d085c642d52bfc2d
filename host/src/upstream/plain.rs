//! Plain-HTTP upstreams (a model server on the same host or network — Ollama, vLLM, llama.cpp,
//! an in-house gateway — or a sidecar) over HTTP/1 connections of our own: hyper's connection,
//! hyper-util's connector, and a pool per serving thread. reqwest's layers (redirects, retries,
//! cookies) and what they cost on every request — three copies of the headers, the URL printed
//! and parsed twice, three boxed futures — are for clients that do not do their own failover;
//! hyper-util's pool, which reqwest wraps, spawns a task per request to learn when a connection
//! is free again. Sending a request to a mock upstream and reading its answer took 63,600
//! instructions through reqwest, 34,600 through hyper-util's pool, 22,500 on a bare hyper
//! connection (callgrind, one thread, 1,000 requests).
//!
//! The pool does what hyper-util's does for HTTP/1: the most recently used idle connection first,
//! a closed one never handed out, a request retried on a new connection only when it was given to
//! a reused connection that closed before writing any of it; idle connections kept 90 s, at most
//! 256 per host. A connection goes back to the pool once hyper reports it free (its response read
//! or drained to the end); one whose response is dropped half-read is closed by hyper.
//!
//! HTTPS upstreams (TLS, HTTP/2) go through reqwest, and so does every upstream when the
//! environment names a proxy for plain HTTP (reqwest honours it, `NO_PROXY` included), or when
//! its URL is one only reqwest's URL parser takes (it normalises what `http::Uri` refuses).

use rustc_hash::FxHashMap as HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http_body_util::Full;
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1;
use hyper::header::{ACCEPT, AUTHORIZATION, HOST, HeaderName, HeaderValue};
use hyper::http::uri::Authority;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::{Instant, Sleep};

use super::{UpstreamError, UpstreamResponse};
use crate::components::adapter_api::exports::smart_router::gateway::translation::{
    Auth, HttpRequest,
};
use crate::config::Provider;

type Sender = http1::SendRequest<Full<Bytes>>;

/// How long an idle connection is kept.
const IDLE: Duration = Duration::from_secs(90);
/// Idle connections kept per host.
const IDLE_PER_HOST: usize = 256;

/// One thread's plain-HTTP connections (see the module's documentation).
pub(super) struct Pool {
    connector: HttpConnector,
    idle: Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    hosts: HashMap<Authority, Vec<(Sender, Instant)>>,
    /// When expired connections were last dropped from every host's list.
    swept: Option<Instant>,
}

impl Idle {
    /// Now and then (every 30 s of use), closes the connections idle too long to every host,
    /// those no longer asked for included, so they do not stay open for good.
    fn sweep(&mut self, now: Instant) {
        if self
            .swept
            .is_some_and(|at| now.duration_since(at) < IDLE / 3)
        {
            return;
        }
        self.swept = Some(now);
        self.hosts.retain(|_, list| {
            list.retain(|(s, since)| !s.is_closed() && now.duration_since(*since) < IDLE);
            !list.is_empty()
        });
    }
}

impl Pool {
    /// Connections set up as reqwest sets up its own: keep-alive probes every 15 s (3 unanswered
    /// end the connection), no Nagle, `connect_timeout` to connect.
    pub(super) fn new(connect_timeout: Duration) -> Arc<Pool> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(15)));
        http.set_keepalive_interval(Some(Duration::from_secs(15)));
        http.set_keepalive_retries(Some(3));
        Arc::new(Pool {
            connector: http,
            idle: Mutex::new(Idle::default()),
        })
    }

    /// The most recently used open idle connection to `host`.
    fn take(&self, host: &Authority) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.sweep(Instant::now());
        let list = idle.hosts.get_mut(host)?;
        while let Some((sender, since)) = list.pop() {
            if !sender.is_closed() && since.elapsed() < IDLE {
                return Some(sender);
            }
        }
        None
    }

    /// `sender`'s connection, its response read to the end, kept for the next request to `host`.
    fn put(&self, host: Authority, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.sweep(now);
        let list = idle.hosts.entry(host).or_default();
        if list.len() < IDLE_PER_HOST {
            list.push((sender, now));
        }
    }

    /// A new connection to `target`, its driving task spawned on this thread's runtime.
    async fn connect(&self, target: &Target) -> Result<Sender, UpstreamError> {
        use tower_service::Service;
        let mut connector = self.connector.clone();
        let error = |e: &(dyn std::error::Error + 'static)| {
            if timed_out(e) {
                UpstreamError::Timeout
            } else {
                UpstreamError::Connect(describe(e))
            }
        };
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|e| error(&e))?;
        let io = connector
            .call(target.uri.clone())
            .await
            .map_err(|e| error(&e))?;
        let (sender, conn) = http1::handshake(io).await.map_err(|e| error(&e))?;
        tokio::spawn(async move {
            // Its errors reach the request it was serving, if any.
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Sends `request` on an idle connection to `target`, or a new one: a request the reused
    /// connection closed before writing goes again on another.
    async fn exchange(
        &self,
        target: &Target,
        mut request: hyper::Request<Full<Bytes>>,
    ) -> Result<(hyper::Response<Incoming>, Sender), UpstreamError> {
        loop {
            let (mut sender, reused) = match self.take(&target.host) {
                Some(sender) => (sender, true),
                None => (self.connect(target).await?, false),
            };
            // A reused connection may still be finishing the response before.
            if reused && sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(resp) => return Ok((resp, sender)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => {
                        let e = e.into_error();
                        return Err(if timed_out(&e) {
                            UpstreamError::Timeout
                        } else {
                            UpstreamError::Connect(describe(&e))
                        });
                    }
                },
            }
        }
    }
}

/// Where a plain-HTTP URL's requests go, worked out once per URL.
pub(super) struct Target {
    /// `http://` and the authority, for the connector (never the path or query, which may hold
    /// a key).
    uri: hyper::Uri,
    /// The request target: the path and query (origin form).
    path: hyper::Uri,
    /// The pool's key.
    host: Authority,
    /// The `Host` header: the host, and the port unless it is 80.
    host_header: HeaderValue,
}

/// Whether the environment names a proxy for plain HTTP.
pub(super) fn proxied() -> bool {
    ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()))
}

/// Where `url`'s requests go, when it is a plain `http://` URL with a host and no user name or
/// password in it, made only of characters reqwest's URL parser would send as they are (no `.`
/// or `..` segment it would resolve, nothing it would percent-encode); `None` sends it through
/// reqwest instead, so every URL reaches the wire as it did. Targets are kept per thread unless
/// `cache` is false (a URL carrying a key in its query is never kept).
pub(super) fn target(url: &str, cache: bool) -> Option<Arc<Target>> {
    thread_local! {
        static CACHE: super::UrlCache<Arc<Target>> = super::UrlCache::default();
    }
    let parse = || {
        let plain = url
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~/?=&%+:,;!*'()$[]@".contains(&b))
            && !url.contains("/.");
        if !plain {
            return None;
        }
        let uri = hyper::Uri::try_from(url).ok()?;
        let host = uri.authority()?.clone();
        if uri.scheme() != Some(&hyper::http::uri::Scheme::HTTP)
            || host.as_str().contains('@')
            || host.host().is_empty()
        {
            return None;
        }
        let host_header = match host.port_u16() {
            Some(port) if port != 80 => HeaderValue::from_str(&format!("{}:{port}", host.host())),
            _ => HeaderValue::from_str(host.host()),
        }
        .ok()?;
        let path = match uri.path_and_query() {
            Some(p) if p.as_str() != "/" => hyper::Uri::from_parts({
                let mut parts = hyper::http::uri::Parts::default();
                parts.path_and_query = Some(p.clone());
                parts
            })
            .ok()?,
            _ => hyper::Uri::from_static("/"),
        };
        let uri = hyper::Uri::builder()
            .scheme(hyper::http::uri::Scheme::HTTP)
            .authority(host.clone())
            .path_and_query("/")
            .build()
            .ok()?;
        Some(Arc::new(Target {
            uri,
            path,
            host,
            host_header,
        }))
    };
    if cache {
        super::cached(&CACHE, url, || parse().ok_or(())).ok()
    } else {
        parse()
    }
}

/// Sends `req` to `target` with the adapter's `headers` (`req.headers` as `validate` parsed
/// them): the response's headers within `first_byte` and the whole exchange within the
/// provider's timeout (reqwest's total timeout), its key in the header `req.auth` names.
pub(super) async fn send(
    pool: &Arc<Pool>,
    target: Arc<Target>,
    method: hyper::Method,
    req: HttpRequest,
    headers: hyper::HeaderMap,
    provider: &Provider,
    first_byte: Duration,
) -> Result<UpstreamResponse, UpstreamError> {
    let key = provider.api_key.as_ref().map(|k| k.expose());
    let total = provider.timeout;
    let deadline = Instant::now() + total;
    let mut request = hyper::Request::new(Full::new(Bytes::from(req.body)));
    *request.method_mut() = method;
    *request.uri_mut() = target.path.clone();
    *request.headers_mut() = headers;
    let headers = request.headers_mut();
    headers.insert(HOST, target.host_header.clone());
    // What reqwest sends when the adapter names no `Accept` (a stream's is `text/event-stream`).
    if !headers.contains_key(ACCEPT) {
        headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
    }
    let secret = |text: &str| {
        let mut v = HeaderValue::from_str(text).map_err(|_| {
            UpstreamError::Connect("the provider's key is not a valid header value".into())
        })?;
        v.set_sensitive(true);
        Ok::<_, UpstreamError>(v)
    };
    match (&req.auth, key) {
        (Auth::Bearer, Some(key)) => {
            headers.insert(AUTHORIZATION, secret(&["Bearer ", key].concat())?);
        }
        (Auth::Header(name), Some(key)) => {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| UpstreamError::InvalidRequest(format!("auth name `{name}`")))?;
            headers.insert(name, secret(key)?);
        }
        _ => {}
    }
    let (resp, sender) =
        match tokio::time::timeout(first_byte.min(total), pool.exchange(&target, request)).await {
            Err(_) => return Err(UpstreamError::Timeout),
            Ok(result) => result?,
        };
    let status = resp.status().as_u16();
    let headers = super::error_headers(resp.status(), resp.headers());
    Ok(UpstreamResponse {
        status,
        headers,
        body: Box::pin(PlainBody {
            body: resp.into_body(),
            at: deadline,
            deadline: None,
            done: false,
            free: Some((pool.clone(), target, sender)),
        }),
    })
}

/// Whether `e` or one of its causes is an I/O time-out (the connector's connect timeout, a
/// keep-alive probe unanswered): reqwest's `is_timeout`.
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// An error and its causes, one line. hyper's and the connector's errors carry no URL (which may
/// hold a key).
pub(super) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A response body's data, ending in a timeout error once the exchange's deadline passes.
struct PlainBody {
    body: Incoming,
    /// When the deadline passes: checked as data arrives, which does not poll the timer.
    at: Instant,
    /// The timer, set the first time the body waits for data.
    deadline: Option<Pin<Box<Sleep>>>,
    done: bool,
    /// The connection, back to its pool once the body has been read (see `release`).
    free: Option<(Arc<Pool>, Arc<Target>, Sender)>,
}

impl PlainBody {
    /// Gives the connection back to the pool: at once when hyper reports it free; otherwise once
    /// hyper has read (or drained) the rest of the response — a stream's reader stops at its
    /// last event, before the body's end — unless hyper closes it instead (an upstream that
    /// answered early and never read the whole request, say: that connection is not reused).
    fn release(&mut self) {
        let Some((pool, target, mut sender)) = self.free.take() else {
            return;
        };
        if sender.is_ready() {
            pool.put(target.host.clone(), sender);
        } else if !sender.is_closed()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                if sender.ready().await.is_ok() {
                    pool.put(target.host.clone(), sender);
                }
            });
        }
    }
}

impl Drop for PlainBody {
    fn drop(&mut self) {
        self.release();
    }
}

impl Stream for PlainBody {
    type Item = Result<Bytes, UpstreamError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(_))) if Instant::now() >= self.at => {
                    self.done = true;
                    return Poll::Ready(Some(Err(UpstreamError::Timeout)));
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => return Poll::Ready(Some(Ok(data))),
                    // Trailers: nothing a caller reads.
                    Err(_) => continue,
                },
                Poll::Ready(Some(Err(e))) => {
                    self.done = true;
                    let err = if timed_out(&e) {
                        UpstreamError::Timeout
                    } else {
                        UpstreamError::Body(describe(&e))
                    };
                    return Poll::Ready(Some(Err(err)));
                }
                Poll::Ready(None) => {
                    self.done = true;
                    self.release();
                    return Poll::Ready(None);
                }
                Poll::Pending => break,
            }
        }
        let at = self.at;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.done = true;
                Poll::Ready(Some(Err(UpstreamError::Timeout)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("tcp connect error")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_timed_out_cause_is_a_timeout_and_others_are_not() {
        let timed = Wrapped(std::io::Error::from(std::io::ErrorKind::TimedOut));
        let refused = Wrapped(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(timed_out(&timed));
        assert!(!timed_out(&refused));
        assert!(describe(&refused).starts_with("tcp connect error: "));
    }

    #[test]
    fn only_urls_reqwest_would_send_as_they_are_take_the_direct_pool() {
        for url in [
            "http://127.0.0.1:8080/v1/chat/completions",
            "http://localhost:11434/api/chat?stream=true",
            "http://[::1]:8000/v1/models/a%2Fb",
        ] {
            assert!(target(url, false).is_some(), "{url}");
        }
        for url in [
            "https://api.openai.com/v1/chat/completions",
            "http://user:pass@host/v1",
            "http://host/v1/models/a/../x",
            "http://host/v1/./x",
            "http://host/v1/caf\u{e9}",
            "http://host/v1/{x}",
            "http://host/v1/a\\b",
            "http://host/v1/\"q\"",
            "http:///v1",
        ] {
            assert!(target(url, false).is_none(), "{url}");
        }
    }
}
