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

use std::borrow::Borrow;
use std::collections::BTreeMap;

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
    match plain_answer(body, required) {
        Some(answer) => Ok(answer),
        None => judged(status, body, required),
    }
}

/// [`passed_through`]'s full path: every member read, whatever the answer holds.
fn judged(status: u16, body: &[u8], required: &str) -> Result<ChatResponse, ProviderError> {
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

/// [`passed_through`] for the answer it nearly always gets — a JSON object with no error and the
/// `required` list — in one pass that builds nothing: the top level's keys are borrowed, the
/// values it does not read are only checked, and usage is read straight into the record. `None`
/// sends the body down the full path, which judges (and words) everything else: an error, a key
/// or an `object` written with escapes, counts that are not plain integers.
fn plain_answer(body: &[u8], required: &str) -> Option<ChatResponse> {
    // Skipped members are not checked for UTF-8 by the parse; the full path refuses it.
    let text = std::str::from_utf8(body).ok()?;
    let top = smart_router_sdk::json::from_str::<Top<'_>>(text).ok()?;
    let list = match required {
        "choices" => top.choices,
        _ => top.data,
    };
    if top.error || !list.is_some_and(|r| r.get().starts_with('[')) {
        return None;
    }
    Some(ChatResponse {
        body: text.to_owned(),
        usage: top.usage.and_then(|u| u.0),
    })
}

/// What [`plain_answer`] reads of an answer's top level. A later duplicate key wins, as in the
/// full path's map.
#[derive(Default)]
struct Top<'a> {
    /// An `error` member, or an `object` that is (or may be, written with escapes) `"error"`.
    error: bool,
    choices: Option<&'a RawValue>,
    data: Option<&'a RawValue>,
    /// `None` inside: `"usage": null`.
    usage: Option<Counts>,
}

impl<'de> de::Deserialize<'de> for Top<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> de::Visitor<'de> for Members {
            type Value = Top<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an answer")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Top<'de>, A::Error> {
                let mut top = Top::default();
                while let Some(key) = map.next_key::<&'de str>()? {
                    match key {
                        "error" => {
                            map.next_value::<IgnoredAny>()?;
                            top.error = true;
                        }
                        "object" => {
                            let v = map.next_value::<&'de RawValue>()?.get();
                            top.error |= v == "\"error\"" || v.contains('\\');
                        }
                        "choices" => top.choices = Some(map.next_value()?),
                        "data" => top.data = Some(map.next_value()?),
                        "usage" => top.usage = Some(map.next_value()?),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(top)
            }
        }
        d.deserialize_map(Members)
    }
}

/// An answer's `usage`, read as [`usage_of`] reads it when every count present is a plain
/// integer (or `null`) and the details are objects (or `null`); anything else fails, and the
/// full path reads it instead. `None`: `"usage": null`.
struct Counts(Option<Usage>);

impl<'de> de::Deserialize<'de> for Counts {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> de::Visitor<'de> for Fields {
            type Value = Counts;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("usage")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Counts, E> {
                Ok(Counts(None))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Counts, A::Error> {
                let mut u = Usage {
                    prompt_tokens: 0,
                    completion_tokens: 0,
                    cached_tokens: 0,
                    reasoning_tokens: 0,
                };
                while let Some(key) = map.next_key::<&'de str>()? {
                    match key {
                        "prompt_tokens" => u.prompt_tokens = count(map.next_value()?),
                        "completion_tokens" => u.completion_tokens = count(map.next_value()?),
                        "prompt_tokens_details" => {
                            u.cached_tokens = count(map.next_value::<Detail>()?.cached_tokens);
                        }
                        "completion_tokens_details" => {
                            u.reasoning_tokens =
                                count(map.next_value::<Detail>()?.reasoning_tokens);
                        }
                        _ => {
                            map.next_value::<Checked>()?;
                        }
                    }
                }
                Ok(Counts(Some(u)))
            }
        }
        d.deserialize_option(OrNull(Fields))
    }
}

/// `null` as the unit, anything else to the inner visitor.
struct OrNull<V>(V);

impl<'de, V: de::Visitor<'de>> de::Visitor<'de> for OrNull<V> {
    type Value = V::Value;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.expecting(f)
    }
    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.0.visit_unit()
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        d.deserialize_map(self.0)
    }
}

/// A count as [`usage_of`] reads it: `null` is 0, and it is capped at `u32::MAX`.
fn count(n: Option<u64>) -> u32 {
    n.unwrap_or(0).min(u64::from(u32::MAX)) as u32
}

/// A usage details object (`null` reads as empty): the two counts read from either kind (a
/// later duplicate wins).
#[derive(Default)]
struct Detail {
    cached_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
}

