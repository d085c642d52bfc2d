//! Reading a request body: the facts routing needs, read in one pass over the JSON without
//! building a tree of it. A long conversation's text is measured where it lies, not copied into
//! a string per message; the small members the checks need (`model`, `stream`, `tools`, …) are
//! still read as values.
//!
//! The JSON is checked as strictly as a full parse would check it (numbers out of range, bad
//! escapes, trailing characters), and a member given twice counts as its last occurrence, as in
//! a JSON object.

use std::fmt;

use serde::Deserializer;
use serde::de::{self, Deserialize, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::{Endpoint, Facts};
use crate::server::error::ApiError;

/// Parses a request body (`text`, UTF-8) sent to `endpoint`: the facts routing needs, or the
/// error the client gets.
pub fn request_facts(text: &str, endpoint: Endpoint) -> Result<Facts, ApiError> {
    let unparsable = |e: serde_json::Error| {
        ApiError::invalid(format!(
            "We could not parse the JSON body of your request: {e}"
        ))
    };
    if !text.trim_start().starts_with('{') {
        // Not an object: say whether it is JSON at all.
        return Err(match serde_json::from_str::<Valid>(text) {
            Err(e) => unparsable(e),
            Ok(Valid) => ApiError::invalid("The request body must be a JSON object."),
        });
    }
    let body: Body = serde_json::from_str(text).map_err(unparsable)?;
    match endpoint {
        Endpoint::Chat => chat(body),
        Endpoint::Embeddings => embeddings(body),
    }
}

/// The top-level members the host reads; `None` when absent (a JSON `null` is `Some`).
#[derive(Default)]
struct Body {
    model: Option<Value>,
    messages: Option<Messages>,
    stream: Option<Value>,
    max_tokens: Option<Value>,
    max_completion_tokens: Option<Value>,
    tools: Option<Value>,
    response_format: Option<Value>,
    stream_options: Option<Value>,
    input: Option<Value>,
    n: Option<Value>,
}

/// What `messages` holds, measured as it is parsed.
enum Messages {
    NotArray,
    List {
        count: usize,
        text_bytes: usize,
        needs_vision: bool,
        /// The first message that is not an object, or whose role is not a string.
        problem: Option<String>,
    },
}

fn chat(body: Body) -> Result<Facts, ApiError> {
    let model = model_of(body.model)?;
    let (count, mut text_bytes, needs_vision) = match body.messages {
        Some(Messages::List { count: 0, .. }) => {
            return Err(ApiError::invalid_param(
                "messages",
                "`messages` must contain at least one message",
            ));
        }
        Some(Messages::List {
            problem: Some(why), ..
        }) => return Err(ApiError::invalid_param("messages", why)),
        Some(Messages::List {
            count,
            text_bytes,
            needs_vision,
            problem: None,
        }) => (count, text_bytes, needs_vision),
        Some(Messages::NotArray) => {
            return Err(ApiError::invalid_param(
                "messages",
                "`messages` must be an array",
            ));
        }
        None => {
            return Err(ApiError::invalid_param(
                "messages",
                "missing required parameter: `messages`",
            ));
        }
    };
    let is_stream = match body.stream {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => {
            return Err(ApiError::invalid_param(
                "stream",
                "`stream` must be a boolean",
            ));
        }
    };
    let max_output_tokens = match body.max_completion_tokens.or(body.max_tokens) {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n) => Some(n.min(u64::from(u32::MAX)) as u32),
            None => {
                return Err(ApiError::invalid_param(
                    "max_tokens",
                    "`max_tokens` must be a non-negative integer",
                ));
            }
        },
    };
    // OpenAI's bounds: each of `n` answers may use `max_tokens`.
    let choices = match body.n {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n @ 1..=128) => Some(n as u32),
            _ => {
                return Err(ApiError::invalid_param(
                    "n",
                    "`n` must be an integer from 1 to 128",
                ));
            }
        },
    };
    let needs_tools = match &body.tools {
        None | Some(Value::Null) => false,
        Some(Value::Array(t)) => {
            // Measured without copying the tool list.
            text_bytes += serde_json::to_vec(t).map_or(0, |v| v.len());
            !t.is_empty()
        }
        Some(_) => return Err(ApiError::invalid_param("tools", "`tools` must be an array")),
    };
    let needs_json = body
        .response_format
        .as_ref()
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str)
        .is_some_and(|t| t != "text");
    let include_usage = body
        .stream_options
        .as_ref()
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        == Some(true);
    Ok(Facts {
        endpoint: Endpoint::Chat,
        model,
        is_stream,
        include_usage,
        needs_tools,
        needs_vision,
        needs_json,
        estimated_prompt_tokens: (text_bytes / 4 + 4 * count).min(u32::MAX as usize) as u32,
        max_output_tokens,
        choices,
    })
}

