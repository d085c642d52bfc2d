//! Test fixture: an OpenAI pass-through adapter built against the frozen 0.1.0 contract
//! (`wit/v0.1.0`), which predates embeddings. Its chat keeps working after the contract gains a
//! version; the host answers `unsupported` for its embeddings.

wit_bindgen::generate!({
    path: "../../../wit/v0.1.0",
    world: "adapter",
});

use exports::smart_router::gateway::translation::{
    Auth, ChatResponse, ErrorClass, Guest, GuestStreamTranslator, HttpRequest, ProviderError,
    RequestContext, SseEvent, StreamOutput,
};

struct Legacy;

fn failed(message: &str) -> ProviderError {
    ProviderError {
        class: ErrorClass::ServerError,
        temporary: true,
        retry_after_ms: None,
        message: message.into(),
    }
}

impl Guest for Legacy {
    type StreamTranslator = Stream;

    fn translate_request(ctx: RequestContext, body: String) -> Result<HttpRequest, ProviderError> {
        // Only the model changes: swap the client's model name for the channel's.
        let Some(start) = body.find("\"model\"") else {
            return Err(failed("no model in the request"));
        };
        let rest = &body[start + 7..];
        let open = rest.find('"').map(|i| start + 7 + i + 1);
        let close = open.and_then(|o| body[o..].find('"').map(|i| o + i));
        let (Some(open), Some(close)) = (open, close) else {
            return Err(failed("unreadable model"));
        };
        let body = format!("{}{}{}", &body[..open], ctx.model, &body[close..]);
        Ok(HttpRequest {
            method: "POST".into(),
            path: "/chat/completions".into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into_bytes(),
            auth: Auth::Bearer,
        })
    }

    fn translate_response(
        _ctx: RequestContext,
        _status: u16,
        body: Vec<u8>,
    ) -> Result<ChatResponse, ProviderError> {
        Ok(ChatResponse {
            body: String::from_utf8_lossy(&body).into_owned(),
            usage: None,
        })
    }

    fn classify_error(
        status: u16,
        _headers: Vec<(String, String)>,
        _body: Vec<u8>,
    ) -> ProviderError {
        failed(&format!("upstream status {status}"))
    }
}

/// Passes chunks through until `[DONE]`.
pub struct Stream;

impl GuestStreamTranslator for Stream {
    fn new(_ctx: RequestContext) -> Self {
        Stream
    }
    fn push(&self, event: SseEvent) -> Result<StreamOutput, ProviderError> {
        let done = event.data.trim() == "[DONE]";
        Ok(StreamOutput {
            chunks: if done || event.data.trim().is_empty() {
                Vec::new()
            } else {
                vec![event.data]
            },
            usage: None,
            done,
        })
    }
    fn finish(&self) -> Result<StreamOutput, ProviderError> {
        Ok(StreamOutput {
            chunks: Vec::new(),
            usage: None,
            done: false,
        })
    }
}

export!(Legacy);
