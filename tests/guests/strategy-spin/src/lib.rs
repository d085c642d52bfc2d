//! Test fixture: a strategy that never returns (the host's epoch deadline must stop it).

use smart_router_sdk::{Candidate, Ranking, RequestInfo, Strategy, export_strategy, json::Value};

struct Spins;

impl Strategy for Spins {
    fn rank(request: &RequestInfo, _: &[Candidate], _: &Value) -> Result<Ranking, String> {
        let mut x = request.random;
        loop {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            if x == 0 && std::hint::black_box(false) {
                break;
            }
        }
        Ok(Ranking::new(vec![]))
    }
}

export_strategy!(Spins);
