//! Test fixture: a strategy whose answer is malformed (an index out of range, then a repeat).

use smart_router_sdk::{Candidate, Ranking, RequestInfo, Strategy, export_strategy, json::Value};

struct BadIndex;

impl Strategy for BadIndex {
    fn rank(_: &RequestInfo, candidates: &[Candidate], _: &Value) -> Result<Ranking, String> {
        Ok(Ranking::new(vec![candidates.len() as u32 + 7, 0, 0]))
    }
}

export_strategy!(BadIndex);
