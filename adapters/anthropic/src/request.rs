//! OpenAI `chat.completions` request → Anthropic `POST /v1/messages`.

use std::borrow::Cow;
use std::fmt;

use smart_router_sdk::json::value::RawValue;
use smart_router_sdk::json::{self, Map, Value, json};
use smart_router_sdk::openai::{function_tools, push_turn, text_of};
use smart_router_sdk::raw::{Members, is_string, string, tree};
use smart_router_sdk::serde::de::{
    self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor,
};
use smart_router_sdk::{Auth, ErrorClass, HttpRequest, ProviderError, RequestContext};

const DEFAULT_VERSION: &str = "2023-06-01";
const DEFAULT_MAX_TOKENS: u64 = 4096;

fn bad(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ErrorClass::BadRequest, message)
}

/// One content block of a turn.
enum Block<'a> {
    /// A text block whose text is the client's JSON string, copied as written: a long
    /// conversation of plain text goes through without being decoded and encoded again.
    Text(&'a RawValue),
    /// Any other block, built.
    Built(Value),
}

pub fn translate(ctx: &RequestContext, body: &str) -> Result<HttpRequest, ProviderError> {
    // One pass over the body; a second only to say what is wrong with one it cannot read.
    let Ok(Request {
        messages: Some(messages),
        rest: top,
    }) = json::from_str::<Request<'_>>(body)
    else {
        return Err(refusal(body));
    };
    let (system, turns) = convert_messages(&messages)?;
    // Everything but the conversation is small: read it as values.
    let req: Map<String, Value> = top.iter().map(|(k, v)| (k.clone(), tree(v))).collect();
    let rest = Value::Object(rest_of_body(ctx, &req)?);
    let mut out = Vec::with_capacity(body.len() + 256);
    out.extend_from_slice(br#"{"messages":["#);
    for (n, (role, blocks)) in turns.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"role":""#);
        out.extend_from_slice(role.as_bytes());
        out.extend_from_slice(br#"","content":["#);
        for (b, block) in blocks.iter().enumerate() {
            if b > 0 {
                out.push(b',');
            }
            match block {
                Block::Text(text) => {
                    out.extend_from_slice(br#"{"type":"text","text":"#);
                    out.extend_from_slice(text.get().as_bytes());
                    out.push(b'}');
                }
                Block::Built(v) => write(&mut out, v)?,
            }
        }
        out.extend_from_slice(b"]}");
    }
    out.push(b']');
    if let Some(system) = system {
        out.extend_from_slice(br#","system":"#);
        out.extend_from_slice(system.as_bytes());
    }
    // `rest` is an object holding at least `model`: its members follow, its `{` made a `,`.
    let opening = out.len();
    write(&mut out, &rest)?;
    out[opening] = b',';
    let options: Value = json::from_str(&ctx.options).unwrap_or(Value::Null);
    let version = options
        .get("anthropic_version")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_VERSION);
    Ok(HttpRequest::json_post_bytes(
        "/v1/messages",
        out,
        ctx.is_stream,
        &options,
        Auth::Header("x-api-key".into()),
    )
    .with_header("anthropic-version", version))
}

/// A request read in one pass: its messages, and every other member as written.
struct Request<'a> {
    messages: Option<Vec<Message<'a>>>,
    rest: Members<'a>,
}

/// The members of a message that translation reads, each as the client wrote it (`null` reads
/// as absent).
#[derive(Default)]
struct Message<'a> {
    role: Option<&'a RawValue>,
    content: Option<&'a RawValue>,
    tool_calls: Option<&'a RawValue>,
    tool_call_id: Option<&'a RawValue>,
}

