//! Live per-channel statistics, cheap to read on the hot path: latency and time-to-first-token
//! EWMAs, tokens per second, success rate over a rolling window, requests in flight, the daily
//! request quota and cooldowns.

use rustc_hash::FxHashMap as HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::quota::DailyCounter;

/// Weight of the newest sample in the moving averages.
const ALPHA: f64 = 0.3;
/// Failures in a row that open a channel's circuit breaker…
const BREAKER_FAILURES: u32 = 5;
/// …or a success rate below this over at least `BREAKER_MIN_SAMPLES` attempts.
const BREAKER_MIN_RATE: f64 = 0.5;
const BREAKER_MIN_SAMPLES: usize = 10;
/// How long a breaker stays open the first time; doubled on each trip in a row, up to the max.
const BREAKER_OPEN_MS: u64 = 5_000;
const BREAKER_MAX_OPEN_MS: u64 = 300_000;
/// A half-open probe that never reports back frees its slot after this long.
const PROBE_TIMEOUT_MS: u64 = 60_000;
/// Attempts remembered for the success rate.
const WINDOW: usize = 32;

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
    sequences: RwLock<HashMap<String, Arc<AtomicU64>>>,
}

impl Stats {
    /// The next value of a model name's request counter (for rotating strategies).
    pub fn next_sequence(&self, model: &str) -> u64 {
        if let Some(c) = self
            .sequences
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(model)
        {
            return c.fetch_add(1, Ordering::Relaxed);
        }
        let counter = self
            .sequences
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(model.to_string())
            .or_default()
            .clone();
        counter.fetch_add(1, Ordering::Relaxed)
    }

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
    /// The breaker is open until then (0 = closed).
    breaker_until: u64,
    /// Trips in a row without a success in between.
    trips: u32,
    /// When the half-open probe in flight started (0 = none).
    probe_started: u64,
}

/// Whether a channel's circuit breaker lets requests through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breaker {
    Closed,
    /// Open until this time: not tried.
    Open(u64),
    /// The open period is over: one real request at a time may test the channel.
    HalfOpen,
}

/// One channel's live numbers.
#[derive(Default)]
pub struct ChannelStats {
    in_flight: AtomicU32,
    /// Today's requests, tokens and micro-dollars against the channel's daily limits.
    pub quota: Quotas,
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
}

impl ChannelStats {
    pub fn snapshot(&self) -> Snapshot {
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
        }
    }

    /// Counts a request in flight until the guard drops.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn record_success(&self, latency_ms: f64, ttft_ms: Option<f64>, completion_tokens: u32) {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if w.breaker_until != 0 {
            // A half-open probe succeeded: close, and forget the failures that opened it.
            w.breaker_until = 0;
            w.trips = 0;
            w.probe_started = 0;
            w.len = 0;
            w.next = 0;
        }
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

    /// Counts a failed attempt. `breaker`: the failure says the channel is unhealthy (server
    /// error, timeout, broken connection), so it counts towards opening the circuit breaker.
    pub fn record_failure(&self, now_ms: u64, breaker: bool) {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        w.consecutive_failures += 1;
        push(&mut w, false);
        if !breaker {
            return;
        }
        let probing = w.breaker_until != 0;
        let successes = w.outcomes[..w.len].iter().filter(|ok| **ok).count();
        let poor =
            w.len >= BREAKER_MIN_SAMPLES && (successes as f64) < BREAKER_MIN_RATE * w.len as f64;
        if probing || w.consecutive_failures >= BREAKER_FAILURES || poor {
            w.trips += 1;
            let open = BREAKER_OPEN_MS
                .saturating_mul(1u64 << (w.trips - 1).min(10))
                .min(BREAKER_MAX_OPEN_MS);
            w.breaker_until = now_ms + open;
            w.probe_started = 0;
        }
    }

    /// The breaker's state now.
    pub fn breaker(&self, now_ms: u64) -> Breaker {
        let w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        match w.breaker_until {
            0 => Breaker::Closed,
            until if now_ms < until => Breaker::Open(until),
            _ => Breaker::HalfOpen,
        }
    }

    /// May a request be sent now: `Some(0)` when the breaker is closed, `Some(at)` when it
    /// claims the half-open probe slot at `at`, `None` when the breaker is open or another
    /// request is probing.
    pub fn claim(&self, now_ms: u64) -> Option<u64> {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if w.breaker_until == 0 {
            return Some(0);
        }
        if now_ms < w.breaker_until
            || (w.probe_started != 0 && now_ms - w.probe_started < PROBE_TIMEOUT_MS)
        {
            return None;
        }
        // Never 0, which means no probe.
        w.probe_started = now_ms.max(1);
        Some(w.probe_started)
    }

    /// Frees the probe slot claimed at `claimed_at` when its request ended saying nothing of the
    /// channel's health (refused before sending, or answered with the client's fault or a
    /// rate limit): the next request probes instead of waiting out `PROBE_TIMEOUT_MS`.
    pub fn release_probe(&self, claimed_at: u64) {
        if claimed_at == 0 {
            return;
        }
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if w.probe_started == claimed_at {
            w.probe_started = 0;
        }
    }

    /// Lifts a cooldown (the channel's configuration changed).
    pub fn clear_cooldown(&self) {
        self.cooldown_until_ms.store(0, Ordering::Relaxed);
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

/// Daily counters of one channel.
#[derive(Default)]
pub struct Quotas {
    pub requests: DailyCounter,
    pub tokens: DailyCounter,
    pub cost_micros: DailyCounter,
}

/// What one attempt holds against a channel's daily limits until it settles.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reservation {
    day: u64,
    requests: u64,
    tokens: u64,
    cost_micros: u64,
}

