//! `openai`: any OpenAI-compatible upstream (OpenAI, Groq, OpenRouter, DeepSeek, SiliconFlow,
//! vLLM, Ollama, …). Known quirks: Groq's stream usage in `x_groq.usage`, OpenRouter's `:` comment
//! keep-alives, DeepSeek's `reasoning_content`, vLLM's `{"object": "error"}` in a 200 body. The request passes through with the channel's model; streams ask upstream for
//! usage and drop the usage chunk again when the client did not ask for it; errors — including
//! ones inside a 200 response or stream — are classified. Embeddings pass through to
//! `/embeddings` the same way.
//!
//! Provider options (`providers.yaml` → `options`):
//! - `stream_usage: false` — do not add `stream_options.include_usage` (for upstreams that refuse it);
//! - `headers: {name: value}` — extra headers (OpenRouter's `HTTP-Referer`, …).

mod errors;

use smart_router_sdk::json::value::RawValue;
use smart_router_sdk::json::{Map, Value};
use smart_router_sdk::raw::{Members, tree};
use smart_router_sdk::serde::de::{self, IgnoredAny};
use smart_router_sdk::{
    Adapter, Auth, ChatResponse, ErrorClass, HttpRequest, ProviderError, RequestContext, SseEvent,
    StreamOutput, StreamTranslator, Usage, export_adapter,
};

struct OpenAi;

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ProviderError> {
    match smart_router_sdk::json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(ProviderError::new(
            ErrorClass::ServerError,
            "the provider answered with JSON that is not an object",
        )),
        Err(e) => Err(ProviderError::new(
            ErrorClass::ServerError,
            format!("the provider answered with invalid JSON: {e}"),
        )),
    }
}

fn members(body: &[u8]) -> Result<Members<'_>, ProviderError> {
    let invalid = |e: smart_router_sdk::json::Error| {
        ProviderError::new(
            ErrorClass::ServerError,
            format!("the provider answered with invalid JSON: {e}"),
        )
    };
    match smart_router_sdk::json::from_slice::<Members<'_>>(body) {
        Ok(m) => Ok(m),
        // Valid JSON that is not an object, or not JSON at all.
        Err(e) => match smart_router_sdk::json::from_slice::<Value>(body) {
            Ok(_) => Err(ProviderError::new(
                ErrorClass::ServerError,
                "the provider answered with JSON that is not an object",
            )),
            Err(_) => Err(invalid(e)),
        },
    }
}

/// A member's value, built (for the few small ones the adapter reads; `null` when absent).
fn value(raw: Option<&&RawValue>) -> Value {
    raw.map_or(Value::Null, |r| tree(r))
}

/// A successful answer, checked and passed through unchanged (every field the provider sent
/// reaches the client): an error inside it (vLLM's `{"object": "error"}`) is classified, and it
/// must carry the list `required` (`choices`, or `data` for embeddings). Only the top level is
/// parsed; the choices are validated as JSON but never built.
fn passed_through(status: u16, body: &[u8], required: &str) -> Result<ChatResponse, ProviderError> {
    let top = members(body)?;
    if top.contains_key("error") || value(top.get("object")).as_str() == Some("error") {
        return Err(errors::classify(
            status,
            &[],
            &parse_object(body).map(Value::Object)?,
        ));
    }
    if !top.get(required).is_some_and(|r| r.get().starts_with('[')) {
        return Err(ProviderError::new(
            ErrorClass::ServerError,
            format!("the provider's response has no `{required}`"),
        ));
    }
    Ok(ChatResponse {
        // `from_utf8` checks ASCII a word at a time; the lossy form walks byte by byte.
        body: match std::str::from_utf8(body) {
            Ok(text) => text.to_owned(),
            Err(_) => String::from_utf8_lossy(body).into_owned(),
        },
        usage: usage_of(&value(top.get("usage"))),
    })
}

/// OpenAI usage → the WIT record.
pub(crate) fn usage_of(v: &Value) -> Option<Usage> {
    let u = v.as_object()?;
    let n = |v: Option<&Value>| {
        v.and_then(Value::as_u64)
            .unwrap_or(0)
            .min(u64::from(u32::MAX)) as u32
    };
    Some(Usage {
        prompt_tokens: n(u.get("prompt_tokens")),
        completion_tokens: n(u.get("completion_tokens")),
        cached_tokens: n(u
            .get("prompt_tokens_details")
            .and_then(|d| d.get("cached_tokens"))),
        reasoning_tokens: n(u
            .get("completion_tokens_details")
            .and_then(|d| d.get("reasoning_tokens"))),
    })
}

impl Adapter for OpenAi {
    type Stream = OpenAiStream;

    fn translate_request(ctx: &RequestContext, body: &str) -> Result<HttpRequest, ProviderError> {
        let options: Value = smart_router_sdk::json::from_str(&ctx.options).unwrap_or(Value::Null);
        let stream_usage =
            ctx.is_stream && options.get("stream_usage").and_then(Value::as_bool) != Some(false);
        let body = with_model(body, &ctx.model, stream_usage)?;
        Ok(HttpRequest::json_post_bytes(
            "/chat/completions",
            body,
            ctx.is_stream,
            &options,
            Auth::Bearer,
        ))
    }

