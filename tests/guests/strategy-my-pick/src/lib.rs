//! The README's "Write a strategy" example, verbatim (kept in sync by the e2e test).

use smart_router_sdk::{Candidate, Ranking, RequestInfo, Strategy, export_strategy, json::Value};

struct MyPick;

impl Strategy for MyPick {
    fn rank(
        req: &RequestInfo,
        candidates: &[Candidate],
        params: &Value,
    ) -> Result<Ranking, String> {
        let max_latency = params["max_latency_ms"].as_f64().unwrap_or(f64::INFINITY);
        let mut order: Vec<u32> = (0..candidates.len() as u32)
            .filter(|&i| {
                candidates[i as usize]
                    .latency_ms
                    .is_none_or(|l| l <= max_latency)
            })
            .collect();
        // Cheapest first; equal prices by success rate.
        order.sort_by(|&a, &b| {
            let (a, b) = (&candidates[a as usize], &candidates[b as usize]);
            a.effective_cost
                .total_cmp(&b.effective_cost)
                .then(b.success_rate.total_cmp(&a.success_rate))
        });
        let _ = req.needs_tools; // the request's facts: tools, vision, JSON mode, size, stream…
        Ok(Ranking::new(order).explained("cheapest under the latency cap"))
    }
}

export_strategy!(MyPick);