fn model_of(model: Option<Value>) -> Result<String, ApiError> {
    match model {
        Some(Value::String(m)) if !m.is_empty() => Ok(m),
        Some(_) => Err(ApiError::invalid_param(
            "model",
            "`model` must be a non-empty string",
        )),
        None => Err(ApiError::invalid_param(
            "model",
            "you must provide a model parameter",
        )),
    }
}

/// Validates an embeddings request (`input`: a string, a list of strings, a list of token ids,
/// or a list of token-id lists; never empty) and estimates its tokens.
fn embeddings(body: Body) -> Result<Facts, ApiError> {
    let model = model_of(body.model)?;
    let bad = |why: &str| ApiError::invalid_param("input", why.to_string());
    let tokens = match body.input {
        None | Some(Value::Null) => return Err(bad("missing required parameter: `input`")),
        Some(Value::String(s)) if s.is_empty() => {
            return Err(bad("`input` must not be an empty string"));
        }
        Some(Value::String(s)) => s.len() / 4 + 1,
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(bad("`input` must not be an empty array"));
        }
        Some(Value::Array(items)) => {
            // One kind throughout: strings, token ids, or lists of token ids.
            let kind = |v: &Value| match v {
                Value::String(s) if !s.is_empty() => Some(0),
                Value::Number(n) if n.is_u64() => Some(1),
                Value::Array(ids) if !ids.is_empty() && ids.iter().all(Value::is_u64) => Some(2),
                _ => None,
            };
            let first = kind(&items[0]);
            let mut tokens = 0usize;
            for (i, item) in items.iter().enumerate() {
                if first.is_none() || kind(item) != first {
                    return Err(bad(&format!(
                        "input[{i}] must be a non-empty string, a token id or a list of token ids, like every other item"
                    )));
                }
                tokens += match item {
                    Value::String(s) => s.len() / 4 + 1,
                    Value::Array(ids) => ids.len(),
                    _ => 1,
                };
            }
            tokens
        }
        Some(_) => {
            return Err(bad(
                "`input` must be a string, a list of strings or a list of token ids",
            ));
        }
    };
    Ok(Facts {
        endpoint: Endpoint::Embeddings,
        model,
        estimated_prompt_tokens: tokens.min(u32::MAX as usize) as u32,
        ..Facts::default()
    })
}

// ---- The visitors. Each accepts any JSON where it reads one and checks what it skips. ----

/// Implements the visitor methods for the JSON kinds `$visitor` does not read: each value is
/// checked (a nested array or object member by member) and `$other` is the result.
macro_rules! otherwise {
    ($other:expr; $($skip:ident),*) => {
        $(otherwise!(@one $skip, $other);)*
    };
    (@one bool, $other:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> { Ok($other) }
    };
    (@one i64, $other:expr) => {
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> { Ok($other) }
    };
    (@one u64, $other:expr) => {
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> { Ok($other) }
    };
    (@one f64, $other:expr) => {
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> { Ok($other) }
    };
    (@one str, $other:expr) => {
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> { Ok($other) }
    };
    (@one unit, $other:expr) => {
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> { Ok($other) }
    };
    (@one seq, $other:expr) => {
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<Valid>()?.is_some() {}
            Ok($other)
        }
    };
    (@one map, $other:expr) => {
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<Valid, Valid>()?.is_some() {}
            Ok($other)
        }
    };
}

/// `impl Deserialize for $ty` through a visitor made of `$methods`, which asks the parser for
/// `$how` (`deserialize_any`, or `deserialize_map` for the body itself).
macro_rules! visited {
    ($ty:ty, $what:literal, $how:ident, { $($methods:tt)* }) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str($what)
                    }
                    $($methods)*
                }
                d.$how(V)
            }
        }
    };
}

/// Any JSON value, checked and dropped (unlike `IgnoredAny`, numbers are checked for range and
/// strings for escapes, as a full parse checks them).
struct Valid;

