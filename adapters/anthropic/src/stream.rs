//! Anthropic's typed event stream → OpenAI `chat.completion.chunk` objects.

use std::collections::BTreeMap;

use smart_router_sdk::json::{self, Value, json};
use smart_router_sdk::{
    ErrorClass, ProviderError, RequestContext, SseEvent, StreamOutput, StreamTranslator,
};

use crate::errors;
use crate::response::{Tokens, finish_reason};

/// The state of one translated stream.
pub struct AnthropicStream {
    include_usage: bool,
    id: String,
    model: String,
    tokens: Tokens,
    /// Anthropic content-block index → OpenAI tool-call index (tool_use blocks counted from 0).
    tool_blocks: BTreeMap<u64, usize>,
    started: bool,
    done: bool,
}

impl AnthropicStream {
    /// A `chat.completion.chunk` with one choice.
    fn chunk(&self, delta: Value, finish_reason: Value) -> String {
        let choice = json!({ "index": 0, "delta": delta, "finish_reason": finish_reason });
        self.envelope(vec![choice], None)
    }

    fn envelope(&self, choices: Vec<Value>, usage: Option<Value>) -> String {
        smart_router_sdk::openai::chunk(&self.id, &self.model, choices, usage)
    }

    fn message_start(&mut self, v: &Value) -> Vec<String> {
        let message = &v["message"];
        if let Some(id) = message.get("id").and_then(Value::as_str) {
            self.id = format!("chatcmpl-{id}");
        }
        if let Some(model) = message.get("model").and_then(Value::as_str) {
            self.model = model.to_string();
        }
        self.tokens.update(&message["usage"]);
        self.started = true;
        let delta = json!({ "role": "assistant", "content": "" });
        vec![self.chunk(delta, Value::Null)]
    }

    fn block_start(&mut self, v: &Value) -> Vec<String> {
        let block = &v["content_block"];
        if block.get("type").and_then(Value::as_str) != Some("tool_use") {
            return Vec::new();
        }
        let tool = self.tool_blocks.len();
        if let Some(index) = v.get("index").and_then(Value::as_u64) {
            self.tool_blocks.insert(index, tool);
        }
        let call = json!({
            "index": tool,
            "id": block.get("id").cloned().unwrap_or_default(),
            "type": "function",
            "function": { "name": block.get("name").cloned().unwrap_or_default(), "arguments": "" },
        });
        vec![self.chunk(json!({ "tool_calls": [call] }), Value::Null)]
    }

    fn block_delta(&self, v: &Value) -> Vec<String> {
        let d = &v["delta"];
        let text = |key: &str| d.get(key).and_then(Value::as_str).filter(|s| !s.is_empty());
        let delta = match d.get("type").and_then(Value::as_str) {
            Some("text_delta") => text("text").map(|t| json!({ "content": t })),
            Some("thinking_delta") => text("thinking").map(|t| json!({ "reasoning_content": t })),
            Some("input_json_delta") => {
                let index = v.get("index").and_then(Value::as_u64);
                let tool = index.and_then(|i| self.tool_blocks.get(&i));
                text("partial_json").zip(tool).map(|(args, tool)| {
                    json!({ "tool_calls": [{ "index": tool, "function": { "arguments": args } }] })
                })
            }
            _ => None,
        };
        delta
            .map(|d| vec![self.chunk(d, Value::Null)])
            .unwrap_or_default()
    }
}

impl StreamTranslator for AnthropicStream {
    fn new(ctx: RequestContext) -> Self {
        AnthropicStream {
            include_usage: ctx.include_usage,
            id: "chatcmpl-anthropic".into(),
            model: ctx.model,
            tokens: Tokens::default(),
            tool_blocks: BTreeMap::new(),
            started: false,
            done: false,
        }
    }

    fn push(&mut self, event: SseEvent) -> Result<StreamOutput, ProviderError> {
        let data = event.data.trim();
        if data.is_empty() {
            return Ok(StreamOutput::empty());
        }
        let v: Value = json::from_str(data).map_err(|e| {
            ProviderError::new(
                ErrorClass::ServerError,
                format!("the provider streamed invalid JSON: {e}"),
            )
        })?;
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(&event.event);
        if kind == "error" || event.event == "error" {
            return Err(errors::classify(200, &[], &v));
        }
        let mut out = StreamOutput::empty();
        match kind {
            "message_start" => out.chunks = self.message_start(&v),
            "content_block_start" => out.chunks = self.block_start(&v),
            "content_block_delta" => out.chunks = self.block_delta(&v),
            "message_delta" => {
                self.tokens.update(&v["usage"]);
                let stop_reason = v["delta"].get("stop_reason").and_then(Value::as_str);
                out.chunks = vec![self.chunk(json!({}), finish_reason(stop_reason))];
                out.usage = Some(self.tokens.wit());
            }
            "message_stop" => {
                self.done = true;
                out.done = true;
                if self.include_usage {
                    out.chunks = vec![self.envelope(Vec::new(), Some(self.tokens.openai()))];
                }
            }
            // ping, content_block_stop, and event types added later.
            _ => {}
        }
        Ok(out)
    }

    fn finish(&mut self) -> Result<StreamOutput, ProviderError> {
        if self.started && !self.done {
            return Err(ProviderError::new(
                ErrorClass::ServerError,
                "the provider's stream ended before message_stop",
            ));
        }
        Ok(StreamOutput::empty())
    }
}
