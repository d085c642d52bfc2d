//! `gemini`: Google's Generative Language API (Gemini, `v1beta`): `models/{model}:generateContent`
//! and `:streamGenerateContent?alt=sse`, and `:batchEmbedContents` for embeddings.
//!
//! Requests are translated from OpenAI `chat.completions` (system messages lifted to
//! `systemInstruction`, turns mapped to `user` / `model` and merged, tool calls and results turned
//! into `functionCall` / `functionResponse` parts, images into `inlineData` / `fileData`, JSON
//! schemas cleaned of keywords Gemini refuses); responses and event streams are translated back
//! into `chat.completion` / `chat.completion.chunk` objects; errors are classified from Google's
//! `{"error": {"code": …, "message": …, "status": …, "details": […]}}` bodies.
//!
//! Provider options (`providers.yaml` → `options`):
//! - `api_version: v1beta` — the path's API version (this is the default);
//! - `safety_settings: [{category: …, threshold: …}]` — sent as `safetySettings`;
//! - `include_thoughts: true` — ask thinking models for thought summaries (`reasoning_content`);
//! - `embedding_task_type: RETRIEVAL_QUERY` — sent as each embedding request's `taskType`;
//! - `headers: {name: value}` — extra headers.

mod contents;
mod embed;
mod errors;
mod request;
mod response;
mod schema;
mod stream;

use smart_router_sdk::json::{self, Value};
use smart_router_sdk::{
    Adapter, ChatResponse, HttpRequest, ProviderError, RequestContext, export_adapter,
};

struct Gemini;

impl Adapter for Gemini {
    type Stream = stream::GeminiStream;

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

    fn translate_embeddings_request(
        ctx: &RequestContext,
        body: &str,
    ) -> Result<HttpRequest, ProviderError> {
        embed::translate_request(ctx, body)
    }

    fn translate_embeddings_response(
        ctx: &RequestContext,
        status: u16,
        body: &[u8],
    ) -> Result<ChatResponse, ProviderError> {
        embed::translate_response(ctx, status, body)
    }
}

export_adapter!(Gemini);
