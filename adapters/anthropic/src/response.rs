//! Anthropic message → OpenAI `chat.completion`, plus the usage and finish-reason mapping the
//! stream shares.

use smart_router_sdk::json::{self, Value, json};
use smart_router_sdk::{ChatResponse, ErrorClass, ProviderError, RequestContext, Usage};

use crate::errors;

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
