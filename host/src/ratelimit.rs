//! Requests and tokens per minute per gateway key: a token bucket per key that holds up to the
//! key's limit and refills at limit / 60 a second, so a key may spend its whole minute in a burst
//! and then gets its share back evenly. Per gateway instance, like the budgets' holds: several
//! instances behind a balancer each allow the limit.
//!
//! Requests are taken one at a time. Tokens are known only once the answer is in, so a request
//! is let through while the key's token bucket is not empty, holds its prompt estimate at once
//! (so a burst of concurrent requests cannot all pass on the last token) and settles to what the
//! provider reported afterwards. A request larger than what was left puts the bucket in debt,
//! by at most one minute's worth, and the key waits until it is paid back.

use std::collections::HashMap;
use std::sync::Mutex;

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Requests,
    Tokens,
}

impl Unit {
    /// OpenAI's name for it in `x-ratelimit-*-{name}` headers and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Unit::Requests => "requests",
            Unit::Tokens => "tokens",
        }
    }
}

/// Where a key stands after a request was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    pub unit: Unit,
    /// Per minute.
    pub limit: u32,
    /// What the key may still use now.
    pub remaining: u32,
    /// Milliseconds until the bucket is full again.
    pub reset_ms: u64,
    /// What this request took: its cost, or less when that would have put the key more than a
    /// minute in debt. What is settled or given back later is reckoned from this, so a request
    /// asking for far more than the limit cannot be handed back tokens it never took.
    pub taken: u32,
}

/// A request refused: when the next one may come, and where the key stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub retry_after_ms: u64,
    pub allowance: Allowance,
}