impl<'de> de::Deserialize<'de> for Detail {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> de::Visitor<'de> for Fields {
            type Value = Detail;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("usage details")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Detail, E> {
                Ok(Detail::default())
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Detail, A::Error> {
                let mut detail = Detail::default();
                while let Some(key) = map.next_key::<&'de str>()? {
                    match key {
                        "cached_tokens" => detail.cached_tokens = map.next_value()?,
                        "reasoning_tokens" => detail.reasoning_tokens = map.next_value()?,
                        _ => {
                            map.next_value::<Checked>()?;
                        }
                    }
                }
                Ok(detail)
            }
        }
        d.deserialize_option(OrNull(Fields))
    }
}

/// Any value, checked as building it would check it (the full path builds `usage`): escapes
/// must make whole characters and numbers must be finite, where [`IgnoredAny`] only skips.
struct Checked;

impl<'de> de::Deserialize<'de> for Checked {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Checked)
    }
}

impl<'de> de::Visitor<'de> for Checked {
    type Value = Checked;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_key::<Checked>()?.is_some() {
            map.next_value::<Checked>()?;
        }
        Ok(Checked)
    }
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
    // The keys are borrowed from the body unless one is written with escapes.
    match smart_router_sdk::json::from_str::<BTreeMap<&str, &RawValue>>(body) {
        Ok(top) => rewritten(&top, model, stream_usage),
        Err(_) => {
            let top: Members<'_> =
                smart_router_sdk::json::from_str(body).map_err(|_| not_an_object())?;
            rewritten(&top, model, stream_usage)
        }
    }
}

fn not_an_object() -> ProviderError {
    ProviderError::new(
        ErrorClass::BadRequest,
        "the request body is not a JSON object",
    )
}

/// [`with_model`]'s output from the body's top level: its members in key order (a later
/// duplicate key wins), `model` and `stream_options` set.
fn rewritten<K: Ord + Borrow<str>>(
    top: &BTreeMap<K, &RawValue>,
    model: &str,
    stream_usage: bool,
) -> Result<Vec<u8>, ProviderError> {
    let raw =
        |v: &Value| smart_router_sdk::json::value::to_raw_value(v).map_err(|_| not_an_object());
    let model = raw(&Value::String(model.to_string()))?;
    let options;
    let mut members: Vec<(&str, &RawValue)> = top.iter().map(|(k, v)| (k.borrow(), *v)).collect();
    if stream_usage {
        let mut so = match value(top.get("stream_options")) {
            Value::Object(o) => o,
            _ => Map::new(),
        };
        so.insert("include_usage".into(), Value::Bool(true));
        options = raw(&Value::Object(so))?;
        set(&mut members, "stream_options", &options);
    }
    set(&mut members, "model", &model);
    let body_len: usize = members
        .iter()
        .map(|(k, v)| k.len() + v.get().len() + 4)
        .sum();
    let mut out = Vec::with_capacity(body_len + 2);
    out.push(b'{');
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if k.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
            // Nothing to escape (a key the parse borrowed had no escapes): written as it is,
            // without the serializer's byte-by-byte escaping walk.
            out.push(b'"');
            out.extend_from_slice(k.as_bytes());
            out.push(b'"');
        } else {
            smart_router_sdk::json::to_writer(&mut out, k).map_err(|_| not_an_object())?;
        }
        out.push(b':');
        out.extend_from_slice(v.get().as_bytes());
    }
    out.push(b'}');
    Ok(out)
}

