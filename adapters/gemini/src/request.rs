//! OpenAI `chat.completions` request → Gemini `POST /v1beta/models/{model}:generateContent`.

use smart_router_sdk::json::{self, Map, Value, json};
use smart_router_sdk::openai::function_tools;
use smart_router_sdk::{Auth, ErrorClass, HttpRequest, ProviderError, RequestContext};

use crate::{contents, schema};

const DEFAULT_VERSION: &str = "v1beta";

pub fn bad(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ErrorClass::BadRequest, message)
}

pub fn translate(ctx: &RequestContext, body: &str) -> Result<HttpRequest, ProviderError> {
    let Ok(Value::Object(req)) = json::from_str::<Value>(body) else {
        return Err(bad("the request body is not a JSON object"));
    };
    let options: Value = json::from_str(&ctx.options).unwrap_or(Value::Null);
    let out = generate_body(&req, &options)?;
    let version = api_version(&options);
    let method = if ctx.is_stream {
        "streamGenerateContent?alt=sse"
    } else {
        "generateContent"
    };
    Ok(post(
        &format!("/{}/{}:{method}", encode(version), model_name(&ctx.model)),
        ctx.is_stream,
        &options,
        Value::Object(out),
    ))
}

/// The API version a provider's options name (`v1beta` by default).
pub fn api_version(options: &Value) -> &str {
    options
        .get("api_version")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_VERSION)
}

/// A JSON `POST` to `path` with the key in `x-goog-api-key`.
pub fn post(path: &str, stream: bool, options: &Value, body: Value) -> HttpRequest {
    HttpRequest::json_post(
        path,
        &body,
        stream,
        options,
        Auth::Header("x-goog-api-key".into()),
    )
}

/// `models/{model}`, URL-encoded. A model that names its collection (`tunedModels/…`,
/// `models/…`) keeps it.
pub fn model_name(model: &str) -> String {
    let model = model.trim_matches('/');
    if model.contains('/') {
        encode(model)
    } else {
        format!("models/{}", encode(model))
    }
}

/// Percent-encodes everything but unreserved characters and `/`.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `GenerateContentRequest` body.
fn generate_body(
    req: &Map<String, Value>,
    options: &Value,
) -> Result<Map<String, Value>, ProviderError> {
    let messages = req
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("`messages` must be an array"))?;
    let (system, turns) = contents::convert(messages)?;
    let mut out = Map::new();
    out.insert("contents".into(), turns.into());
    if !system.is_empty() {
        out.insert(
            "systemInstruction".into(),
            json!({ "parts": [{ "text": system }] }),
        );
    }
    let tools = match req.get("tools") {
        Some(Value::Array(list)) => convert_tools(list)?,
        None | Some(Value::Null) => Vec::new(),
        Some(_) => return Err(bad("`tools` must be an array")),
    };
    if !tools.is_empty() {
        out.insert("tools".into(), json!([{ "functionDeclarations": tools }]));
        if let Some(config) = tool_config(req.get("tool_choice"))? {
            out.insert(
                "toolConfig".into(),
                json!({ "functionCallingConfig": config }),
            );
        }
    }
    let config = generation_config(req, options)?;
    if !config.is_empty() {
        out.insert("generationConfig".into(), config.into());
    }
    if let Some(safety) = options.get("safety_settings").filter(|v| v.is_array()) {
        out.insert("safetySettings".into(), safety.clone());
    }
    Ok(out)
}

/// The most candidates `generateContent` returns for one request.
const MAX_CANDIDATES: u64 = 8;

/// Sampling, length, stop, candidate count, JSON mode and seed.
fn generation_config(
    req: &Map<String, Value>,
    options: &Value,
) -> Result<Map<String, Value>, ProviderError> {
    let mut out = Map::new();
    for (from, to) in [("temperature", "temperature"), ("top_p", "topP")] {
        if let Some(v) = req.get(from).filter(|v| v.is_number()) {
            out.insert(to.into(), v.clone());
        }
    }
    let max_tokens = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| req.get(*k).and_then(Value::as_u64));
    if let Some(n) = max_tokens {
        out.insert("maxOutputTokens".into(), n.into());
    }
    let stop = match req.get("stop") {
        Some(Value::String(s)) => vec![Value::from(s.as_str())],
        Some(Value::Array(list)) => list.iter().filter(|v| v.is_string()).cloned().collect(),
        _ => Vec::new(),
    };
    if !stop.is_empty() {
        out.insert("stopSequences".into(), stop.into());
    }
    if let Some(n) = req.get("n").and_then(Value::as_u64) {
        // Gemini gives at most 8 candidates: a request for more moves on to a channel that can
        // give them, and this channel's health is not touched.
        if n > MAX_CANDIDATES {
            return Err(ProviderError::new(
                ErrorClass::Unsupported,
                format!("Gemini returns at most {MAX_CANDIDATES} candidates, not `n: {n}`"),
            ));
        }
        out.insert("candidateCount".into(), n.into());
    }
    if let Some(seed) = req.get("seed").and_then(Value::as_i64) {
        out.insert("seed".into(), seed.into());
    }
    match req.get("response_format") {
        None | Some(Value::Null) => {}
        Some(format) => match format.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("json_object") => {
                out.insert("responseMimeType".into(), "application/json".into());
            }
            Some("json_schema") => {
                out.insert("responseMimeType".into(), "application/json".into());
                let wanted = format.get("json_schema").and_then(|s| s.get("schema"));
                if let Some(s) = wanted.filter(|s| s.is_object()) {
                    out.insert("responseSchema".into(), schema::clean(s));
                }
            }
            _ => return Err(bad("unsupported response_format")),
        },
    }
    if options.get("include_thoughts").and_then(Value::as_bool) == Some(true) {
        out.insert("thinkingConfig".into(), json!({ "includeThoughts": true }));
    }
    Ok(out)
}

/// OpenAI function tools → Gemini function declarations, schemas cleaned. Gemini refuses an
/// OBJECT schema without properties: a function without parameters simply has no `parameters`.
fn convert_tools(list: &[Value]) -> Result<Vec<Value>, ProviderError> {
    Ok(function_tools(list)?
        .into_iter()
        .map(|tool| {
            let mut out = tool.named();
            if let Some(p) = tool
                .parameters
                .map(schema::clean)
                .filter(|p| !schema::is_empty_object(p))
            {
                out.insert("parameters".into(), p);
            }
            Value::Object(out)
        })
        .collect())
}

/// `tool_choice` → `functionCallingConfig`.
fn tool_config(choice: Option<&Value>) -> Result<Option<Value>, ProviderError> {
    Ok(match choice {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Some(json!({ "mode": "AUTO" })),
            "none" => Some(json!({ "mode": "NONE" })),
            "required" => Some(json!({ "mode": "ANY" })),
            other => return Err(bad(format!("unsupported tool_choice `{other}`"))),
        },
        Some(v) => match v
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
        {
            Some(name) => Some(json!({ "mode": "ANY", "allowedFunctionNames": [name] })),
            None => return Err(bad("unsupported tool_choice")),
        },
    })
}
