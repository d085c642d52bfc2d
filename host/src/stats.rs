//! Live per-channel statistics, cheap to read on the hot path: latency and time-to-first-token
//! EWMAs, tokens per second, success rate over a rolling window, requests in flight, the daily
//! request quota and cooldowns.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Weight of the newest sample in the moving averages.
const ALPHA: f64 = 0.3;
/// Attempts remembered for the success rate.
const WINDOW: usize = 32;
const DAY_MS: u64 = 86_400_000;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// All channels' statistics, by channel id. Entries outlive config reloads, so a channel keeps
/// its history when the configuration changes around it.
#[derive(Default)]
pub struct Stats {
    channels: RwLock<HashMap<String, Arc<ChannelStats>>>,
}

impl Stats {
    pub fn channel(&self, id: &str) -> Arc<ChannelStats> {
        if let Some(s) = self
            .channels
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            return s.clone();
        }
        let mut map = self.channels.write().unwrap_or_else(|e| e.into_inner());
        map.entry(id.to_string()).or_default().clone()
    }
}

#[derive(Default)]
struct Window {
    latency_ms: Option<f64>,
    ttft_ms: Option<f64>,
    tokens_per_second: Option<f64>,
    outcomes: [bool; WINDOW],
    len: usize,
    next: usize,
    consecutive_failures: u32,
}

/// One channel's live numbers.
#[derive(Default)]
pub struct ChannelStats {
    in_flight: AtomicU32,
    quota_day: AtomicU64,
    quota_used: AtomicU64,
    cooldown_until_ms: AtomicU64,
    window: Mutex<Window>,
}

/// A read of a channel's statistics for one routing decision.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    pub latency_ms: Option<f64>,
    pub ttft_ms: Option<f64>,
    pub tokens_per_second: Option<f64>,
    pub success_rate: f64,
    pub consecutive_failures: u32,
    pub in_flight: u32,
    pub used_today: u64,
}

impl ChannelStats {
    pub fn snapshot(&self, now_ms: u64) -> Snapshot {
        let w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let successes = w.outcomes[..w.len].iter().filter(|ok| **ok).count();
        Snapshot {
            latency_ms: w.latency_ms,
            ttft_ms: w.ttft_ms,
            tokens_per_second: w.tokens_per_second,
            success_rate: if w.len == 0 {
                1.0
            } else {
                successes as f64 / w.len as f64
            },
            consecutive_failures: w.consecutive_failures,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            used_today: self.used_today(now_ms),
        }
    }

    /// Counts a request in flight until the guard drops.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn record_success(&self, latency_ms: f64, ttft_ms: Option<f64>, completion_tokens: u32) {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        w.latency_ms = Some(ewma(w.latency_ms, latency_ms));
        if let Some(t) = ttft_ms {
            w.ttft_ms = Some(ewma(w.ttft_ms, t));
        }
        let generation_ms = latency_ms - ttft_ms.unwrap_or(0.0);
        if completion_tokens > 0 && generation_ms > 0.0 {
            let tps = f64::from(completion_tokens) * 1000.0 / generation_ms;
            w.tokens_per_second = Some(ewma(w.tokens_per_second, tps));
        }
        w.consecutive_failures = 0;
        push(&mut w, true);
    }

    pub fn record_failure(&self) {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        w.consecutive_failures += 1;
        push(&mut w, false);
    }

    /// Parks the channel until `until_ms` (never shortens an existing cooldown).
    pub fn cool_down(&self, until_ms: u64) {
        self.cooldown_until_ms
            .fetch_max(until_ms, Ordering::Relaxed);
    }

    /// `Some(until)` while the channel is cooling down.
    pub fn cooling(&self, now_ms: u64) -> Option<u64> {
        let until = self.cooldown_until_ms.load(Ordering::Relaxed);
        (until > now_ms).then_some(until)
    }

    fn used_today(&self, now_ms: u64) -> u64 {
        if self.quota_day.load(Ordering::Acquire) == now_ms / DAY_MS {
            self.quota_used.load(Ordering::Acquire)
        } else {
            0
        }
    }

    /// Takes one request from today's quota; false when `limit` is reached. Exact under
    /// concurrency: the check and the increment are one atomic step.
    pub fn try_reserve(&self, limit: u64, now_ms: u64) -> bool {
        self.roll_day(now_ms);
        self.quota_used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used < limit).then_some(used + 1)
            })
            .is_ok()
    }

    /// Gives back a reservation whose request never reached the upstream.
    pub fn release(&self) {
        let _ = self
            .quota_used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| u.checked_sub(1));
    }

    /// Seeds today's count (at start-up, from the usage table).
    pub fn seed_today(&self, used: u64, now_ms: u64) {
        self.roll_day(now_ms);
        self.quota_used.fetch_max(used, Ordering::AcqRel);
    }

    fn roll_day(&self, now_ms: u64) {
        let today = now_ms / DAY_MS;
        let day = self.quota_day.load(Ordering::Acquire);
        if day != today
            && self
                .quota_day
                .compare_exchange(day, today, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.quota_used.store(0, Ordering::Release);
        }
    }
}

fn ewma(old: Option<f64>, sample: f64) -> f64 {
    match old {
        Some(o) => o + ALPHA * (sample - o),
        None => sample,
    }
}

fn push(w: &mut Window, ok: bool) {
    let i = w.next;
    w.outcomes[i] = ok;
    w.next = (i + 1) % WINDOW;
    w.len = (w.len + 1).min(WINDOW);
}

/// Decrements the in-flight count when dropped.
pub struct InFlight(Arc<ChannelStats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_is_exact_under_concurrency() {
        let s = Arc::new(ChannelStats::default());
        let now = now_ms();
        let granted = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..100 {
                        if s.try_reserve(50, now) {
                            granted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(granted.load(Ordering::Relaxed), 50);
        assert!(
            s.try_reserve(50, now + DAY_MS),
            "a new day resets the quota"
        );
    }

    #[test]
    fn success_rate_and_ewma() {
        let s = ChannelStats::default();
        s.record_success(100.0, None, 0);
        s.record_success(200.0, None, 0);
        s.record_failure();
        let snap = s.snapshot(now_ms());
        assert!((snap.success_rate - 2.0 / 3.0).abs() < 1e-9);
        assert!((snap.latency_ms.unwrap_or_default() - 130.0).abs() < 1e-9);
        assert_eq!(snap.consecutive_failures, 1);
    }
}