    fn translate_embeddings_request(
        ctx: &RequestContext,
        body: &str,
    ) -> Result<HttpRequest, ProviderError> {
        let options: Value = smart_router_sdk::json::from_str(&ctx.options).unwrap_or(Value::Null);
        Ok(HttpRequest::json_post_bytes(
            "/embeddings",
            with_model(body, &ctx.model, false)?,
            false,
            &options,
            Auth::Bearer,
        ))
    }

    fn translate_embeddings_response(
        _ctx: &RequestContext,
        status: u16,
        body: &[u8],
    ) -> Result<ChatResponse, ProviderError> {
        passed_through(status, body, "data")
    }

    fn translate_response(
        _ctx: &RequestContext,
        status: u16,
        body: &[u8],
    ) -> Result<ChatResponse, ProviderError> {
        passed_through(status, body, "choices")
    }

    fn classify_error(status: u16, headers: &[(String, String)], body: &[u8]) -> ProviderError {
        let v = smart_router_sdk::json::from_slice::<Value>(body).unwrap_or(Value::Null);
        errors::classify(status, headers, &v)
    }
}

/// The client's request with the channel's `model`, and with `stream_options.include_usage`
/// set when `stream_usage`. Only the top level is parsed: messages and tools are copied as the
/// client wrote them, never rebuilt, so a long prompt costs a copy rather than a parse into a
/// tree and a serialization back.
fn with_model(body: &str, model: &str, stream_usage: bool) -> Result<Vec<u8>, ProviderError> {
    let bad = || {
        ProviderError::new(
            ErrorClass::BadRequest,
            "the request body is not a JSON object",
        )
    };
    let raw = |v: &Value| smart_router_sdk::json::value::to_raw_value(v).map_err(|_| bad());
    let model = raw(&Value::String(model.to_string()))?;
    let mut top: Members<'_> = smart_router_sdk::json::from_str(body).map_err(|_| bad())?;
    let options;
    if stream_usage {
        let mut so = match value(top.get("stream_options")) {
            Value::Object(o) => o,
            _ => Map::new(),
        };
        so.insert("include_usage".into(), Value::Bool(true));
        options = raw(&Value::Object(so))?;
        top.insert("stream_options".into(), &options);
    }
    top.insert("model".into(), &model);
    let mut out = Vec::with_capacity(body.len() + 64);
    out.push(b'{');
    for (i, (k, v)) in top.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        smart_router_sdk::json::to_writer(&mut out, k).map_err(|_| bad())?;
        out.push(b':');
        out.extend_from_slice(v.get().as_bytes());
    }
    out.push(b'}');
    Ok(out)
}

/// True when a stream chunk is a JSON object that needs nothing read from it: no error, and no
/// usage or finish reason other than `null` (OpenAI sends `"usage": null` in every chunk of a
/// stream that asked for usage). One pass checks the whole chunk and looks at only those
/// members; anything unexpected (a key written with escapes, a `choices` that is not a list of
/// objects, text that is not JSON) is left to the full parse, which says what is wrong.
fn plain_chunk(data: &str) -> bool {
    smart_router_sdk::json::from_str::<Plain>(data).is_ok_and(|p| p.0)
}

/// [`plain_chunk`]'s verdict on one chunk.
struct Plain(bool);

impl<'de> de::Deserialize<'de> for Plain {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Chunk;
        impl<'de> de::Visitor<'de> for Chunk {
            type Value = Plain;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a stream chunk")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Plain, A::Error> {
                let mut plain = true;
                while let Some(key) = map.next_key::<&'de str>()? {
                    plain &= match key {
                        "error" | "x_groq" => map.next_value::<IgnoredAny>().map(|_| false)?,
                        "usage" => map.next_value::<Option<IgnoredAny>>()?.is_none(),
                        // `"error"`, however it is written, goes to the full parse.
                        "object" => map
                            .next_value::<&'de RawValue>()
                            .map(|v| v.get() != "\"error\"" && !v.get().contains('\\'))?,
                        "choices" => map.next_value::<Choices>()?.0,
                        _ => map.next_value::<IgnoredAny>().map(|_| true)?,
                    };
                }
                Ok(Plain(plain))
            }
        }
        d.deserialize_map(Chunk)
    }
}

/// A chunk's `choices`: plain when no choice has a finish reason.
struct Choices(bool);

impl<'de> de::Deserialize<'de> for Choices {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct List;
        impl<'de> de::Visitor<'de> for List {
            type Value = Choices;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of choices")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Choices, A::Error> {
                let mut plain = true;
                while let Some(choice) = seq.next_element::<Choice>()? {
                    plain &= choice.0;
                }
                Ok(Choices(plain))
            }
        }
        d.deserialize_seq(List)
    }
}

