//! Requests per minute per gateway key: a token bucket per key that holds up to the key's
//! limit and refills at limit / 60 a second, so a key may spend its whole minute in a burst and
//! then gets one request every 60 / limit seconds. Per gateway instance, like the budgets'
//! holds: several instances behind a balancer each allow the limit.

use std::collections::HashMap;
use std::sync::Mutex;

/// Where a key stands after a request was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    /// Requests per minute.
    pub limit: u32,
    /// Requests the key may still send now.
    pub remaining: u32,
    /// Milliseconds until the bucket is full again.
    pub reset_ms: u64,
}

/// A request refused: when the next one may come, and where the key stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub retry_after_ms: u64,
    pub allowance: Allowance,
}

impl Allowance {
    /// OpenAI's `x-ratelimit-*-requests` headers: limit, remaining, and the time until the
    /// bucket is full (`reset`, as a Go duration: `17ms`, `1.5s`, `6m0s`).
    pub fn headers(&self) -> [(&'static str, String); 3] {
        [
            ("x-ratelimit-limit-requests", self.limit.to_string()),
            ("x-ratelimit-remaining-requests", self.remaining.to_string()),
            ("x-ratelimit-reset-requests", go_duration(self.reset_ms)),
        ]
    }
}

fn go_duration(ms: u64) -> String {
    let secs = |ms: u64| {
        let s = format!("{:.3}", ms as f64 / 1000.0);
        let s = s.trim_end_matches('0').trim_end_matches('.');
        format!("{s}s")
    };
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => secs(ms),
        _ => format!("{}m{}", ms / 60_000, secs(ms % 60_000)),
    }
}

struct Bucket {
    tokens: f64,
    at_ms: u64,
}

#[derive(Default)]
pub struct KeyRates {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl KeyRates {
    /// Takes one request from `key`'s bucket at `now_ms`, or says when one is back.
    pub fn take(&self, key: &str, limit: u32, now_ms: u64) -> Result<Allowance, Refused> {
        let limit = limit.max(1);
        let cap = f64::from(limit);
        let per_ms = cap / 60_000.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 100_000 {
            // Keys idle long enough to be full again lose nothing by being forgotten.
            buckets.retain(|_, b| now_ms.saturating_sub(b.at_ms) < 60_000);
        }
        let b = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: cap,
            at_ms: now_ms,
        });
        let elapsed = now_ms.saturating_sub(b.at_ms) as f64;
        // A lowered limit takes effect at once.
        b.tokens = (b.tokens + elapsed * per_ms).min(cap);
        b.at_ms = now_ms;
        let taken = b.tokens >= 1.0;
        if taken {
            b.tokens -= 1.0;
        }
        let allowance = Allowance {
            limit,
            remaining: b.tokens.floor() as u32,
            reset_ms: ((cap - b.tokens) / per_ms).ceil() as u64,
        };
        if taken {
            Ok(allowance)
        } else {
            Err(Refused {
                retry_after_ms: ((1.0 - b.tokens) / per_ms).ceil().max(1.0) as u64,
                allowance,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_spends_its_minute_then_gets_its_share_back() {
        let rates = KeyRates::default();
        let t = 1_000_000;
        for left in (0..3).rev() {
            let a = rates.take("k", 3, t).expect("allowed");
            assert_eq!((a.limit, a.remaining), (3, left));
        }
        // Empty: one request comes back every 20 s.
        let refused = rates.take("k", 3, t).expect_err("empty");
        assert_eq!(refused.retry_after_ms, 20_000);
        assert_eq!(refused.allowance.remaining, 0);
        assert_eq!(refused.allowance.reset_ms, 60_000);
        let refused = rates.take("k", 3, t + 5_000).expect_err("still empty");
        assert_eq!(refused.retry_after_ms, 15_000);
        let a = rates.take("k", 3, t + 20_000).expect("refilled");
        assert_eq!(a.remaining, 0);
        assert_eq!(a.reset_ms, 60_000);
        // Other keys have their own buckets.
        assert!(rates.take("other", 3, t).is_ok());
        // A full minute idle refills to the limit, no further.
        assert_eq!(rates.take("k", 3, t + 600_000).expect("full").remaining, 2);
    }

    #[test]
    fn a_lowered_limit_applies_at_once() {
        let rates = KeyRates::default();
        assert_eq!(rates.take("k", 100, 0).expect("ok").remaining, 99);
        assert_eq!(rates.take("k", 2, 0).expect("ok").remaining, 1);
        assert_eq!(rates.take("k", 2, 0).expect("ok").remaining, 0);
        assert!(rates.take("k", 2, 0).is_err());
    }

    #[test]
    fn reset_times_read_as_openai_writes_them() {
        let reset = |ms| go_duration(ms);
        assert_eq!(reset(0), "0ms");
        assert_eq!(reset(17), "17ms");
        assert_eq!(reset(1_000), "1s");
        assert_eq!(reset(1_500), "1.5s");
        assert_eq!(reset(360_000), "6m0s");
        assert_eq!(reset(61_250), "1m1.25s");
    }
}
