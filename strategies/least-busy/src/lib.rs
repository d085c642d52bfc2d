//! `least-busy`: the channel with the fewest requests in flight first; ties by success rate, then
//! priority, then at random. Use it to spread concurrent load over equivalent channels that each
//! have their own rate limits.

use smart_router_sdk::json::Value;
use smart_router_sdk::{Candidate, Ranking, RequestInfo, Strategy, export_strategy};

struct LeastBusy;

impl Strategy for LeastBusy {
    fn rank(
        request: &RequestInfo,
        candidates: &[Candidate],
        _params: &Value,
    ) -> Result<Ranking, String> {
        let mut keyed: Vec<(u32, u64)> = (0..candidates.len() as u32)
            .map(|i| {
                (
                    i,
                    request.random.rotate_left(i * 7)
                        ^ u64::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                )
            })
            .collect();
        keyed.sort_by(|&(a, ra), &(b, rb)| {
            let (x, y) = (&candidates[a as usize], &candidates[b as usize]);
            x.in_flight
                .cmp(&y.in_flight)
                .then(y.success_rate.total_cmp(&x.success_rate))
                .then(x.priority.cmp(&y.priority))
                .then(ra.cmp(&rb))
        });
        Ok(Ranking::new(keyed.into_iter().map(|k| k.0).collect()))
    }
}

export_strategy!(LeastBusy);
