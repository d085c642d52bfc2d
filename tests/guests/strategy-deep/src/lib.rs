//! Test fixture: a strategy that recurses until its stack overflows.

use smart_router_sdk::{Candidate, Ranking, RequestInfo, Strategy, export_strategy, json::Value};

struct Deep;

// Recursing forever is the point: the host must survive the stack overflow.
#[allow(unconditional_recursion)]
#[inline(never)]
fn dive(n: u64, pad: [u64; 16]) -> u64 {
    let next = std::hint::black_box(pad);
    dive(n.wrapping_add(next[0]), next).wrapping_add(1)
}

impl Strategy for Deep {
    fn rank(request: &RequestInfo, _: &[Candidate], _: &Value) -> Result<Ranking, String> {
        let n = dive(request.random, [request.random; 16]);
        Ok(Ranking::new(vec![n as u32]))
    }
}

export_strategy!(Deep);
