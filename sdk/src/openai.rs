//! Reading OpenAI `chat.completions` requests and writing OpenAI chunks: the pieces every
//! adapter for a non-OpenAI provider needs (the `anthropic` and `gemini` adapters use them).

use serde_json::{Map, Value, json};

use crate::adapter::{ErrorClass, ProviderError};

/// The text of a message's `content`: the string, or the text parts of a content list joined
/// with newlines.
pub fn text_of(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Appends `parts` as a turn of `role`, merged into the last turn when that has the same role
/// (providers that want alternating roles refuse two turns of one role in a row). Empty parts
/// add nothing. Parts are whatever the adapter builds turns of (JSON values, or its own blocks).
pub fn push_turn<'a, T>(turns: &mut Vec<(&'a str, Vec<T>)>, role: &'a str, parts: Vec<T>) {
    if parts.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some((last, existing)) if *last == role => existing.extend(parts),
        _ => turns.push((role, parts)),
    }
}

/// One function tool from a request's `tools`.
pub struct FunctionTool<'a> {
    pub name: &'a str,
    pub description: Option<&'a str>,
    /// The JSON schema, when it is an object.
    pub parameters: Option<&'a Value>,
}

/// Reads `tools`: only named function tools are accepted (a `bad-request` otherwise).
pub fn function_tools(list: &[Value]) -> Result<Vec<FunctionTool<'_>>, ProviderError> {
    list.iter()
        .enumerate()
        .map(|(i, tool)| {
            let kind = tool
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("function");
            let function = tool.get("function").filter(|_| kind == "function");
            let Some(name) = function.and_then(|f| f.get("name")).and_then(Value::as_str) else {
                return Err(ProviderError::new(
                    ErrorClass::BadRequest,
                    format!("tools[{i}]: only named function tools are supported"),
                ));
            };
            Ok(FunctionTool {
                name,
                description: function
                    .and_then(|f| f.get("description"))
                    .and_then(Value::as_str),
                parameters: function
                    .and_then(|f| f.get("parameters"))
                    .filter(|p| p.is_object()),
            })
        })
        .collect()
}

impl FunctionTool<'_> {
    /// `{"name": …, "description": …}` (description only when given), for the provider's own
    /// tool format to add its schema field to.
    pub fn named(&self) -> Map<String, Value> {
        let mut out = Map::new();
        out.insert("name".into(), self.name.into());
        if let Some(d) = self.description {
            out.insert("description".into(), d.into());
        }
        out
    }
}

/// A `chat.completion.chunk` with `choices` and, when given, `usage`.
pub fn chunk(id: &str, model: &str, choices: Vec<Value>, usage: Option<Value>) -> String {
    let mut chunk = json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": choices,
    });
    if let Some(usage) = usage {
        chunk["usage"] = usage;
    }
    chunk.to_string()
}