visited!(Valid, "any JSON value", deserialize_any, {
    otherwise!(Valid; bool, i64, u64, f64, str, unit, seq, map);
});

/// The next member's name as an index into `names` (`N` for any other name), read without
/// copying it.
fn key<'de, const N: usize, A: MapAccess<'de>>(
    map: &mut A,
    names: &'static [&'static str; N],
) -> Result<Option<usize>, A::Error> {
    struct Seed<const N: usize>(&'static [&'static str; N]);
    impl<'de, const N: usize> de::DeserializeSeed<'de> for Seed<N> {
        type Value = usize;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
            d.deserialize_identifier(self)
        }
    }
    impl<'de, const N: usize> Visitor<'de> for Seed<N> {
        type Value = usize;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a member name")
        }
        fn visit_str<E: de::Error>(self, name: &str) -> Result<usize, E> {
            Ok(self.0.iter().position(|n| *n == name).unwrap_or(N))
        }
    }
    map.next_key_seed(Seed(names))
}

const BODY_MEMBERS: [&str; 10] = [
    "model",
    "messages",
    "stream",
    "max_tokens",
    "max_completion_tokens",
    "tools",
    "response_format",
    "stream_options",
    "input",
    "n",
];

visited!(Body, "a JSON object", deserialize_map, {
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Body, A::Error> {
        let mut b = Body::default();
        while let Some(i) = key(&mut map, &BODY_MEMBERS)? {
            let slot = match i {
                0 => &mut b.model,
                1 => {
                    b.messages = Some(map.next_value()?);
                    continue;
                }
                2 => &mut b.stream,
                3 => &mut b.max_tokens,
                4 => &mut b.max_completion_tokens,
                5 => &mut b.tools,
                6 => &mut b.response_format,
                7 => &mut b.stream_options,
                8 => &mut b.input,
                9 => &mut b.n,
                _ => {
                    map.next_value::<Valid>()?;
                    continue;
                }
            };
            *slot = Some(map.next_value()?);
        }
        Ok(b)
    }
});

visited!(Messages, "a list of messages", deserialize_any, {
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Messages, A::Error> {
        let (mut count, mut text_bytes, mut needs_vision, mut problem) = (0, 0, false, None);
        while let Some(m) = seq.next_element::<Message>()? {
            match m {
                Message::Object {
                    role_is_string,
                    text,
                    vision,
                } => {
                    if !role_is_string && problem.is_none() {
                        problem = Some(format!("messages[{count}].role must be a string"));
                    }
                    text_bytes += text;
                    needs_vision |= vision;
                }
                Message::NotObject if problem.is_none() => {
                    problem = Some(format!("messages[{count}] must be an object"));
                }
                Message::NotObject => {}
            }
            count += 1;
        }
        Ok(Messages::List {
            count,
            text_bytes,
            needs_vision,
            problem,
        })
    }
    otherwise!(Messages::NotArray; bool, i64, u64, f64, str, unit, map);
});

/// One message: whether its role is a string, and its text's length in bytes once decoded
/// (the content's text, and its tool calls as compact JSON).
enum Message {
    NotObject,
    Object {
        role_is_string: bool,
        text: usize,
        vision: bool,
    },
}

const MESSAGE_MEMBERS: [&str; 3] = ["role", "content", "tool_calls"];

visited!(Message, "a message", deserialize_any, {
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message, A::Error> {
        let (mut role_is_string, mut content, mut calls) = (false, Content::default(), 0);
        while let Some(i) = key(&mut map, &MESSAGE_MEMBERS)? {
            match i {
                0 => role_is_string = map.next_value::<StrLen>()?.0.is_some(),
                1 => content = map.next_value()?,
                // Measured as compact JSON (`null` included), as the tree was.
                2 => calls = map.next_value::<Value>()?.to_string().len(),
                _ => {
                    map.next_value::<Valid>()?;
                }
            }
        }
        Ok(Message::Object {
            role_is_string,
            text: content.text + calls,
            vision: content.vision,
        })
    }
    otherwise!(Message::NotObject; bool, i64, u64, f64, str, unit, seq);
});

/// A message's `content`: text bytes (a string, or the `text` of its parts) and whether a part
/// is an image.
#[derive(Default)]
struct Content {
    text: usize,
    vision: bool,
}

