//! Plain-HTTP upstreams (a model server on the same host or network — Ollama, vLLM, llama.cpp,
//! an in-house gateway — or a sidecar) over hyper-util's connection pool directly: the pool
//! reqwest itself wraps, without the layers a gateway that does its own failover has no use for
//! (redirects, retries, cookies) and what they cost on every request: three copies of the
//! headers, the URL printed and parsed twice, three boxed futures. Sending a request to a mock
//! upstream and reading its answer took 34,600 instructions this way against 63,600 through
//! reqwest (callgrind, one thread, 1,000 requests).
//!
//! HTTPS upstreams (TLS, HTTP/2) go through reqwest, and so does every upstream when the
//! environment names a proxy for plain HTTP (reqwest honours it, `NO_PROXY` included), or when
//! its URL is one only reqwest's URL parser takes (it normalises what `http::Uri` refuses).

use std::cell::RefCell;
use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http_body_util::Full;
use hyper::body::{Body, Incoming};
use hyper::header::{ACCEPT, AUTHORIZATION, HeaderName, HeaderValue};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::{Instant, Sleep};

use super::{UpstreamError, UpstreamResponse};
use crate::components::adapter_api::exports::smart_router::gateway::translation::{
    Auth, HttpRequest,
};

pub(super) type PlainClient = Client<HttpConnector, Full<Bytes>>;

/// A pool with reqwest's settings as `Upstream` configures it: keep-alive probes every 15 s
/// (3 unanswered end the connection), no Nagle, idle connections kept 90 s, at most 256 per host.
pub(super) fn client(connect_timeout: Duration) -> PlainClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(15)));
    http.set_keepalive_interval(Some(Duration::from_secs(15)));
    http.set_keepalive_retries(Some(3));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .pool_timer(TokioTimer::new())
        .build(http)
}

/// Whether the environment names a proxy for plain HTTP.
pub(super) fn proxied() -> bool {
    ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()))
}

/// `url` as a URI this client can send to, when it is a plain `http://` URL with a host and no
/// user name or password in it, made only of characters reqwest's URL parser would send as they
/// are (no `.` or `..` segment it would resolve, nothing it would percent-encode); `None` sends
/// it through reqwest instead, so every URL reaches the wire as it did. Parsed URIs are kept
/// per thread unless `cache` is false (a URL carrying a key in its query is never kept).
pub(super) fn uri(url: &str, cache: bool) -> Option<hyper::Uri> {
    thread_local! {
        static CACHE: RefCell<HashMap<String, hyper::Uri>> = RefCell::new(HashMap::new());
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
        let authority = uri.authority()?;
        (uri.scheme() == Some(&hyper::http::uri::Scheme::HTTP)
            && !authority.as_str().contains('@')
            && !authority.host().is_empty())
        .then_some(uri)
    };
    if !cache {
        return parse();
    }
    CACHE.with_borrow_mut(|cache| {
        if let Some(u) = cache.get(url) {
            return Some(u.clone());
        }
        let u = parse()?;
        if cache.len() >= 1024 {
            cache.clear();
        }
        cache.insert(url.to_string(), u.clone());
        Some(u)
    })
}

/// Sends `req` to `uri`: the response's headers within `first_byte` and the whole exchange
/// within `total` (reqwest's total timeout), the key in the header `req.auth` names.
pub(super) async fn send(
    client: &PlainClient,
    uri: hyper::Uri,
    method: hyper::Method,
    req: HttpRequest,
    key: Option<&str>,
    first_byte: Duration,
    total: Duration,
) -> Result<UpstreamResponse, UpstreamError> {
    let deadline = Instant::now() + total;
    let mut request = hyper::Request::new(Full::new(Bytes::from(req.body)));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    for (name, value) in &req.headers {
        // `validate` has checked both.
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            return Err(UpstreamError::InvalidRequest(format!(
                "header `{name}` is not a valid HTTP header"
            )));
        };
        headers.append(name, value);
    }
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
            headers.insert(AUTHORIZATION, secret(&format!("Bearer {key}"))?);
        }
        (Auth::Header(name), Some(key)) => {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| UpstreamError::InvalidRequest(format!("auth name `{name}`")))?;
            headers.insert(name, secret(key)?);
        }
        _ => {}
    }
    let resp = match tokio::time::timeout(first_byte.min(total), client.request(request)).await {
        Err(_) => return Err(UpstreamError::Timeout),
        Ok(Err(e)) if timed_out(&e) => return Err(UpstreamError::Timeout),
        Ok(Err(e)) => return Err(UpstreamError::Connect(describe(&e))),
        Ok(Ok(resp)) => resp,
    };
    let status = resp.status().as_u16();
    let headers = super::error_headers(resp.status(), resp.headers());
    Ok(UpstreamResponse {
        status,
        headers,
        body: Box::pin(PlainBody {
            body: resp.into_body(),
            at: deadline,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            done: false,
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

/// An error and its causes, one line. hyper-util's errors carry no URL (which may hold a key).
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
    deadline: Pin<Box<Sleep>>,
    done: bool,
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
                    return Poll::Ready(None);
                }
                Poll::Pending => break,
            }
        }
        match self.deadline.as_mut().poll(cx) {
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
            assert!(uri(url, false).is_some(), "{url}");
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
            assert!(uri(url, false).is_none(), "{url}");
        }
    }
}
