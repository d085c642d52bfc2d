//! OpenAI `embeddings` ↔ Gemini `POST /v1beta/models/{model}:batchEmbedContents`.
//!
//! Each input string becomes one request of the batch; `dimensions` becomes
//! `outputDimensionality`. Gemini reports no token counts for embeddings, so the usage is left to
//! the host's estimate. Vectors come back as float lists whatever `encoding_format` asked (the
//! OpenAI SDKs accept both).

use smart_router_sdk::json::{self, Value, json};
use smart_router_sdk::{ChatResponse, ErrorClass, HttpRequest, ProviderError, RequestContext};

use crate::request::{api_version, bad, encode, model_name, post};

pub fn translate_request(ctx: &RequestContext, body: &str) -> Result<HttpRequest, ProviderError> {
    let Ok(Value::Object(req)) = json::from_str::<Value>(body) else {
        return Err(bad("the request body is not a JSON object"));
    };
    let texts: Vec<&str> = match req.get("input") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .ok_or_else(|| bad("Gemini embeds text only: `input` must be strings"))
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(bad("`input` must be a string or a list of strings")),
    };
    let options: Value = json::from_str(&ctx.options).unwrap_or(Value::Null);
    let model = model_name(&ctx.model);
    let dimensions = req.get("dimensions").and_then(Value::as_u64);
    let requests: Vec<Value> = texts
        .iter()
        .map(|text| {
            let mut r = json!({"model": model, "content": {"parts": [{"text": text}]}});
            if let Some(d) = dimensions {
                r["outputDimensionality"] = json!(d);
            }
            if let Some(task) = options.get("embedding_task_type") {
                r["taskType"] = task.clone();
            }
            r
        })
        .collect();
    Ok(post(
        &format!(
            "/{}/{model}:batchEmbedContents",
            encode(api_version(&options))
        ),
        false,
        &options,
        json!({ "requests": requests }),
    ))
}

pub fn translate_response(
    ctx: &RequestContext,
    status: u16,
    body: &[u8],
) -> Result<ChatResponse, ProviderError> {
    let v: Value = json::from_slice(body).map_err(|e| {
        ProviderError::new(
            ErrorClass::ServerError,
            format!("the provider answered with invalid JSON: {e}"),
        )
    })?;
    if v.get("error").is_some() {
        return Err(crate::errors::classify(status, &[], &v));
    }
    let Some(embeddings) = v.get("embeddings").and_then(Value::as_array) else {
        return Err(ProviderError::new(
            ErrorClass::ServerError,
            "the provider's response has no `embeddings`",
        ));
    };
    let data: Vec<Value> = embeddings
        .iter()
        .enumerate()
        .map(|(index, e)| {
            json!({"object": "embedding", "index": index,
                "embedding": e.get("values").cloned().unwrap_or_else(|| json!([]))})
        })
        .collect();
    let out = json!({"object": "list", "data": data, "model": ctx.model});
    Ok(ChatResponse {
        body: out.to_string(),
        usage: None,
    })
}