impl Quotas {
    /// Reserves one request and the estimated tokens and cost against every limit the channel
    /// has — all or nothing. `Err` names the limit that is full.
    pub fn reserve(
        &self,
        ch: &crate::config::Channel,
        day: u64,
        tokens: u64,
        cost_micros: u64,
    ) -> Result<Reservation, &'static str> {
        let mut r = Reservation {
            day,
            ..Reservation::default()
        };
        if let Some(limit) = ch.daily_limit {
            if !self.requests.try_reserve(1, limit, day) {
                return Err("daily_limit");
            }
            r.requests = 1;
        }
        if let Some(limit) = ch.daily_token_limit {
            if !self.tokens.try_reserve(tokens, limit, day) {
                self.cancel(&r);
                return Err("daily_token_limit");
            }
            r.tokens = tokens;
        }
        if let Some(limit) = ch.daily_cost_limit_micros {
            if !self.cost_micros.try_reserve(cost_micros, limit, day) {
                self.cancel(&r);
                return Err("daily_cost_limit");
            }
            r.cost_micros = cost_micros;
        }
        Ok(r)
    }

    /// Gives a reservation back whole: the request never reached the upstream.
    pub fn cancel(&self, r: &Reservation) {
        self.requests.settle(r.requests, 0, r.day);
        self.tokens.settle(r.tokens, 0, r.day);
        self.cost_micros.settle(r.cost_micros, 0, r.day);
    }

    /// Replaces the estimates with what the call really used; the request itself stays counted.
    pub fn settle(
        &self,
        r: &Reservation,
        ch: &crate::config::Channel,
        tokens: u64,
        cost_micros: u64,
    ) {
        if ch.daily_token_limit.is_some() {
            self.tokens.settle(r.tokens, tokens, r.day);
        }
        if ch.daily_cost_limit_micros.is_some() {
            self.cost_micros.settle(r.cost_micros, cost_micros, r.day);
        }
    }

    /// The largest share of any daily limit used today (`None`: the channel has no limits).
    pub fn used_share(&self, ch: &crate::config::Channel, day: u64) -> Option<f64> {
        let share = |limit: Option<u64>, counter: &DailyCounter| {
            limit.map(|l| {
                if l == 0 {
                    1.0
                } else {
                    counter.used(day) as f64 / l as f64
                }
            })
        };
        [
            share(ch.daily_limit, &self.requests),
            share(ch.daily_token_limit, &self.tokens),
            share(ch.daily_cost_limit_micros, &self.cost_micros),
        ]
        .into_iter()
        .flatten()
        .reduce(f64::max)
    }
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
    fn breaker_opens_probes_one_at_a_time_and_closes_on_success() {
        let s = ChannelStats::default();
        let t = 1_000_000;
        for _ in 0..BREAKER_FAILURES - 1 {
            s.record_failure(t, true);
        }
        assert_eq!(s.breaker(t), Breaker::Closed);
        s.record_failure(t, false);
        assert_eq!(
            s.breaker(t),
            Breaker::Closed,
            "a rate limit or client error does not trip it"
        );
        s.record_failure(t, true);
        assert_eq!(s.breaker(t), Breaker::Open(t + BREAKER_OPEN_MS));
        assert_eq!(s.claim(t + 1), None);
        let later = t + BREAKER_OPEN_MS;
        assert_eq!(s.breaker(later), Breaker::HalfOpen);
        assert_eq!(s.claim(later), Some(later), "one probe");
        assert_eq!(s.claim(later), None, "only one at a time");
        // A probe that ends with no verdict hands the slot on; a stale claim frees nothing.
        s.release_probe(later - 1);
        assert_eq!(s.claim(later + 1), None);
        s.release_probe(later);
        assert_eq!(
            s.claim(later + 1),
            Some(later + 1),
            "the next request probes"
        );
        s.record_failure(later, true);
        assert_eq!(
            s.breaker(later),
            Breaker::Open(later + 2 * BREAKER_OPEN_MS),
            "a failed probe reopens for longer"
        );
        let again = later + 2 * BREAKER_OPEN_MS;
        assert_eq!(s.claim(again), Some(again));
        s.record_success(10.0, None, 0);
        assert_eq!(s.breaker(again), Breaker::Closed);
        assert_eq!(
            s.snapshot().success_rate,
            1.0,
            "the failures that opened it are forgotten"
        );
    }

    #[test]
    fn success_rate_and_ewma() {
        let s = ChannelStats::default();
        s.record_success(100.0, None, 0);
        s.record_success(200.0, None, 0);
        s.record_failure(now_ms(), true);
        let snap = s.snapshot();
        assert!((snap.success_rate - 2.0 / 3.0).abs() < 1e-9);
        assert!((snap.latency_ms.unwrap_or_default() - 130.0).abs() < 1e-9);
        assert_eq!(snap.consecutive_failures, 1);
    }
}
