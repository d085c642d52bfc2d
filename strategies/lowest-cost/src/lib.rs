//! `lowest-cost`: the cheapest channel for *this* request first.
//!
//! The expected cost is `estimated prompt tokens × input price + expected completion tokens ×
//! output price` (prices after multipliers and pricing policies; completion tokens from
//! `max_tokens`, else `expected_completion_tokens`, default 500). Ties go to the higher success
//! rate, then the lower latency, then priority. Use it when price decides and every channel in the
//! group is good enough.

use smart_router_sdk::json::Value;
use smart_router_sdk::{
    Candidate, Ranking, RequestInfo, Strategy, export_strategy, scores_explained,
};

struct LowestCost;

impl Strategy for LowestCost {
    fn rank(
        request: &RequestInfo,
        candidates: &[Candidate],
        params: &Value,
    ) -> Result<Ranking, String> {
        let completion = request
            .max_output_tokens
            .map(f64::from)
            .or_else(|| {
                params
                    .get("expected_completion_tokens")
                    .and_then(Value::as_f64)
            })
            .unwrap_or(500.0);
        let prompt = f64::from(request.estimated_prompt_tokens);
        let cost = |c: &Candidate| {
            (prompt * c.input_cost_per_1k + completion * c.output_cost_per_1k) / 1000.0
        };
        let mut order: Vec<u32> = (0..candidates.len() as u32).collect();
        order.sort_by(|&a, &b| {
            let (x, y) = (&candidates[a as usize], &candidates[b as usize]);
            cost(x)
                .total_cmp(&cost(y))
                .then(y.success_rate.total_cmp(&x.success_rate))
                .then(
                    x.latency_ms
                        .unwrap_or(f64::MAX)
                        .total_cmp(&y.latency_ms.unwrap_or(f64::MAX)),
                )
                .then(x.priority.cmp(&y.priority))
        });
        let why = scores_explained(
            candidates,
            order.iter().map(|&i| (i, cost(&candidates[i as usize]))),
            "$",
            6,
        );
        Ok(Ranking::new(order).explained(why))
    }
}

export_strategy!(LowestCost);
