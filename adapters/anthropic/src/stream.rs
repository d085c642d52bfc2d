//! Anthropic's typed event stream → OpenAI `chat.completion.chunk` objects.

use std::collections::BTreeMap;

use smart_router_sdk::json::{self, Value, json};
use smart_router_sdk::raw::{self, Members};
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
    /// The end of every chunk of this stream, after its choices: `created`, `id`, `model` and
    /// `object`, as [`smart_router_sdk::openai::chunk`] writes them.
    tail: String,
}

impl AnthropicStream {
    fn set_tail(&mut self) {
        let quoted = |s: &str| json::to_string(s).unwrap_or_else(|_| "\"\"".into());
        self.tail = format!(
            ",\"created\":0,\"id\":{},\"model\":{},\"object\":\"chat.completion.chunk\"}}",
            quoted(&self.id),
            quoted(&self.model)
        );
    }

    /// A text delta, most of a stream, read without building trees of it: its text goes into the
    /// chunk as it was written. `None` for anything else (the full reading handles it).
    fn text_delta(&self, data: &str) -> Option<String> {
        let top: Members<'_> = json::from_str(data).ok()?;
        if raw::string(top.get("type").copied())? != "content_block_delta" {
            return None;
        }
        let delta: Members<'_> = json::from_str(top.get("delta")?.get()).ok()?;
        if raw::string(delta.get("type").copied())? != "text_delta" {
            return None;
        }
        let text = delta.get("text")?.get().trim();
        if !text.starts_with('"') || text == "\"\"" {
            return None;
        }
        Some(format!(
            "{{\"choices\":[{{\"delta\":{{\"content\":{text}}},\"finish_reason\":null,\"index\":0}}]{}",
            self.tail
        ))
    }

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
        self.set_tail();
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
        let mut stream = AnthropicStream {
            include_usage: ctx.include_usage,
            id: "chatcmpl-anthropic".into(),
            model: ctx.model,
            tokens: Tokens::default(),
            tool_blocks: BTreeMap::new(),
            started: false,
            done: false,
            tail: String::new(),
        };
        stream.set_tail();
        stream
    }

    fn push(&mut self, event: SseEvent) -> Result<StreamOutput, ProviderError> {
        let data = event.data.trim();
        if data.is_empty() {
            return Ok(StreamOutput::empty());
        }
        if event.event != "error"
            && let Some(chunk) = self.text_delta(data)
        {
            return Ok(StreamOutput {
                chunks: vec![chunk],
                usage: None,
                done: false,
            });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> AnthropicStream {
        let mut s = AnthropicStream {
            include_usage: false,
            id: "chatcmpl-msg_\"01\"".into(),
            model: "claude-é".into(),
            tokens: Tokens::default(),
            tool_blocks: BTreeMap::new(),
            started: true,
            done: false,
            tail: String::new(),
        };
        s.set_tail();
        s
    }

    #[test]
    fn a_text_delta_read_lazily_is_the_chunk_the_full_reading_makes() {
        let s = stream();
        for data in [
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
            r#"{"type": "content_block_delta", "delta": {"text": "caf\u00e9 \"q\"\n", "type": "text_delta"}, "index": 0}"#,
        ] {
            let lazy = s.text_delta(data).expect("a text delta");
            let full = s.block_delta(&json::from_str(data).expect("json"));
            assert_eq!(full.len(), 1);
            let parse = |c: &str| json::from_str::<Value>(c).expect("chunk is JSON");
            assert_eq!(parse(&lazy), parse(&full[0]), "{data}");
        }
        // Everything else takes the full reading.
        for data in [
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":""}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hm"}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":3}}"#,
            r#"{"type":"content_block_delta","delta":{"type":"text_delta","text":"x"}"#,
        ] {
            assert_eq!(s.text_delta(data), None, "{data}");
        }
    }
}