impl Allowance {
    /// OpenAI's `x-ratelimit-*-requests` or `-tokens` headers: limit, remaining, and the time
    /// until the bucket is full (`reset`, as a Go duration: `17ms`, `1.5s`, `6m0s`).
    pub fn headers(&self) -> [(&'static str, String); 3] {
        let [limit, remaining, reset] = match self.unit {
            Unit::Requests => [
                "x-ratelimit-limit-requests",
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests",
            ],
            Unit::Tokens => [
                "x-ratelimit-limit-tokens",
                "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-tokens",
            ],
        };
        [
            (limit, self.limit.to_string()),
            (remaining, self.remaining.to_string()),
            (reset, go_duration(self.reset_ms)),
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
    /// May go below zero (tokens used beyond what was left), by at most the limit.
    tokens: f64,
    at_ms: u64,
}

/// One bucket per key, counting one unit.
pub struct KeyRates {
    unit: Unit,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl KeyRates {
    pub fn new(unit: Unit) -> Self {
        KeyRates {
            unit,
            buckets: Mutex::default(),
        }
    }

    /// Lets a request through when `key`'s bucket holds at least one unit at `now_ms`, taking
    /// `cost` from it; or says when the bucket is back to one.
    pub fn take(
        &self,
        key: &str,
        limit: u32,
        cost: u32,
        now_ms: u64,
    ) -> Result<Allowance, Refused> {
        self.with_bucket(key, limit, now_ms, |b, cap, per_ms| {
            let admitted = b.tokens >= 1.0;
            let before = b.tokens;
            if admitted {
                b.tokens = (b.tokens - f64::from(cost)).max(-cap);
            }
            let mut allowance = self.allowance(b, limit, cap, per_ms);
            if admitted {
                allowance.taken = (before - b.tokens).round() as u32;
                Ok(allowance)
            } else {
                Err(Refused {
                    retry_after_ms: ((1.0 - b.tokens) / per_ms).ceil().max(1.0) as u64,
                    allowance,
                })
            }
        })
    }

    /// Adds `delta` to what `key` has used: more than it took (positive), or given back
    /// (negative), never past a full bucket or a minute of debt.
    pub fn settle(&self, key: &str, limit: u32, delta: i64, now_ms: u64) {
        if delta != 0 {
            self.with_bucket(key, limit, now_ms, |b, cap, _| {
                b.tokens = (b.tokens - delta as f64).clamp(-cap, cap);
            });
        }
    }

    fn allowance(&self, b: &Bucket, limit: u32, cap: f64, per_ms: f64) -> Allowance {
        Allowance {
            unit: self.unit,
            limit,
            remaining: b.tokens.max(0.0).floor() as u32,
            reset_ms: ((cap - b.tokens) / per_ms).ceil() as u64,
            taken: 0,
        }
    }

    /// `key`'s bucket, refilled up to `now_ms`.
    fn with_bucket<T>(
        &self,
        key: &str,
        limit: u32,
        now_ms: u64,
        f: impl FnOnce(&mut Bucket, f64, f64) -> T,
    ) -> T {
        let cap = f64::from(limit.max(1));
        let per_ms = cap / 60_000.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 100_000 {
            // Keys idle long enough to be full again lose nothing by being forgotten.
            buckets.retain(|_, b| now_ms.saturating_sub(b.at_ms) < 120_000);
        }
        // Look up before inserting: only a key's first request allocates its id.
        if !buckets.contains_key(key) {
            buckets.insert(
                key.to_owned(),
                Bucket {
                    tokens: cap,
                    at_ms: now_ms,
                },
            );
        }
        let Some(b) = buckets.get_mut(key) else {
            unreachable!("inserted above")
        };
        let elapsed = now_ms.saturating_sub(b.at_ms) as f64;
        // A lowered limit takes effect at once.
        b.tokens = (b.tokens + elapsed * per_ms).min(cap);
        b.at_ms = now_ms.max(b.at_ms);
        f(b, cap, per_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_spends_its_minute_then_gets_its_share_back() {
        let rates = KeyRates::new(Unit::Requests);
        let t = 1_000_000;
        for left in (0..3).rev() {
            let a = rates.take("k", 3, 1, t).expect("allowed");
            assert_eq!((a.limit, a.remaining), (3, left));
        }
        // Empty: one request comes back every 20 s.
        let refused = rates.take("k", 3, 1, t).expect_err("empty");
        assert_eq!(refused.retry_after_ms, 20_000);
        assert_eq!(refused.allowance.remaining, 0);
        assert_eq!(refused.allowance.reset_ms, 60_000);
        let refused = rates.take("k", 3, 1, t + 5_000).expect_err("still empty");
        assert_eq!(refused.retry_after_ms, 15_000);
        let a = rates.take("k", 3, 1, t + 20_000).expect("refilled");
        assert_eq!(a.remaining, 0);
        assert_eq!(a.reset_ms, 60_000);
        // Other keys have their own buckets.
        assert!(rates.take("other", 3, 1, t).is_ok());
        // A full minute idle refills to the limit, no further.
        assert_eq!(
            rates.take("k", 3, 1, t + 600_000).expect("full").remaining,
            2
        );
    }

    #[test]
    fn a_lowered_limit_applies_at_once() {
        let rates = KeyRates::new(Unit::Requests);
        assert_eq!(rates.take("k", 100, 1, 0).expect("ok").remaining, 99);
        assert_eq!(rates.take("k", 2, 1, 0).expect("ok").remaining, 1);
        assert_eq!(rates.take("k", 2, 1, 0).expect("ok").remaining, 0);
        assert!(rates.take("k", 2, 1, 0).is_err());
    }

    #[test]
    fn tokens_are_held_then_settled_and_a_large_answer_puts_the_key_in_debt() {
        let tokens = KeyRates::new(Unit::Tokens);
        let t = 1_000_000;
        // 600 tokens a minute: 10 a second. A request holding 100 leaves 500.
        let a = tokens.take("k", 600, 100, t).expect("allowed");
        assert_eq!((a.unit, a.remaining), (Unit::Tokens, 500));
        // It used 150: 50 more. Another used only 20 of its 100.
        tokens.settle("k", 600, 50, t);
        assert_eq!(tokens.take("k", 600, 100, t).expect("ok").remaining, 350);
        tokens.settle("k", 600, -80, t);
        // One huge answer: 2,000 tokens over what was held. The debt stops at a minute's worth.
        assert_eq!(tokens.take("k", 600, 0, t).expect("ok").remaining, 430);
        tokens.settle("k", 600, 2_000, t);
        let refused = tokens.take("k", 600, 1, t).expect_err("in debt");
        assert_eq!(refused.allowance.remaining, 0);
        // From -600 back to 1 at 10 a second.
        assert_eq!(refused.retry_after_ms, 60_100);
        assert_eq!(refused.allowance.reset_ms, 120_000);
        assert_eq!(
            refused.allowance.headers()[1],
            ("x-ratelimit-remaining-tokens", "0".to_string())
        );
        assert!(tokens.take("k", 600, 1, t + 60_100).is_ok());
        // A refund never fills the bucket past its limit.
        tokens.settle("k", 600, -10_000, t + 60_100);
        assert_eq!(
            tokens.take("k", 600, 0, t + 60_100).expect("ok").remaining,
            600
        );
    }

    #[test]
    fn a_request_asking_for_more_than_a_minute_takes_only_what_it_can() {
        let tokens = KeyRates::new(Unit::Tokens);
        let t = 1_000_000;
        // A full bucket of 600 and a minute of debt: 1,200 taken of the million asked.
        let a = tokens.take("k", 600, 1_000_000, t).expect("allowed");
        assert_eq!((a.taken, a.remaining), (1_200, 0));
        // It used 900: settled from what it took, the key is 300 in debt, not refilled.
        tokens.settle("k", 600, 900 - i64::from(a.taken), t);
        assert!(tokens.take("k", 600, 1, t).is_err());
        // At 10 a second, from -300 back to 1.
        assert_eq!(tokens.take("k", 600, 1, t + 30_100).expect("ok").taken, 1);
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
