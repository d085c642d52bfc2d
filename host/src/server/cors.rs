//! Cross-origin requests from browsers (a chat page calling the gateway with OpenAI's JavaScript
//! SDK, say), answered as OpenAI's API answers them. Only requests that carry an `Origin`
//! header are touched: everything else — every SDK, curl and server-side client — passes through
//! as if this layer were not there.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::app::App;
use crate::config::CorsOrigins;

/// Response headers a page's script may read (the browser hides the others).
const EXPOSED: &str = "x-request-id, x-smart-router-channel, retry-after";
/// What a preflight allows when the browser names no headers.
const DEFAULT_HEADERS: &str = "authorization, content-type";
/// How long a browser may cache a preflight's answer (browsers cap it lower: Chrome at 2 h).
const MAX_AGE: &str = "86400";

/// The middleware: answers preflights and marks allowed origins' responses.
pub async fn apply(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let Some(origin) = req.headers().get(header::ORIGIN).cloned() else {
        return next.run(req).await;
    };
    let allow = match &app.config.load().system.cors_origins {
        CorsOrigins::Any => HeaderValue::from_static("*"),
        CorsOrigins::List(list) if list.iter().any(|o| o.as_bytes() == origin.as_bytes()) => origin,
        // Not an origin we serve: the browser keeps the answer from the page.
        CorsOrigins::List(_) => return next.run(req).await,
    };
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let requested = req
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .cloned()
            .unwrap_or(HeaderValue::from_static(DEFAULT_HEADERS));
        let mut response = StatusCode::NO_CONTENT.into_response();
        let h = response.headers_mut();
        mark(h, allow);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested);
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(MAX_AGE),
        );
        return response;
    }
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    mark(h, allow);
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED),
    );
    response
}

/// `Access-Control-Allow-Origin`, and `Vary: Origin` when the answer depends on the origin.
fn mark(h: &mut HeaderMap, allow: HeaderValue) {
    if allow != "*" {
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
}