/// One choice of a chunk: plain when its `finish_reason` is absent or `null`.
struct Choice(bool);

impl<'de> de::Deserialize<'de> for Choice {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> de::Visitor<'de> for Fields {
            type Value = Choice;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a choice")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Choice, A::Error> {
                let mut plain = true;
                while let Some(key) = map.next_key::<&'de str>()? {
                    plain &= match key {
                        "finish_reason" => map.next_value::<Option<IgnoredAny>>()?.is_none(),
                        _ => map.next_value::<IgnoredAny>().map(|_| true)?,
                    };
                }
                Ok(Choice(plain))
            }
        }
        d.deserialize_map(Fields)
    }
}

/// Stream translation: chunks pass through; usage is captured; errors inside the stream surface.
pub struct OpenAiStream {
    include_usage: bool,
    /// A choice has reported its `finish_reason`: the answer is complete even if `[DONE]` never
    /// comes (some servers omit it).
    finished: bool,
}

impl StreamTranslator for OpenAiStream {
    fn new(ctx: RequestContext) -> Self {
        OpenAiStream {
            include_usage: ctx.include_usage,
            finished: false,
        }
    }

    fn push(&mut self, event: SseEvent) -> Result<StreamOutput, ProviderError> {
        let data = event.data.trim();
        if data.is_empty() {
            return Ok(StreamOutput::empty());
        }
        if data == "[DONE]" {
            return Ok(StreamOutput {
                chunks: Vec::new(),
                usage: None,
                done: true,
            });
        }
        let invalid = |e: smart_router_sdk::json::Error| {
            ProviderError::new(
                ErrorClass::ServerError,
                format!("the provider streamed invalid JSON: {e}"),
            )
        };
        if event.event != "error" && plain_chunk(data) {
            // Most of a stream: checked to be JSON without building it, passed on as it came.
            return Ok(StreamOutput {
                chunks: vec![data.to_string()],
                usage: None,
                done: false,
            });
        }
        let chunk: Value = smart_router_sdk::json::from_str(data).map_err(invalid)?;
        if chunk.get("error").is_some()
            || event.event == "error"
            || chunk.get("object").and_then(Value::as_str) == Some("error")
        {
            return Err(errors::classify(200, &[], &chunk));
        }
        // Groq reports a stream's usage inside its own `x_groq` object.
        let usage = chunk
            .get("usage")
            .and_then(usage_of)
            .or_else(|| chunk.pointer("/x_groq/usage").and_then(usage_of));
        self.finished |= chunk
            .get("choices")
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().any(|c| !c["finish_reason"].is_null()));
        let usage_only = chunk
            .get("choices")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
            && usage.is_some();
        let chunks = if usage_only && !self.include_usage {
            Vec::new()
        } else {
            vec![data.to_string()]
        };
        Ok(StreamOutput {
            chunks,
            usage,
            done: false,
        })
    }

    /// The body ended without `[DONE]`: complete if a `finish_reason` came, truncated if not.
    fn finish(&mut self) -> Result<StreamOutput, ProviderError> {
        if !self.finished {
            return Err(ProviderError::new(
                ErrorClass::ServerError,
                "the provider's stream ended before a finish_reason or [DONE]",
            ));
        }
        Ok(StreamOutput {
            chunks: Vec::new(),
            usage: None,
            done: true,
        })
    }
}

export_adapter!(OpenAi);

#[cfg(test)]
mod tests {
    use super::plain_chunk;

    #[test]
    fn only_chunks_with_nothing_to_read_skip_the_parse() {
        let content =
            r#"{"id":"c","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}"#;
        assert!(plain_chunk(content));
        // OpenAI's chunks when the stream asked for usage.
        assert!(plain_chunk(
            r#"{"id":"c","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}],"usage":null}"#
        ));
        // Quoted words inside text are escaped, so they are not keys.
        assert!(plain_chunk(
            r#"{"choices":[{"delta":{"content":"say \"usage\" or \"error\": \"finish_reason\":\"stop\""},"finish_reason" : null}]}"#
        ));
        for needs_reading in [
            r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"choices":[{"delta":{},"finish_reason" :  "length"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":3}}"#,
            r#"{"choices":[{"delta":{},"finish_reason":null}],"x_groq":{"usage":{}}}"#,
            r#"{"error":{"message":"overloaded"}}"#,
            r#"{"object":"error","message":"boom"}"#,
            r#"{"choices":["finish_reason"]}"#,
            r#"{"choices":null}"#,
            r#"{"\u0075sage":{"prompt_tokens":3}}"#,
            r#"{"object":"\u0065rror","message":"boom"}"#,
            // Not JSON objects: the full parse says what is wrong.
            r#"[{"choices":[]}]"#,
            r#"{"choices":[]} trailing"#,
            r#"{"choices":[{"delta":{"content":"cut"#,
            "",
        ] {
            assert!(!plain_chunk(needs_reading), "{needs_reading}");
        }
    }
}