impl<'de> Deserialize<'de> for Request<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Request<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a chat request object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Request<'de>, A::Error> {
                let mut req = Request {
                    messages: None,
                    rest: Members::new(),
                };
                while let Some(key) = map.next_key::<String>()? {
                    if key == "messages" {
                        req.messages = Some(map.next_value()?);
                    } else {
                        req.rest.insert(key, map.next_value()?);
                    }
                }
                Ok(req)
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for Message<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// A message member's name.
        enum Key {
            Role,
            Content,
            ToolCalls,
            ToolCallId,
            Other,
        }
        impl<'de> Deserialize<'de> for Key {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct K;
                impl Visitor<'_> for K {
                    type Value = Key;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str("a member name")
                    }
                    fn visit_str<E: de::Error>(self, s: &str) -> Result<Key, E> {
                        Ok(match s {
                            "role" => Key::Role,
                            "content" => Key::Content,
                            "tool_calls" => Key::ToolCalls,
                            "tool_call_id" => Key::ToolCallId,
                            _ => Key::Other,
                        })
                    }
                }
                d.deserialize_identifier(K)
            }
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Message<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a message object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message<'de>, A::Error> {
                let mut m = Message::default();
                while let Some(key) = map.next_key::<Key>()? {
                    let slot = match key {
                        Key::Role => &mut m.role,
                        Key::Content => &mut m.content,
                        Key::ToolCalls => &mut m.tool_calls,
                        Key::ToolCallId => &mut m.tool_call_id,
                        Key::Other => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = map.next_value()?;
                }
                Ok(m)
            }
        }
        d.deserialize_map(V)
    }
}

/// What is wrong with a request the single pass could not read.
fn refusal(body: &str) -> ProviderError {
    let Ok(top) = json::from_str::<Members<'_>>(body) else {
        return bad("the request body is not a JSON object");
    };
    let messages = top
        .get("messages")
        .and_then(|m| json::from_str::<Vec<&RawValue>>(m.get()).ok());
    let Some(messages) = messages else {
        return bad("`messages` must be an array");
    };
    match messages.iter().position(|m| !m.get().starts_with('{')) {
        Some(i) => bad(format!("messages[{i}] must be an object")),
        None => bad("the request body could not be read"),
    }
}

/// Appends `v` as JSON.
fn write(out: &mut Vec<u8>, v: &Value) -> Result<(), ProviderError> {
    json::to_writer(out, v).map_err(|e| bad(format!("cannot write the request: {e}")))
}

/// The Messages API body apart from `messages` and `system`.
fn rest_of_body(
    ctx: &RequestContext,
    req: &Map<String, Value>,
) -> Result<Map<String, Value>, ProviderError> {
    // The Messages API answers with one choice: a request for several moves on to a channel
    // that can give them, and this channel's health is not touched.
    if let Some(n) = req.get("n").and_then(Value::as_u64).filter(|n| *n > 1) {
        return Err(ProviderError::new(
            ErrorClass::Unsupported,
            format!("Anthropic's Messages API returns one choice, not `n: {n}`"),
        ));
    }
    let mut out = Map::new();
    out.insert("model".into(), ctx.model.clone().into());
    let max_tokens = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| req.get(*k).and_then(Value::as_u64))
        .unwrap_or(DEFAULT_MAX_TOKENS);
    out.insert("max_tokens".into(), max_tokens.into());
    for key in ["temperature", "top_p"] {
        if let Some(v) = req.get(key).filter(|v| v.is_number()) {
            out.insert(key.into(), v.clone());
        }
    }
    let stop = stop_sequences(req.get("stop"));
    if !stop.is_empty() {
        out.insert("stop_sequences".into(), stop.into());
    }
    out.insert("stream".into(), ctx.is_stream.into());
    if let Some(user) = req.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({ "user_id": user }));
    }
    let tools = match req.get("tools") {
        Some(Value::Array(list)) => convert_tools(list)?,
        None | Some(Value::Null) => Vec::new(),
        Some(_) => return Err(bad("`tools` must be an array")),
    };
    // Anthropic refuses a `tool_choice` without `tools`.
    if !tools.is_empty() {
        out.insert("tools".into(), tools.into());
        let choice = tool_choice(req.get("tool_choice"), req.get("parallel_tool_calls"))?;
        if let Some(choice) = choice {
            out.insert("tool_choice".into(), choice);
        }
    }
    Ok(out)
}

/// A turn: its role and its blocks.
type Turn<'a> = (&'static str, Vec<Block<'a>>);

