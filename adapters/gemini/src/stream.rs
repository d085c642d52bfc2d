//! Gemini's `alt=sse` stream (one `GenerateContentResponse` per event) → OpenAI
//! `chat.completion.chunk` objects.

use std::collections::{BTreeMap, BTreeSet};

use smart_router_sdk::json::{self, Value, json};
use smart_router_sdk::{
    ErrorClass, ProviderError, RequestContext, SseEvent, StreamOutput, StreamTranslator,
};

use crate::errors;
use crate::response::{Tokens, blocked, candidate_index, finish_reason, tool_call};

/// The state of one translated stream.
pub struct GeminiStream {
    include_usage: bool,
    id: String,
    model: String,
    tokens: Option<Tokens>,
    /// Candidate index → function calls streamed so far (Gemini sends each call whole).
    calls: BTreeMap<u64, usize>,
    /// Candidates that have had their opening `role` chunk.
    opened: BTreeSet<u64>,
    started: bool,
    finished: bool,
    done: bool,
}

fn server(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ErrorClass::ServerError, message)
}

impl GeminiStream {
    /// A `chat.completion.chunk` with one choice.
    fn chunk(&self, index: u64, delta: Value, finish_reason: Value) -> String {
        let choice = json!({ "index": index, "delta": delta, "finish_reason": finish_reason });
        self.envelope(vec![choice], None)
    }

    fn envelope(&self, choices: Vec<Value>, usage: Option<Value>) -> String {
        smart_router_sdk::openai::chunk(&self.id, &self.model, choices, usage)
    }

    /// The opening chunk of candidate `index`, once.
    fn open(&mut self, index: u64, chunks: &mut Vec<String>) {
        if self.opened.insert(index) {
            let delta = json!({ "role": "assistant", "content": "" });
            chunks.push(self.chunk(index, delta, Value::Null));
        }
    }

    /// One candidate of an event → its chunks.
    fn candidate(&mut self, candidate: &Value, position: usize, chunks: &mut Vec<String>) {
        let index = candidate_index(candidate, position);
        self.open(index, chunks);
        let parts = candidate
            .get("content")
            .and_then(|c| c.get("parts"))
            .and_then(Value::as_array);
        for part in parts.into_iter().flatten() {
            let delta = if let Some(call) = part.get("functionCall") {
                let n = self.calls.entry(index).or_insert(0);
                let mut call = tool_call(index, *n, call);
                call["index"] = (*n).into();
                *n += 1;
                json!({ "tool_calls": [call] })
            } else {
                match part.get("text").and_then(Value::as_str) {
                    None | Some("") => continue,
                    Some(text) if part.get("thought").and_then(Value::as_bool) == Some(true) => {
                        json!({ "reasoning_content": text })
                    }
                    Some(text) => json!({ "content": text }),
                }
            };
            chunks.push(self.chunk(index, delta, Value::Null));
        }
        if let Some(reason) = candidate.get("finishReason").and_then(Value::as_str) {
            let has_calls = self.calls.get(&index).is_some_and(|n| *n > 0);
            let finish = finish_reason(Some(reason), has_calls);
            if !finish.is_null() {
                self.finished = true;
                chunks.push(self.chunk(index, json!({}), finish));
            }
        }
    }
}

impl StreamTranslator for GeminiStream {
    fn new(ctx: RequestContext) -> Self {
        GeminiStream {
            include_usage: ctx.include_usage,
            id: "chatcmpl-gemini".into(),
            model: ctx.model,
            tokens: None,
            calls: BTreeMap::new(),
            opened: BTreeSet::new(),
            started: false,
            finished: false,
            done: false,
        }
    }

    fn push(&mut self, event: SseEvent) -> Result<StreamOutput, ProviderError> {
        let data = event.data.trim();
        if data.is_empty() || self.done {
            return Ok(StreamOutput::empty());
        }
        let v: Value = json::from_str(data)
            .map_err(|e| server(format!("the provider streamed invalid JSON: {e}")))?;
        if v.get("error").is_some() || event.event == "error" {
            return Err(errors::classify(200, &[], &v));
        }
        if let Some(e) = blocked(&v) {
            return Err(e);
        }
        let mut out = StreamOutput::empty();
        if !self.started {
            self.started = true;
            if let Some(id) = v.get("responseId").and_then(Value::as_str) {
                self.id = format!("chatcmpl-{id}");
            }
            self.open(0, &mut out.chunks);
        }
        let candidates = v.get("candidates").and_then(Value::as_array);
        for (position, candidate) in candidates.into_iter().flatten().enumerate() {
            self.candidate(candidate, position, &mut out.chunks);
        }
        if let Some(usage) = v.get("usageMetadata").filter(|u| u.is_object()) {
            let tokens = Tokens::from_metadata(usage);
            self.tokens = Some(tokens);
            out.usage = Some(tokens.wit());
        }
        Ok(out)
    }

    fn finish(&mut self) -> Result<StreamOutput, ProviderError> {
        if self.done {
            return Ok(StreamOutput::empty());
        }
        if !self.started {
            return Err(server("the provider's stream ended without an event"));
        }
        if !self.finished {
            return Err(server("the provider's stream ended before a finishReason"));
        }
        self.done = true;
        let mut out = StreamOutput::empty();
        out.done = true;
        out.usage = self.tokens.map(|t| t.wit());
        if self.include_usage {
            let usage = self.tokens.unwrap_or_default().openai();
            out.chunks = vec![self.envelope(Vec::new(), Some(usage))];
        }
        Ok(out)
    }
}
