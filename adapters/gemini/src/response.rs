//! Gemini `GenerateContentResponse` → OpenAI `chat.completion`, plus the usage, finish-reason and
//! tool-call mapping the stream shares.

use smart_router_sdk::json::{self, Value, json};
use smart_router_sdk::{ChatResponse, ErrorClass, ProviderError, RequestContext, Usage};

use crate::errors;

/// Gemini's token counts (`usageMetadata`), kept as reported.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tokens {
    prompt: u64,
    candidates: u64,
    thoughts: u64,
    cached: u64,
}

impl Tokens {
    pub fn from_metadata(usage: &Value) -> Self {
        let n = |key: &str| usage.get(key).and_then(Value::as_u64).unwrap_or(0);
        Tokens {
            prompt: n("promptTokenCount"),
            candidates: n("candidatesTokenCount"),
            thoughts: n("thoughtsTokenCount"),
            cached: n("cachedContentTokenCount"),
        }
    }

    /// OpenAI counts reasoning tokens as completion tokens.
    fn completion(&self) -> u64 {
        self.candidates + self.thoughts
    }

    /// The OpenAI `usage` object.
    pub fn openai(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion(),
            "total_tokens": self.prompt + self.completion(),
            "prompt_tokens_details": { "cached_tokens": self.cached },
            "completion_tokens_details": { "reasoning_tokens": self.thoughts },
        })
    }

    /// The WIT record.
    pub fn wit(&self) -> Usage {
        let n = |v: u64| v.min(u64::from(u32::MAX)) as u32;
        Usage {
            prompt_tokens: n(self.prompt),
            completion_tokens: n(self.completion()),
            cached_tokens: n(self.cached),
            reasoning_tokens: n(self.thoughts),
        }
    }
}

/// `finishReason` → `finish_reason`; a candidate that called functions stopped for them.
pub fn finish_reason(reason: Option<&str>, has_calls: bool) -> Value {
    match reason {
        None | Some("FINISH_REASON_UNSPECIFIED") => Value::Null,
        Some("MAX_TOKENS") => "length".into(),
        Some("SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII") => {
            "content_filter".into()
        }
        Some(_) if has_calls => "tool_calls".into(),
        // STOP, LANGUAGE, OTHER, MALFORMED_FUNCTION_CALL and anything newer.
        Some(_) => "stop".into(),
    }
}

/// The index a candidate reports, or its position.
pub fn candidate_index(candidate: &Value, position: usize) -> u64 {
    candidate
        .get("index")
        .and_then(Value::as_u64)
        .unwrap_or(position as u64)
}

/// A `functionCall` part → an OpenAI tool call (without the stream's `index`).
pub fn tool_call(candidate: u64, n: usize, call: &Value) -> Value {
    let args = call.get("args").cloned().unwrap_or_else(|| json!({}));
    json!({
        "id": format!("call_{candidate}_{n}"),
        "type": "function",
        "function": {
            "name": call.get("name").cloned().unwrap_or_default(),
            "arguments": args.to_string(),
        },
    })
}

/// A prompt Gemini refused outright: `promptFeedback.blockReason` and no candidates.
pub fn blocked(v: &Value) -> Option<ProviderError> {
    let reason = v
        .get("promptFeedback")
        .and_then(|f| f.get("blockReason"))
        .and_then(Value::as_str)?;
    let candidates = v.get("candidates").and_then(Value::as_array);
    if candidates.is_some_and(|c| !c.is_empty()) {
        return None;
    }
    let message = format!("the provider blocked the prompt ({reason})");
    Some(ProviderError::new(ErrorClass::ContentFiltered, message))
}

fn server(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ErrorClass::ServerError, message)
}

/// One candidate → an OpenAI choice.
fn choice(candidate: &Value, position: usize) -> Value {
    let index = candidate_index(candidate, position);
    let parts = candidate
        .get("content")
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array);
    let mut text: Option<String> = None;
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    for part in parts.into_iter().flatten() {
        if let Some(call) = part.get("functionCall") {
            tool_calls.push(tool_call(index, tool_calls.len(), call));
        } else if let Some(piece) = part.get("text").and_then(Value::as_str) {
            if part.get("thought").and_then(Value::as_bool) == Some(true) {
                reasoning.push_str(piece);
            } else {
                text.get_or_insert_with(String::new).push_str(piece);
            }
        }
    }
    let mut message = json!({ "role": "assistant", "content": text });
    if !reasoning.is_empty() {
        message["reasoning_content"] = reasoning.into();
    }
    let reason = candidate.get("finishReason").and_then(Value::as_str);
    let finish = finish_reason(reason.or(Some("STOP")), !tool_calls.is_empty());
    if !tool_calls.is_empty() {
        message["tool_calls"] = tool_calls.into();
    }
    json!({ "index": index, "message": message, "logprobs": null, "finish_reason": finish })
}

pub fn translate(
    ctx: &RequestContext,
    status: u16,
    body: &[u8],
) -> Result<ChatResponse, ProviderError> {
    let v: Value = json::from_slice(body)
        .map_err(|e| server(format!("the provider answered with invalid JSON: {e}")))?;
    if v.get("error").is_some() {
        return Err(errors::classify(status, &[], &v));
    }
    if let Some(e) = blocked(&v) {
        return Err(e);
    }
    let candidates = v
        .get("candidates")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| server("the provider's response has no candidates"))?;
    let choices: Vec<Value> = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| choice(c, i))
        .collect();
    let metadata = v.get("usageMetadata").filter(|u| u.is_object());
    let tokens = metadata.map(Tokens::from_metadata).unwrap_or_default();
    let id = v
        .get("responseId")
        .and_then(Value::as_str)
        .unwrap_or("gemini");
    let completion = json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion",
        "created": 0,
        "model": ctx.model,
        "choices": choices,
        "usage": tokens.openai(),
    });
    Ok(ChatResponse {
        body: completion.to_string(),
        usage: metadata.map(|_| tokens.wit()),
    })
}