/// Splits off the system prompt (as one JSON string) and turns the rest into alternating
/// user/assistant turns. Plain text is copied as the client wrote it; content lists, tool calls
/// and tool results are built.
fn convert_messages<'a>(
    messages: &[Message<'a>],
) -> Result<(Option<String>, Vec<Turn<'a>>), ProviderError> {
    // Each system text as a JSON string.
    let mut system: Vec<Cow<'a, str>> = Vec::new();
    let mut turns: Vec<Turn<'a>> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = string(m.role).unwrap_or_default();
        let (role, blocks) = match role.as_ref() {
            "system" | "developer" => {
                match m.content {
                    Some(c) if is_string(c) => {
                        if c.get() != r#""""# {
                            system.push(Cow::Borrowed(c.get()));
                        }
                    }
                    content => {
                        let text = text_of(content.map(tree).as_ref());
                        if !text.is_empty() {
                            system.push(Cow::Owned(Value::String(text).to_string()));
                        }
                    }
                }
                continue;
            }
            "user" => ("user", content(m.content, i)?),
            "assistant" if m.tool_calls.is_none_or(|c| !c.get().starts_with('[')) => {
                ("assistant", content(m.content, i)?)
            }
            "assistant" => ("assistant", built(assistant_blocks(&m.tree(), i)?)),
            "tool" => ("user", vec![Block::Built(tool_result(&m.tree(), i)?)]),
            other => return Err(bad(format!("messages[{i}]: unsupported role `{other}`"))),
        };
        push_turn(&mut turns, role, blocks);
    }
    Ok((join_strings(&system), turns))
}

impl Message<'_> {
    /// The message as a value, for the turns that are built (tool calls and results).
    fn tree(&self) -> Value {
        let mut m = Map::new();
        for (k, v) in [
            ("content", self.content),
            ("tool_calls", self.tool_calls),
            ("tool_call_id", self.tool_call_id),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), tree(v));
            }
        }
        Value::Object(m)
    }
}

fn built<'a>(blocks: Vec<Value>) -> Vec<Block<'a>> {
    blocks.into_iter().map(Block::Built).collect()
}

/// JSON strings joined, with a blank line between them, into one JSON string (the texts are
/// joined inside their quotes, escapes and all).
fn join_strings(parts: &[Cow<'_, str>]) -> Option<String> {
    match parts {
        [] => None,
        [one] => Some(one.to_string()),
        _ => {
            let inner: Vec<&str> = parts.iter().map(|p| &p[1..p.len() - 1]).collect();
            Some(format!("\"{}\"", inner.join("\\n\\n")))
        }
    }
}

/// A message's `content` as blocks: a non-empty string is one text block, copied as written.
fn content<'a>(raw: Option<&'a RawValue>, i: usize) -> Result<Vec<Block<'a>>, ProviderError> {
    match raw {
        None => Ok(Vec::new()),
        Some(r) if is_string(r) => Ok(if r.get() == r#""""# {
            Vec::new()
        } else {
            vec![Block::Text(r)]
        }),
        Some(r) => Ok(built(content_blocks(Some(&tree(r)), i)?)),
    }
}

fn text_block(text: &str) -> Value {
    json!({ "type": "text", "text": text })
}

/// User or assistant content → text and image blocks. Empty text is dropped: Anthropic refuses it.
fn content_blocks(content: Option<&Value>, i: usize) -> Result<Vec<Value>, ProviderError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if s.is_empty() => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![text_block(s)]),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| part_block(part, i).transpose())
            .collect(),
        Some(_) => Err(bad(format!(
            "messages[{i}]: `content` must be a string or a list"
        ))),
    }
}

/// One content part → a block; `None` for empty text.
fn part_block(part: &Value, i: usize) -> Result<Option<Value>, ProviderError> {
    match part.get("type").and_then(Value::as_str) {
        Some(kind @ ("text" | "refusal")) => match part.get(kind).and_then(Value::as_str) {
            Some("") => Ok(None),
            Some(text) => Ok(Some(text_block(text))),
            None => Err(bad(format!("messages[{i}]: a {kind} part has no `{kind}`"))),
        },
        Some("image_url") => image_block(part, i).map(Some),
        other => {
            let other = other.unwrap_or("(none)");
            Err(bad(format!(
                "messages[{i}]: content parts of type `{other}` are not supported"
            )))
        }
    }
}

