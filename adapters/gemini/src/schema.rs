//! JSON Schema → the OpenAPI subset Gemini accepts in `parameters` and `responseSchema`.
//!
//! Gemini refuses unknown keywords (`$schema`, `additionalProperties`, `strict`, …), so only the
//! fields of its `Schema` object are kept, at every level. Local `$ref`s into `$defs` /
//! `definitions` are inlined, `const` becomes a one-value `enum`, `oneOf` becomes `anyOf`, and a
//! `type` list with `"null"` becomes `nullable`.

use smart_router_sdk::json::{Map, Value, json};

/// The keywords of Gemini's `Schema` that hold plain values.
const KEPT: &[&str] = &[
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "default",
    "minimum",
    "maximum",
    "propertyOrdering",
];

/// `format` values Gemini accepts; others are dropped.
const FORMATS: &[&str] = &["enum", "date-time", "int32", "int64", "float", "double"];

/// How deep `$ref`s are followed (recursive types are cut off there).
const MAX_REF_DEPTH: usize = 8;

/// Cleans a whole schema, resolving its references against its own `$defs`.
pub fn clean(schema: &Value) -> Value {
    let empty = Map::new();
    let defs = schema
        .get("$defs")
        .or_else(|| schema.get("definitions"))
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    clean_at(schema, defs, 0)
}

/// True for `{"type": "object"}` (or `{}`) with no properties.
pub fn is_empty_object(schema: &Value) -> bool {
    matches!(
        schema.get("type").and_then(Value::as_str),
        None | Some("object")
    ) && schema.get("anyOf").is_none()
        && schema
            .get("properties")
            .and_then(Value::as_object)
            .is_none_or(Map::is_empty)
}

fn clean_at(schema: &Value, defs: &Map<String, Value>, depth: usize) -> Value {
    let Some(map) = schema.as_object() else {
        return schema.clone();
    };
    if let Some(target) = map.get("$ref").and_then(Value::as_str) {
        return resolve(target, map, defs, depth);
    }
    let mut out = Map::new();
    for (key, value) in map {
        match key.as_str() {
            "type" => set_type(&mut out, value),
            "format" => {
                if value.as_str().is_some_and(|f| FORMATS.contains(&f)) {
                    out.insert(key.clone(), value.clone());
                }
            }
            "const" => {
                out.insert("enum".into(), json!([value]));
            }
            "properties" => {
                if let Some(props) = value.as_object() {
                    let props = props
                        .iter()
                        .map(|(name, s)| (name.clone(), clean_at(s, defs, depth)))
                        .collect::<Map<_, _>>();
                    out.insert(key.clone(), props.into());
                }
            }
            "items" => {
                // A tuple (`items: [...]`) keeps its first entry's shape.
                let item = value.as_array().and_then(|l| l.first()).unwrap_or(value);
                out.insert(key.clone(), clean_at(item, defs, depth));
            }
            "anyOf" | "oneOf" => {
                if let Some(list) = value.as_array() {
                    let list: Vec<Value> = list.iter().map(|s| clean_at(s, defs, depth)).collect();
                    out.insert("anyOf".into(), list.into());
                }
            }
            k if KEPT.contains(&k) => {
                out.insert(key.clone(), value.clone());
            }
            _ => {}
        }
    }
    Value::Object(out)
}

/// Inlines `#/$defs/Name` (or `#/definitions/Name`); siblings such as `description` win.
fn resolve(
    target: &str,
    map: &Map<String, Value>,
    defs: &Map<String, Value>,
    depth: usize,
) -> Value {
    let name = target
        .strip_prefix("#/$defs/")
        .or_else(|| target.strip_prefix("#/definitions/"));
    let found = name.and_then(|n| defs.get(n));
    let mut out = match found {
        Some(def) if depth < MAX_REF_DEPTH => clean_at(def, defs, depth + 1),
        _ => json!({ "type": "object" }),
    };
    let siblings: Map<String, Value> = map
        .iter()
        .filter(|(k, _)| k.as_str() != "$ref")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let (Value::Object(out), Value::Object(extra)) =
        (&mut out, clean_at(&Value::Object(siblings), defs, depth))
    {
        out.extend(extra);
    }
    out
}

/// `type`: a string passes; `["string", "null"]` becomes `string` + `nullable`.
fn set_type(out: &mut Map<String, Value>, value: &Value) {
    match value {
        Value::String(_) => {
            out.insert("type".into(), value.clone());
        }
        Value::Array(list) => {
            let types: Vec<&str> = list.iter().filter_map(Value::as_str).collect();
            let real: Vec<&str> = types.iter().copied().filter(|t| *t != "null").collect();
            if let [only] = real.as_slice() {
                out.insert("type".into(), (*only).into());
            } else if !real.is_empty() {
                let any: Vec<Value> = real.iter().map(|t| json!({ "type": t })).collect();
                out.insert("anyOf".into(), any.into());
            }
            if real.len() < types.len() {
                out.insert("nullable".into(), true.into());
            }
        }
        _ => {}
    }
}
