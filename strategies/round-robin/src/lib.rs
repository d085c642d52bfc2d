//! `round-robin`: takes turns. Request *n* of a group starts at candidate *n mod k* of the best
//! priority tier; the other tiers follow in priority order as fallbacks. With
//! `respect_priority: false` it rotates over every candidate. Use it to spread traffic evenly and
//! predictably (each key of a pool gets its share).

use smart_router_sdk::json::Value;
use smart_router_sdk::{Candidate, Ranking, RequestInfo, Strategy, export_strategy, push_int};

struct RoundRobin;

impl Strategy for RoundRobin {
    fn rank(
        request: &RequestInfo,
        candidates: &[Candidate],
        params: &Value,
    ) -> Result<Ranking, String> {
        let tiers = params
            .get("respect_priority")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let mut order: Vec<u32> = (0..candidates.len() as u32).collect();
        // A stable order to rotate over: by tier, then by id.
        order.sort_by(|&a, &b| {
            let (x, y) = (&candidates[a as usize], &candidates[b as usize]);
            let tier = if tiers {
                x.priority.cmp(&y.priority)
            } else {
                std::cmp::Ordering::Equal
            };
            tier.then(x.id.cmp(&y.id))
        });
        let first_tier = if tiers {
            let top = candidates[order[0] as usize].priority;
            order
                .iter()
                .take_while(|&&i| candidates[i as usize].priority == top)
                .count()
        } else {
            order.len()
        };
        let shift = (request.sequence % first_tier as u64) as usize;
        order[..first_tier].rotate_left(shift);
        // The channel whose turn it is goes first; should it fail, the others follow in turn
        // order but with channels that are failing right now last within their tier.
        order[1..].sort_by_key(|&i| {
            let c = &candidates[i as usize];
            (
                if tiers { c.priority } else { 0 },
                c.consecutive_failures > 0,
            )
        });
        let mut why = String::from("turn ");
        push_int(&mut why, request.sequence);
        Ok(Ranking::new(order).explained(why))
    }
}

export_strategy!(RoundRobin);
