//! JSON read lazily: members kept as the text they were written as, decoded only when needed.

use std::borrow::Cow;
use std::collections::BTreeMap;

use smart_router_sdk::json::value::RawValue;
use smart_router_sdk::json::{self, Value};

/// An object's members, each kept as written until it is needed.
pub type Members<'a> = BTreeMap<String, &'a RawValue>;

/// A member as a value (`null` when it does not parse).
pub fn tree(raw: &RawValue) -> Value {
    json::from_str(raw.get()).unwrap_or(Value::Null)
}

/// True when `raw` is a JSON string.
pub fn is_string(raw: &RawValue) -> bool {
    raw.get().trim_start().starts_with('"')
}

/// A string member, borrowed unless it has escapes.
pub fn string(raw: Option<&RawValue>) -> Option<Cow<'_, str>> {
    let raw = raw?.get();
    match json::from_str::<&str>(raw) {
        Ok(s) => Some(Cow::Borrowed(s)),
        Err(_) => json::from_str::<String>(raw).ok().map(Cow::Owned),
    }
}