/// Sets `key` in members kept in key order.
fn set<'a>(members: &mut Vec<(&'a str, &'a RawValue)>, key: &'static str, v: &'a RawValue) {
    match members.binary_search_by(|(k, _)| (*k).cmp(key)) {
        Ok(i) => members[i].1 = v,
        Err(i) => members.insert(i, (key, v)),
    }
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
    use super::{judged, plain_answer, plain_chunk, with_model};

    #[test]
    fn the_request_keeps_its_members_as_written_with_the_channels_model() {
        let body = r#"{"stream":true,"model":"auto:x","messages":[{"role":"user","content":"caf\u00e9"}],"stream_options":{"x":1},"model":"again"}"#;
        let out =
            String::from_utf8(with_model(body, "gpt-4o", true).expect("object")).expect("utf-8");
        assert_eq!(
            out,
            r#"{"messages":[{"role":"user","content":"caf\u00e9"}],"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true,"x":1}}"#
        );
        // A key written with escapes takes the owned path, to the same result.
        let escaped = r#"{"\u006dodel":"auto:x","max_tokens":5}"#;
        let out =
            String::from_utf8(with_model(escaped, "m", false).expect("object")).expect("utf-8");
        assert_eq!(out, r#"{"max_tokens":5,"model":"m"}"#);
        // A key that needs escaping is written escaped again; the others as they came.
        let quoted = r#"{"a\"b":1,"tab\tkey":2,"back\\slash":3,"plain_key":4}"#;
        let out =
            String::from_utf8(with_model(quoted, "m", false).expect("object")).expect("utf-8");
        assert_eq!(
            out,
            r#"{"a\"b":1,"back\\slash":3,"model":"m","plain_key":4,"tab\tkey":2}"#
        );
        assert!(with_model("[1]", "m", false).is_err());
        assert!(with_model("{} x", "m", false).is_err());
    }

    #[test]
    fn ordinary_answers_take_the_one_pass_path_and_read_as_the_full_path_reads_them() {
        let ordinary = [
            r#"{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi \"there\""},"finish_reason":"stop"}],"usage":{"prompt_tokens":8,"completion_tokens":9,"total_tokens":17}}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":3,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":7}}}"#,
            r#"{"choices":[],"usage":{"prompt_tokens_details":null,"completion_tokens":null,"prompt_tokens":99999999999}}"#,
            r#"{"choices":[],"usage":null}"#,
            r#" { "choices" : [ ] , "choices": [1], "usage": {"prompt_tokens": 1, "prompt_tokens": 2} } "#,
            r#"{"data":[{"embedding":[0.1]}],"usage":{"prompt_tokens":2}}"#,
        ];
        for body in ordinary {
            let required = if body.contains("\"data\"") {
                "data"
            } else {
                "choices"
            };
            let fast = plain_answer(body.as_bytes(), required).expect(body);
            let full = judged(200, body.as_bytes(), required).expect(body);
            assert_eq!(fast.body, full.body);
            assert_eq!(
                format!("{:?}", fast.usage),
                format!("{:?}", full.usage),
                "{body}"
            );
        }
        // Whatever the one pass is unsure of goes to the full path.
        for body in [
            r#"{"error":{"message":"overloaded"}}"#,
            r#"{"object":"error","message":"boom"}"#,
            r#"{"object":"\u0065rror","choices":[]}"#,
            r#"{"\u0063hoices":[]}"#,
            r#"{"choices":{}}"#,
            r#"{"id":"c"}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":1.0}}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":-1}}"#,
            r#"{"choices":[],"usage":{"prompt_tokens_details":[1]}}"#,
            r#"{"choices":[],"usage":7}"#,
            r#"[{"choices":[]}]"#,
            r#"{"choices":[]} trailing"#,
            r#"{"choices":[{"message":"cut"#,
        ] {
            assert!(plain_answer(body.as_bytes(), "choices").is_none(), "{body}");
        }
        // The full path builds `usage`, which refuses a lone surrogate or an infinite number
        // anywhere in it, and reads no usage; the one pass leaves such a body to it.
        for body in [
            r#"{"choices":[],"usage":{"prompt_tokens":1,"note":"\ud800"}}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":1,"cost":1e400}}"#,
            r#"{"choices":[],"usage":{"prompt_tokens_details":{"x":["\udc00"]}}}"#,
            r#"{"choices":[],"usage":{"completion_tokens_details":{"x":-1e999}}}"#,
        ] {
            assert!(plain_answer(body.as_bytes(), "choices").is_none(), "{body}");
            let full = judged(200, body.as_bytes(), "choices").expect(body);
            assert!(full.usage.is_none(), "{body}");
        }
        // Not UTF-8 in a member the one pass skips: the full path refuses it.
        let latin1 = b"{\"choices\":[],\"note\":\"caf\xe9\"}";
        assert!(plain_answer(latin1, "choices").is_none());
        assert!(judged(200, latin1, "choices").is_err());
        // Escapes that do make characters, and large finite numbers, stay on the one pass.
        let fine = r#"{"choices":[],"usage":{"prompt_tokens":4,"note":"caf\u00e9 \ud83d\ude00","cost":1.5e300}}"#;
        let u = plain_answer(fine.as_bytes(), "choices")
            .expect(fine)
            .usage
            .expect("usage");
        assert_eq!(u.prompt_tokens, 4);
        // And reads them as before: a float count as 0, an error classified.
        let u = judged(
            200,
            br#"{"choices":[],"usage":{"prompt_tokens":1.0,"completion_tokens":2}}"#,
            "choices",
        )
        .expect("answer")
        .usage
        .expect("usage");
        assert_eq!((u.prompt_tokens, u.completion_tokens), (0, 2));
        assert!(judged(200, br#"{"object":"error","message":"boom"}"#, "choices").is_err());
    }

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