visited!(Content, "message content", deserialize_any, {
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Content, E> {
        Ok(Content {
            text: s.len(),
            vision: false,
        })
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content, A::Error> {
        let mut c = Content::default();
        while let Some(part) = seq.next_element::<Part>()? {
            if part.image {
                c.vision = true;
            } else {
                c.text += part.text;
            }
        }
        Ok(c)
    }
    otherwise!(Content::default(); bool, i64, u64, f64, unit, map);
});

/// One part of a message's content: an image (`image_url`, `input_image`), or its text's length.
#[derive(Default)]
struct Part {
    image: bool,
    text: usize,
}

const PART_MEMBERS: [&str; 2] = ["type", "text"];

visited!(Part, "a content part", deserialize_any, {
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Part, A::Error> {
        let mut p = Part::default();
        while let Some(i) = key(&mut map, &PART_MEMBERS)? {
            match i {
                0 => p.image = map.next_value::<ImageType>()?.0,
                1 => p.text = map.next_value::<StrLen>()?.0.unwrap_or(0),
                _ => {
                    map.next_value::<Valid>()?;
                }
            }
        }
        Ok(p)
    }
    otherwise!(Part::default(); bool, i64, u64, f64, str, unit, seq);
});

/// A string's length in bytes once decoded; `None` for any other kind of value.
struct StrLen(Option<usize>);

visited!(StrLen, "any JSON value", deserialize_any, {
    fn visit_str<E: de::Error>(self, s: &str) -> Result<StrLen, E> {
        Ok(StrLen(Some(s.len())))
    }
    otherwise!(StrLen(None); bool, i64, u64, f64, unit, seq, map);
});

/// Whether a part's `type` names an image.
struct ImageType(bool);

visited!(ImageType, "a part type", deserialize_any, {
    fn visit_str<E: de::Error>(self, s: &str) -> Result<ImageType, E> {
        Ok(ImageType(matches!(s, "image_url" | "input_image")))
    }
    otherwise!(ImageType(false); bool, i64, u64, f64, unit, seq, map);
});

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<Facts, ApiError> {
        request_facts(body, Endpoint::Chat)
    }

    fn message(body: &str) -> String {
        chat(body).expect_err("refused").message
    }

    #[test]
    fn facts_measure_decoded_text_and_find_every_need() {
        let f = chat(
            r#"{"model": "m", "stream": true, "max_tokens": 9, "stream_options": {"include_usage": true},
                "response_format": {"type": "json_object"}, "tools": [ {"type": "function"} ],
                "messages": [
                  {"role": "user", "content": "caf\u00e9 \"q\""},
                  {"role": "user", "content": [{"type": "text", "text": "abcd"}, {"type": "image_url", "image_url": {"url": "x"}}, 5]},
                  {"role": "assistant", "content": null, "tool_calls": [ {"id": "1"} ]}
                ]}"#,
        )
        .expect("valid");
        // Text: `café "q"` decodes to 9 bytes, `abcd` 4, the tool calls re-serialized
        // `[{"id":"1"}]` 12 and the tools `[{"type":"function"}]` 21: 46 bytes, plus 4 tokens
        // per message.
        assert_eq!(f.estimated_prompt_tokens, 46 / 4 + 4 * 3);
        assert_eq!(f.model, "m");
        assert!(f.is_stream && f.include_usage && f.needs_tools && f.needs_vision && f.needs_json);
        assert_eq!(f.max_output_tokens, Some(9));
        assert_eq!(f.choices, None);
        let n = |body: &str| chat(body).expect("valid").choices;
        assert_eq!(
            n(r#"{"model": "m", "n": 3, "messages": [{"role": "user"}]}"#),
            Some(3)
        );
        assert_eq!(
            n(r#"{"model": "m", "n": null, "messages": [{"role": "user"}]}"#),
            None
        );
    }

    #[test]
    fn the_last_of_repeated_members_counts_as_in_a_json_object() {
        let f = chat(r#"{"model": "a", "model": "b", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1, "max_completion_tokens": 2}"#)
            .expect("valid");
        assert_eq!(f.model, "b");
        assert_eq!(f.max_output_tokens, Some(2));
        assert!(!f.is_stream && !f.needs_tools && !f.needs_vision && !f.needs_json);
    }

    #[test]
    fn malformed_chat_requests_are_refused_with_the_reason() {
        let cases = [
            (r#"{"messages": []}"#, "you must provide a model parameter"),
            (r#"{"model": 5}"#, "`model` must be a non-empty string"),
            (
                r#"{"model": "m"}"#,
                "missing required parameter: `messages`",
            ),
            (
                r#"{"model": "m", "messages": {}}"#,
                "`messages` must be an array",
            ),
            (
                r#"{"model": "m", "messages": []}"#,
                "`messages` must contain at least one message",
            ),
            (
                r#"{"model": "m", "messages": [1]}"#,
                "messages[0] must be an object",
            ),
            (
                r#"{"model": "m", "messages": [{"content": "x"}]}"#,
                "messages[0].role must be a string",
            ),
            (
                r#"{"model": "m", "stream": "yes", "messages": [{"role": "user"}]}"#,
                "`stream` must be a boolean",
            ),
            (
                r#"{"model": "m", "max_tokens": -1, "messages": [{"role": "user"}]}"#,
                "`max_tokens` must be a non-negative integer",
            ),
            (
                r#"{"model": "m", "tools": {}, "messages": [{"role": "user"}]}"#,
                "`tools` must be an array",
            ),
            (
                r#"{"model": "m", "n": 0, "messages": [{"role": "user"}]}"#,
                "`n` must be an integer from 1 to 128",
            ),
            (
                r#"{"model": "m", "n": 129, "messages": [{"role": "user"}]}"#,
                "`n` must be an integer from 1 to 128",
            ),
            (
                r#"{"model": "m", "n": 1.5, "messages": [{"role": "user"}]}"#,
                "`n` must be an integer from 1 to 128",
            ),
        ];
        for (body, why) in cases {
            assert_eq!(message(body), why, "{body}");
        }
    }

    #[test]
    fn repeated_members_inside_messages_and_parts_count_once_each_the_last() {
        let f = chat(
            r#"{"model": "m", "messages": [
                 {"role": 5, "role": "user", "content": "abcdefgh", "content": "ab"},
                 {"role": "user", "content": [{"type": "image_url", "type": "text", "text": "abcd"}]}
               ]}"#,
        )
        .expect("valid");
        assert_eq!(f.estimated_prompt_tokens, 6 / 4 + 4 * 2);
        assert!(!f.needs_vision);
        let f = chat(r#"{"model": "m", "messages": [{"role": "user"}], "messages": [{"role": "user", "content": [{"type": "input_image"}]}]}"#)
            .expect("valid");
        assert!(f.needs_vision);
    }

    #[test]
    fn what_is_skipped_is_still_checked_as_json() {
        let unparsable = [
            // Out of range, in a member the host does not read, at every depth.
            r#"{"model": "m", "temperature": 1e400, "messages": [{"role": "user"}]}"#,
            r#"{"model": "m", "messages": [{"role": "user", "name": [1e400]}]}"#,
            r#"{"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "x": {"y": -1e400}}]}]}"#,
            r#"{"model": "m", "messages": [{"role": "user", "content": 1e400}]}"#,
            // A bad escape, a lone surrogate, trailing characters, a cut-off body.
            r#"{"model": "m", "messages": [{"role": "user", "content": "\x"}]}"#,
            r#"{"model": "m", "stop": "\ud800", "messages": [{"role": "user"}]}"#,
            r#"{"model": "m", "messages": [{"role": "user"}]} x"#,
            r#"{"model": "m", "messages": [{"role": "user""#,
            r#"[1"#,
        ];
        for body in unparsable {
            let why = message(body);
            assert!(
                why.starts_with("We could not parse the JSON body of your request: "),
                "{body}: {why}"
            );
        }
        for body in [r#"[{"model": "m"}]"#, "5", r#""{}""#] {
            assert_eq!(
                message(body),
                "The request body must be a JSON object.",
                "{body}"
            );
        }
    }

    #[test]
    fn embeddings_inputs_are_checked_and_estimated() {
        let f = request_facts(
            r#"{"model": "e", "input": ["abcdefgh", "ab"]}"#,
            Endpoint::Embeddings,
        )
        .expect("valid");
        // 8 bytes: 2 tokens + 1; 2 bytes: 0 + 1.
        assert_eq!(f.estimated_prompt_tokens, 3 + 1);
        assert_eq!(f.endpoint, Endpoint::Embeddings);
        assert!(
            request_facts(r#"{"model": "e", "input": ["a", 1]}"#, Endpoint::Embeddings).is_err()
        );
    }
}