/// `image_url` part → an image block with a base64 or URL source.
fn image_block(part: &Value, i: usize) -> Result<Value, ProviderError> {
    let image = part.get("image_url");
    let url = image
        .and_then(|u| u.get("url").or(Some(u)))
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("messages[{i}]: an image_url part has no url")))?;
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest
            .split_once(',')
            .ok_or_else(|| bad(format!("messages[{i}]: malformed data URL")))?;
        let media_type = meta
            .strip_suffix(";base64")
            .ok_or_else(|| bad(format!("messages[{i}]: image data URLs must be base64")))?;
        let source = json!({ "type": "base64", "media_type": media_type, "data": data });
        Ok(json!({ "type": "image", "source": source }))
    } else if url.starts_with("https://") || url.starts_with("http://") {
        Ok(json!({ "type": "image", "source": { "type": "url", "url": url } }))
    } else {
        Err(bad(format!("messages[{i}]: unsupported image URL scheme")))
    }
}

/// Assistant text plus `tool_calls` → text and `tool_use` blocks.
fn assistant_blocks(m: &Value, i: usize) -> Result<Vec<Value>, ProviderError> {
    let mut blocks = content_blocks(m.get("content"), i)?;
    let calls = m.get("tool_calls").and_then(Value::as_array);
    for call in calls.into_iter().flatten() {
        let id = call.get("id").and_then(Value::as_str);
        let function = call.get("function");
        let name = function.and_then(|f| f.get("name")).and_then(Value::as_str);
        let (Some(id), Some(name)) = (id, name) else {
            return Err(bad(format!(
                "messages[{i}]: a tool call needs an id and a function name"
            )));
        };
        let arguments = function
            .and_then(|f| f.get("arguments"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let input = match json::from_str::<Value>(arguments) {
            Ok(v @ Value::Object(_)) => v,
            _ => json!({}),
        };
        blocks.push(json!({ "type": "tool_use", "id": id, "name": name, "input": input }));
    }
    Ok(blocks)
}

/// `role: tool` message → a `tool_result` block.
fn tool_result(m: &Value, i: usize) -> Result<Value, ProviderError> {
    let id = m
        .get("tool_call_id")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            bad(format!(
                "messages[{i}]: a tool message needs `tool_call_id`"
            ))
        })?;
    let content = text_of(m.get("content"));
    Ok(json!({ "type": "tool_result", "tool_use_id": id, "content": content }))
}

/// `stop`: a string or a list of strings.
fn stop_sequences(stop: Option<&Value>) -> Vec<Value> {
    match stop {
        Some(Value::String(s)) => vec![s.clone().into()],
        Some(Value::Array(list)) => list.iter().filter(|v| v.is_string()).cloned().collect(),
        _ => Vec::new(),
    }
}

/// OpenAI function tools → Anthropic tools (a function without parameters takes an empty
/// object).
fn convert_tools(list: &[Value]) -> Result<Vec<Value>, ProviderError> {
    Ok(function_tools(list)?
        .into_iter()
        .map(|tool| {
            let mut out = tool.named();
            let schema = tool
                .parameters
                .cloned()
                .unwrap_or_else(|| json!({ "type": "object", "properties": {} }));
            out.insert("input_schema".into(), schema);
            Value::Object(out)
        })
        .collect())
}

/// `tool_choice` and `parallel_tool_calls` → Anthropic's `tool_choice`.
fn tool_choice(
    choice: Option<&Value>,
    parallel: Option<&Value>,
) -> Result<Option<Value>, ProviderError> {
    let mut out = match choice {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Some(json!({ "type": "auto" })),
            "required" => Some(json!({ "type": "any" })),
            "none" => Some(json!({ "type": "none" })),
            other => return Err(bad(format!("unsupported tool_choice `{other}`"))),
        },
        Some(v) => match v
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
        {
            Some(name) => Some(json!({ "type": "tool", "name": name })),
            None => return Err(bad("unsupported tool_choice")),
        },
    };
    if parallel.and_then(Value::as_bool) == Some(false) {
        let choice = out.get_or_insert_with(|| json!({ "type": "auto" }));
        // `{"type": "none"}` takes no other field.
        if choice.get("type").and_then(Value::as_str) != Some("none") {
            choice["disable_parallel_tool_use"] = true.into();
        }
    }
    Ok(out)
}
