//! Routing strategies: order the candidate channels for one request.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "strategy",
        pub_export_macro: true,
        default_bindings_module: "smart_router_sdk::strategy::bindings",
    });
}

pub use bindings::exports::smart_router::gateway::routing::Ranking;
pub use bindings::smart_router::gateway::types::{Candidate, Health, RequestInfo};

/// A routing strategy.
///
/// `rank` gets the request's facts, the candidate channels (already filtered by the host for
/// capabilities, context length, cooldowns and quotas) with their live statistics, and the group's
/// parameters as JSON. It answers with candidate indices, best first; channels it leaves out are not
/// tried for this request.
pub trait Strategy {
    /// Orders `candidates` for `request`.
    fn rank(
        request: &RequestInfo,
        candidates: &[Candidate],
        params: &serde_json::Value,
    ) -> Result<Ranking, String>;
}

impl Ranking {
    /// A ranking with no explanation.
    pub fn new(order: Vec<u32>) -> Self {
        Ranking {
            order,
            explanation: None,
        }
    }

    /// Adds a human-readable reason, logged by the host at debug level.
    pub fn explained(mut self, why: impl Into<String>) -> Self {
        self.explanation = Some(why.into());
        self
    }
}

/// Parses the group parameters the host sends; `{}` when malformed JSON would otherwise trap.
#[doc(hidden)]
pub fn parse_params(params: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(params).map_err(|e| format!("strategy parameters are not JSON: {e}"))
}

/// [`parse_params`], remembering the last answer: a group's parameters are the same text on
/// every call, and an instance serves one call at a time.
#[doc(hidden)]
pub fn cached_params(params: &str) -> Result<std::rc::Rc<serde_json::Value>, String> {
    use std::cell::RefCell;
    use std::rc::Rc;
    thread_local! {
        static LAST: RefCell<Option<(String, Rc<serde_json::Value>)>> = const { RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| {
        if let Some((text, value)) = last.as_ref()
            && text == params
        {
            return Ok(value.clone());
        }
        let value = Rc::new(parse_params(params)?);
        *last = Some((params.to_string(), value.clone()));
        Ok(value)
    })
}

/// `x` with `places` decimals (`0.125` → `"0.125"` for 3), for explanations: integer arithmetic
/// instead of the standard float formatting, which costs a guest far more per number. It rounds
/// `x × 10^places` to the nearest integer, so a value within a rounding error of a halfway point
/// may round the other way than `{:.N}` would (`1.0005` → `"1.001"`); a value too large for that
/// (beyond 10^17 scaled) is written in full, and a negative value that rounds to zero has no sign.
pub fn decimal(x: f64, places: u32) -> String {
    let mut out = String::new();
    push_decimal(&mut out, x, places);
    out
}

/// [`decimal`], appended to `out`.
pub fn push_decimal(out: &mut String, x: f64, places: u32) {
    let places = places.min(9);
    let scale = 10u64.pow(places);
    let scaled = (x * scale as f64).round();
    if !scaled.is_finite() || scaled.abs() >= 1e17 {
        use std::fmt::Write;
        let _ = write!(out, "{x}");
        return;
    }
    let n = scaled as i64;
    if n < 0 {
        out.push('-');
    }
    push_digits(out, n.unsigned_abs() / scale, 0);
    if places > 0 {
        out.push('.');
        push_digits(out, n.unsigned_abs() % scale, places as usize);
    }
}

/// `n` in decimal, appended to `out` (a guest's `format!` runs the whole formatting machinery).
pub fn push_int(out: &mut String, n: u64) {
    push_digits(out, n, 0);
}

/// `n`'s digits, with leading zeros up to `width`.
fn push_digits(out: &mut String, mut n: u64, width: usize) {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for _ in buf.len() - at..width {
        out.push('0');
    }
    out.extend(buf[at..].iter().map(|&d| char::from(d)));
}

/// A ranking's explanation, `id=score, id=score`, in the order given: `unit` before each score,
/// which has `places` decimals. Built by appending, never through `format!`: at a few candidates
/// the formatting machinery cost a guest more than the ranking itself.
pub fn scores_explained(
    candidates: &[Candidate],
    ranked: impl IntoIterator<Item = (u32, f64)>,
    unit: &str,
    places: u32,
) -> String {
    let mut out = String::with_capacity(candidates.len() * 32);
    for (k, (i, score)) in ranked.into_iter().enumerate() {
        if k > 0 {
            out.push_str(", ");
        }
        if let Some(c) = candidates.get(i as usize) {
            out.push_str(&c.id);
        }
        out.push('=');
        out.push_str(unit);
        push_decimal(&mut out, score, places);
    }
    out
}

/// Exports a type that implements [`Strategy`] as this component's strategy.
///
/// ```ignore
/// struct Cheapest;
/// impl smart_router_sdk::Strategy for Cheapest { /* … */ }
/// smart_router_sdk::export_strategy!(Cheapest);
/// ```
#[macro_export]
macro_rules! export_strategy {
    ($t:ty) => {
        const _: () = {
            struct __SmartRouterStrategy;
            impl $crate::strategy::bindings::exports::smart_router::gateway::routing::Guest
                for __SmartRouterStrategy
            {
                fn rank(
                    request: $crate::RequestInfo,
                    candidates: ::std::vec::Vec<$crate::Candidate>,
                    params: ::std::string::String,
                ) -> ::std::result::Result<$crate::Ranking, ::std::string::String> {
                    let params = $crate::strategy::cached_params(&params)?;
                    <$t as $crate::Strategy>::rank(&request, &candidates, &params)
                }
            }
            $crate::strategy::bindings::export!(__SmartRouterStrategy with_types_in $crate::strategy::bindings);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_matches_fixed_point_formatting_for_ordinary_values() {
        assert_eq!(decimal(0.125, 3), "0.125");
        assert_eq!(decimal(0.73149, 3), "0.731");
        assert_eq!(decimal(2.0, 3), "2.000");
        assert_eq!(decimal(-0.25, 3), "-0.250");
        assert_eq!(decimal(0.0000015, 6), "0.000002");
        assert_eq!(decimal(7.6, 0), "8");
        assert_eq!(decimal(f64::NAN, 3), "NaN");
        assert_eq!(decimal(1e300, 3), format!("{}", 1e300));
        for x in [0.0, 1.5, 3.14259, 99.999, 12345.678] {
            assert_eq!(decimal(x, 3), format!("{x:.3}"), "{x}");
        }
        assert_eq!(decimal(0.5, 12), "0.500000000");
        assert_eq!(decimal(-1234.5678, 2), "-1234.57");
        let mut s = String::from("turn ");
        push_int(&mut s, 0);
        push_int(&mut s, 18_446_744_073_709_551_615);
        assert_eq!(s, "turn 018446744073709551615");
    }

    #[test]
    fn parameters_are_parsed_once_per_text() {
        let a = cached_params(r#"{"k": 1}"#).expect("json");
        let b = cached_params(r#"{"k": 1}"#).expect("json");
        assert!(std::rc::Rc::ptr_eq(&a, &b));
        let c = cached_params(r#"{"k": 2}"#).expect("json");
        assert_eq!(c["k"], 2);
        assert!(cached_params("{").is_err());
        assert_eq!(cached_params(r#"{"k": 2}"#).expect("json")["k"], 2);
    }
}
