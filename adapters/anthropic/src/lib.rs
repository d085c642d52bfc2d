//! `anthropic`: Anthropic's Messages API (`POST /v1/messages`).
//!
//! Requests are translated from OpenAI `chat.completions` (system messages lifted to `system`,
//! same-role turns merged, tool calls and results turned into `tool_use` / `tool_result` blocks,
//! images into `image` blocks); responses and event streams are translated back into
//! `chat.completion` / `chat.completion.chunk` objects; errors are classified from Anthropic's
//! `{"type": "error", "error": {"type": …, "message": …}}` bodies.
//!
//! Provider options (`providers.yaml` → `options`):
//! - `anthropic_version: "2023-06-01"` — the `anthropic-version` header (this is the default);
//! - `headers: {name: value}` — extra headers (`anthropic-beta`, …).

mod errors;
mod request;
mod response;
mod stream;

use smart_router_sdk::json::{self, Value};
use smart_router_sdk::{
    Adapter, ChatResponse, HttpRequest, ProviderError, RequestContext, export_adapter,
};

struct Anthropic;

impl Adapter for Anthropic {
    type Stream = stream::AnthropicStream;

    fn translate_request(ctx: &RequestContext, body: &str) -> Result<HttpRequest, ProviderError> {
        request::translate(ctx, body)
    }

    fn translate_response(
        ctx: &RequestContext,
        status: u16,
        body: &[u8],
    ) -> Result<ChatResponse, ProviderError> {
        response::translate(ctx, status, body)
    }

    fn classify_error(status: u16, headers: &[(String, String)], body: &[u8]) -> ProviderError {
        let body = json::from_slice::<Value>(body).unwrap_or(Value::Null);
        errors::classify(status, headers, &body)
    }
}

export_adapter!(Anthropic);
