//! `p2c`: power of two choices over peak-EWMA latency (as linkerd and Helicone balance).
//!
//! Two candidates are drawn at random; the one with the lower load cost goes first, where
//! `cost = latency EWMA × (requests in flight + 1) ÷ success rate`; a channel with no
//! measurement yet costs `default_latency_ms` (default 0: it is explored at once). The rest follow
//! by the same cost. Use it for many equivalent channels under real load: it avoids herding onto
//! the one that looked fastest a moment ago.

use smart_router_sdk::json::Value;
use smart_router_sdk::{Candidate, Ranking, RequestInfo, Strategy, export_strategy};

struct P2c;

impl Strategy for P2c {
    fn rank(
        request: &RequestInfo,
        candidates: &[Candidate],
        params: &Value,
    ) -> Result<Ranking, String> {
        let default_latency = params
            .get("default_latency_ms")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        let cost = |c: &Candidate| {
            let latency = c
                .ttft_ms
                .filter(|_| request.is_stream)
                .or(c.latency_ms)
                .unwrap_or(default_latency);
            latency * f64::from(c.in_flight + 1) / c.success_rate.max(0.05)
        };
        let n = candidates.len() as u64;
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.sort_by(|&a, &b| {
            cost(&candidates[a as usize]).total_cmp(&cost(&candidates[b as usize]))
        });
        if n >= 2 {
            let i = (request.random % n) as usize;
            let mut j = ((request.random >> 32) % (n - 1)) as usize;
            if j >= i {
                j += 1;
            }
            let (a, b) = (i as u32, j as u32);
            let winner = if cost(&candidates[a as usize]) <= cost(&candidates[b as usize]) {
                a
            } else {
                b
            };
            order.retain(|&x| x != winner);
            order.insert(0, winner);
        }
        Ok(Ranking::new(order))
    }
}

export_strategy!(P2c);
