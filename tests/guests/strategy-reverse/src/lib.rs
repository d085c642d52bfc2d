//! Test fixture: a user-written strategy that prefers the *highest* priority number, so a test
//! can see that a hot-dropped strategy is in use.

use smart_router_sdk::{Candidate, Ranking, RequestInfo, Strategy, export_strategy, json::Value};

struct Reverse;

impl Strategy for Reverse {
    fn rank(_: &RequestInfo, candidates: &[Candidate], _: &Value) -> Result<Ranking, String> {
        let mut order: Vec<u32> = (0..candidates.len() as u32).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(candidates[i as usize].priority));
        Ok(Ranking::new(order).explained("reverse priority"))
    }
}

export_strategy!(Reverse);
