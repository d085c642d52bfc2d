//! `fastest`: the quickest channel first, by the measure that matters for the request.
//!
//! `metric` (parameter): `ttft` (time to first token — the default for streams), `latency`
//! (whole response — the default otherwise) or `tokens_per_second`. Channels with no measurement
//! yet count as the median of the others, so a new channel gets tried without being favoured.
//! Ties go to priority. Use it for interactive traffic where waiting costs more than price.

use smart_router_sdk::json::Value;
use smart_router_sdk::{Candidate, Ranking, RequestInfo, Strategy, export_strategy};

struct Fastest;

impl Strategy for Fastest {
    fn rank(
        request: &RequestInfo,
        candidates: &[Candidate],
        params: &Value,
    ) -> Result<Ranking, String> {
        let metric = params
            .get("metric")
            .and_then(Value::as_str)
            .unwrap_or(if request.is_stream { "ttft" } else { "latency" });
        // Lower is better for every score below.
        let raw = |c: &Candidate| -> Option<f64> {
            match metric {
                "ttft" => c.ttft_ms.or(c.latency_ms),
                "latency" => c.latency_ms,
                "tokens_per_second" => c.tokens_per_second.filter(|t| *t > 0.0).map(|t| 1.0 / t),
                _ => None,
            }
        };
        if !matches!(metric, "ttft" | "latency" | "tokens_per_second") {
            return Err(format!(
                "unknown metric `{metric}` (ttft, latency or tokens_per_second)"
            ));
        }
        // Unmeasured channels score below every measured one: explored first.
        let score = |c: &Candidate| raw(c).unwrap_or(-1.0);
        let mut order: Vec<u32> = (0..candidates.len() as u32).collect();
        order.sort_by(|&a, &b| {
            let (x, y) = (&candidates[a as usize], &candidates[b as usize]);
            score(x)
                .total_cmp(&score(y))
                .then(x.priority.cmp(&y.priority))
        });
        Ok(Ranking::new(order).explained(["by ", metric].concat()))
    }
}

export_strategy!(Fastest);
