//! Anthropic message → OpenAI `chat.completion`, plus the usage and finish-reason mapping the
//! stream shares.

use smart_router_sdk::json::{self, Value, json};
use smart_router_sdk::{ChatResponse, ErrorClass, ProviderError, RequestContext, Usage};

use crate::errors;
use smart_router_sdk::raw::{Members, is_string, string, tree};

/// Anthropic's token counts, kept as reported.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tokens {
    input: u64,
    cache_read: u64,
    cache_creation: u64,
    output: u64,
}

impl Tokens {
    /// Takes the counts present in an Anthropic `usage` object; absent ones keep their value.
    pub fn update(&mut self, usage: &Value) {
        let fields = [
            ("input_tokens", &mut self.input),
            ("cache_read_input_tokens", &mut self.cache_read),
            ("cache_creation_input_tokens", &mut self.cache_creation),
            ("output_tokens", &mut self.output),
        ];
        for (key, slot) in fields {
            if let Some(n) = usage.get(key).and_then(Value::as_u64) {
                *slot = n;
            }
        }
    }

    /// OpenAI counts prompt tokens with the cached ones included.
    fn prompt(&self) -> u64 {
        self.input + self.cache_read + self.cache_creation
    }

    /// The OpenAI `usage` object.
    pub fn openai(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt(),
            "completion_tokens": self.output,
            "total_tokens": self.prompt() + self.output,
            "prompt_tokens_details": { "cached_tokens": self.cache_read },
        })
    }

    /// The WIT record.
    pub fn wit(&self) -> Usage {
        let n = |v: u64| v.min(u64::from(u32::MAX)) as u32;
        Usage {
            prompt_tokens: n(self.prompt()),
            completion_tokens: n(self.output),
            cached_tokens: n(self.cache_read),
            reasoning_tokens: 0,
        }
    }
}

/// `stop_reason` → `finish_reason`.
pub fn finish_reason(stop_reason: Option<&str>) -> Value {
    match stop_reason {
        None => Value::Null,
        Some("max_tokens") => "length".into(),
        Some("tool_use") => "tool_calls".into(),
        Some("refusal") => "content_filter".into(),
        // end_turn, stop_sequence, pause_turn and anything newer.
        Some(_) => "stop".into(),
    }
}

fn server(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ErrorClass::ServerError, message)
}

pub fn translate(
    ctx: &RequestContext,
    status: u16,
    body: &[u8],
) -> Result<ChatResponse, ProviderError> {
    match copied(ctx, body) {
        Some(done) => Ok(done),
        None => built(ctx, status, body),
    }
}

/// The usual answer (text, no tool calls or thinking) with its text copied as the provider wrote
/// it, escapes and all; `None` for anything else, which [`built`] translates.
fn copied(ctx: &RequestContext, body: &[u8]) -> Option<ChatResponse> {
    let msg: Members<'_> = json::from_slice(body).ok()?;
    if msg.get("type").is_some_and(|t| t.get() != r#""message""#) {
        return None;
    }
    let blocks: Vec<Members<'_>> = json::from_str(msg.get("content")?.get()).ok()?;
    // One text block whose text is a string, or none at all.
    let text = match blocks.as_slice() {
        [] => None,
        [block] if block.get("type")?.get() == r#""text""# => {
            Some(block.get("text").copied().filter(|t| is_string(t))?)
        }
        _ => return None,
    };
    let id = msg.get("id").copied().filter(|v| is_string(v));
    let model = msg.get("model").copied().filter(|v| is_string(v));
    let stop_reason = string(msg.get("stop_reason").copied());
    let mut tokens = Tokens::default();
    let usage = msg.get("usage").map(|u| tree(u));
    if let Some(u) = &usage {
        tokens.update(u);
    }
    let mut out = String::with_capacity(body.len() + 256);
    // `"chatcmpl-` and the provider's id inside its own quotes.
    out.push_str(r#"{"id":"chatcmpl-"#);
    out.push_str(id.map_or(r#"""#, |v| &v.get()[1..]));
    out.push_str(r#","object":"chat.completion","created":0,"model":"#);
    match model {
        Some(m) => out.push_str(m.get()),
        None => out.push_str(&Value::String(ctx.model.clone()).to_string()),
    }
    out.push_str(r#","choices":[{"index":0,"message":{"role":"assistant","content":"#);
    out.push_str(text.map_or("null", |t| t.get()));
    out.push_str(r#"},"logprobs":null,"finish_reason":"#);
    out.push_str(&finish_reason(stop_reason.as_deref()).to_string());
    out.push_str(r#"}],"usage":"#);
    out.push_str(&tokens.openai().to_string());
    out.push('}');
    Some(ChatResponse {
        body: out,
        usage: usage.map(|_| tokens.wit()),
    })
}

/// The answer built as a value: several blocks, thinking, tool calls, errors.
fn built(ctx: &RequestContext, status: u16, body: &[u8]) -> Result<ChatResponse, ProviderError> {
    let msg: Value = json::from_slice(body)
        .map_err(|e| server(format!("the provider answered with invalid JSON: {e}")))?;
    if msg.get("type").and_then(Value::as_str) == Some("error") {
        return Err(errors::classify(status, &[], &msg));
    }
    let blocks = msg
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| server("the provider's response has no `content`"))?;

    let mut text: Option<String> = None;
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                let piece = block.get("text").and_then(Value::as_str).unwrap_or("");
                text.get_or_insert_with(String::new).push_str(piece);
            }
            Some("thinking") => {
                let piece = block.get("thinking").and_then(Value::as_str).unwrap_or("");
                reasoning.push_str(piece);
            }
            Some("tool_use") => {
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                tool_calls.push(json!({
                    "id": block.get("id").cloned().unwrap_or_default(),
                    "type": "function",
                    "function": {
                        "name": block.get("name").cloned().unwrap_or_default(),
                        "arguments": input.to_string(),
                    },
                }));
            }
            _ => {}
        }
    }

    let mut message = json!({ "role": "assistant", "content": text });
    if !reasoning.is_empty() {
        message["reasoning_content"] = reasoning.into();
    }
    if !tool_calls.is_empty() {
        message["tool_calls"] = tool_calls.into();
    }
    let mut tokens = Tokens::default();
    if let Some(usage) = msg.get("usage") {
        tokens.update(usage);
    }
    let id = msg.get("id").and_then(Value::as_str).unwrap_or("");
    let model = msg
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(&ctx.model);
    let stop_reason = msg.get("stop_reason").and_then(Value::as_str);
    let completion = json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(stop_reason),
        }],
        "usage": tokens.openai(),
    });
    Ok(ChatResponse {
        body: completion.to_string(),
        usage: msg.get("usage").map(|_| tokens.wit()),
    })
}
