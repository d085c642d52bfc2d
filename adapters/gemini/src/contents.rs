//! OpenAI `messages` → Gemini `systemInstruction` text and `contents` turns.

use std::collections::HashMap;

use smart_router_sdk::ProviderError;
use smart_router_sdk::json::{self, Value, json};
use smart_router_sdk::openai::{push_turn, text_of};

use crate::request::bad;

/// Splits off the system prompt and turns the rest into `user` / `model` turns, merging
/// consecutive turns of the same role.
pub fn convert(messages: &[Value]) -> Result<(String, Vec<Value>), ProviderError> {
    let mut system = Vec::new();
    let mut turns: Vec<(&str, Vec<Value>)> = Vec::new();
    // tool_call_id → function name, from the assistant turns seen so far.
    let mut call_names: HashMap<&str, &str> = HashMap::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let (role, parts) = match role {
            "system" | "developer" => {
                let text = text_of(m.get("content"));
                if !text.is_empty() {
                    system.push(text);
                }
                continue;
            }
            "user" => ("user", content_parts(m.get("content"), i)?),
            "assistant" => ("model", assistant_parts(m, i, &mut call_names)?),
            "tool" => ("user", vec![function_response(m, i, &call_names)?]),
            other => return Err(bad(format!("messages[{i}]: unsupported role `{other}`"))),
        };
        push_turn(&mut turns, role, parts);
    }
    let turns = turns
        .into_iter()
        .map(|(role, parts)| json!({ "role": role, "parts": parts }))
        .collect();
    Ok((system.join("\n\n"), turns))
}

/// User or assistant content → parts. Empty text is dropped: Gemini refuses it.
fn content_parts(content: Option<&Value>, i: usize) -> Result<Vec<Value>, ProviderError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if s.is_empty() => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![json!({ "text": s })]),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| convert_part(part, i).transpose())
            .collect(),
        Some(_) => Err(bad(format!(
            "messages[{i}]: `content` must be a string or a list"
        ))),
    }
}

/// One content part → a Gemini part; `None` for empty text.
fn convert_part(part: &Value, i: usize) -> Result<Option<Value>, ProviderError> {
    match part.get("type").and_then(Value::as_str) {
        Some(kind @ ("text" | "refusal")) => match part.get(kind).and_then(Value::as_str) {
            Some("") => Ok(None),
            Some(text) => Ok(Some(json!({ "text": text }))),
            None => Err(bad(format!("messages[{i}]: a {kind} part has no `{kind}`"))),
        },
        Some("image_url") => image_part(part, i).map(Some),
        Some("input_audio") => {
            let audio = part.get("input_audio");
            let field = |k: &str| audio.and_then(|a| a.get(k)).and_then(Value::as_str);
            let (Some(data), Some(format)) = (field("data"), field("format")) else {
                return Err(bad(format!(
                    "messages[{i}]: an input_audio part needs `data` and `format`"
                )));
            };
            let mime = format!("audio/{format}");
            Ok(Some(
                json!({ "inlineData": { "mimeType": mime, "data": data } }),
            ))
        }
        Some("file") => {
            let data = part.get("file").and_then(|f| f.get("file_data"));
            match data.and_then(Value::as_str) {
                Some(url) if url.starts_with("data:") => inline_data(url, i).map(Some),
                _ => Err(bad(format!(
                    "messages[{i}]: file parts need `file_data` as a base64 data URL"
                ))),
            }
        }
        other => {
            let other = other.unwrap_or("(none)");
            Err(bad(format!(
                "messages[{i}]: content parts of type `{other}` are not supported"
            )))
        }
    }
}

/// `image_url` part → `inlineData` (data URL) or `fileData` (http/https URL).
fn image_part(part: &Value, i: usize) -> Result<Value, ProviderError> {
    let image = part.get("image_url");
    let url = image
        .and_then(|u| u.get("url").or(Some(u)))
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("messages[{i}]: an image_url part has no url")))?;
    if url.starts_with("data:") {
        inline_data(url, i)
    } else if url.starts_with("https://") || url.starts_with("http://") {
        let mime = guess_image_type(url);
        Ok(json!({ "fileData": { "mimeType": mime, "fileUri": url } }))
    } else {
        Err(bad(format!("messages[{i}]: unsupported image URL scheme")))
    }
}

/// `data:<type>;base64,<data>` → `inlineData`.
fn inline_data(url: &str, i: usize) -> Result<Value, ProviderError> {
    let rest = url.strip_prefix("data:").unwrap_or(url);
    let (meta, data) = rest
        .split_once(',')
        .ok_or_else(|| bad(format!("messages[{i}]: malformed data URL")))?;
    let mime = meta
        .strip_suffix(";base64")
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            bad(format!(
                "messages[{i}]: data URLs must be base64 with a type"
            ))
        })?;
    Ok(json!({ "inlineData": { "mimeType": mime, "data": data } }))
}

/// The image type from the URL's file extension; JPEG when it says nothing.
fn guess_image_type(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let file = path.rsplit('/').next().unwrap_or(path);
    let ext = file
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "heic" => "image/heic",
        "heif" => "image/heif",
        _ => "image/jpeg",
    }
}

/// Assistant text plus `tool_calls` → text and `functionCall` parts; records the call names.
fn assistant_parts<'a>(
    m: &'a Value,
    i: usize,
    call_names: &mut HashMap<&'a str, &'a str>,
) -> Result<Vec<Value>, ProviderError> {
    let mut parts = content_parts(m.get("content"), i)?;
    let calls = m.get("tool_calls").and_then(Value::as_array);
    for call in calls.into_iter().flatten() {
        let function = call.get("function");
        let Some(name) = function.and_then(|f| f.get("name")).and_then(Value::as_str) else {
            return Err(bad(format!(
                "messages[{i}]: a tool call needs a function name"
            )));
        };
        if let Some(id) = call.get("id").and_then(Value::as_str) {
            call_names.insert(id, name);
        }
        let arguments = function
            .and_then(|f| f.get("arguments"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let args = match json::from_str::<Value>(arguments) {
            Ok(v @ Value::Object(_)) => v,
            _ => json!({}),
        };
        parts.push(json!({ "functionCall": { "name": name, "args": args } }));
    }
    Ok(parts)
}

/// `role: tool` message → a `functionResponse` part named after the call it answers.
fn function_response(
    m: &Value,
    i: usize,
    call_names: &HashMap<&str, &str>,
) -> Result<Value, ProviderError> {
    let id = m.get("tool_call_id").and_then(Value::as_str);
    let name = id
        .and_then(|id| call_names.get(id).copied())
        .or_else(|| m.get("name").and_then(Value::as_str))
        .ok_or_else(|| {
            bad(format!(
                "messages[{i}]: a tool message must answer an earlier assistant tool call"
            ))
        })?;
    let text = text_of(m.get("content"));
    let content = json::from_str::<Value>(&text).unwrap_or(Value::String(text));
    Ok(json!({
        "functionResponse": { "name": name, "response": { "content": content } }
    }))
}
