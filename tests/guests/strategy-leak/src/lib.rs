//! Test fixture: a strategy that leaks 4 MiB on every call, as some language runtimes leak a
//! little. Under the 64 MiB cap a reused instance would trap on its 16th call; the host retires an
//! instance once its memory passes half the cap, so no call ever fails.

use smart_router_sdk::{Candidate, Ranking, RequestInfo, Strategy, export_strategy, json::Value};

struct Leak;

impl Strategy for Leak {
    fn rank(_: &RequestInfo, candidates: &[Candidate], _: &Value) -> Result<Ranking, String> {
        let leaked: &'static mut [u8] = Box::leak(vec![1u8; 4 << 20].into_boxed_slice());
        let mut order: Vec<u32> = (0..candidates.len() as u32).collect();
        // Touch the leak so it is not optimised away; the answer stays "last first".
        order.reverse();
        if leaked[leaked.len() - 1] == 0 {
            order.clear();
        }
        Ok(Ranking::new(order))
    }
}

export_strategy!(Leak);
