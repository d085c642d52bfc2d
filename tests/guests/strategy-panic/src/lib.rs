//! Test fixture: a strategy that traps on every call.

use smart_router_sdk::{Candidate, Ranking, RequestInfo, Strategy, export_strategy, json::Value};

struct Panics;

impl Strategy for Panics {
    fn rank(_: &RequestInfo, _: &[Candidate], _: &Value) -> Result<Ranking, String> {
        panic!("this strategy always panics")
    }
}

export_strategy!(Panics);
