//! Test fixture: a strategy built against the frozen 0.1.0 contract (`wit/v0.1.0`). It prefers the
//! highest priority number, so a test can see that it, and not the fallback order, routed.

wit_bindgen::generate!({
    path: "../../../wit/v0.1.0",
    world: "strategy",
});

use exports::smart_router::gateway::routing::{Guest, Ranking};
use smart_router::gateway::types::{Candidate, RequestInfo};

struct Legacy;

impl Guest for Legacy {
    fn rank(
        _request: RequestInfo,
        candidates: Vec<Candidate>,
        _params: String,
    ) -> Result<Ranking, String> {
        let mut order: Vec<u32> = (0..candidates.len() as u32).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(candidates[i as usize].priority));
        Ok(Ranking {
            order,
            explanation: Some("legacy 0.1.0: reverse priority".into()),
        })
    }
}

export!(Legacy);
