//! JSON read lazily: members kept as the text they were written as, decoded only when needed.
//! An adapter that looks at a few members of a large body (and copies the rest on) reads it as
//! [`Members`] instead of building the whole tree.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::value::RawValue;
use serde_json::{self as json, Value};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_stay_as_written_until_read() {
        let body = r#"{"a": "plain", "b": "caf\u00e9", "c": [1, 2], "d": null}"#;
        let m: Members<'_> = json::from_str(body).expect("object");
        assert_eq!(m["b"].get(), r#""caf\u00e9""#);
        assert!(matches!(string(Some(m["a"])), Some(Cow::Borrowed("plain"))));
        assert!(matches!(string(Some(m["b"])), Some(Cow::Owned(s)) if s == "café"));
        assert_eq!(string(Some(m["c"])), None);
        assert_eq!(string(None), None);
        assert!(is_string(m["a"]) && !is_string(m["c"]) && !is_string(m["d"]));
        assert_eq!(tree(m["c"]), serde_json::json!([1, 2]));
    }
}
