//! `weighted-sort`: the brief's multi-field sort.
//!
//! Parameters (the group's `routing_strategy`, or `strategy_params.routing_strategy`):
//!
//! ```yaml
//! routing_strategy:
//!   - { field: effective_cost,  order: asc,  weight: 1.0 }
//!   - { field: speed_score,     order: desc, weight: 0.9 }
//!   - { field: quota_remaining, order: desc, weight: 0.7 }
//! ```
//!
//! Each field's values are scaled to 0..1 across the candidates (best = 1 in the field's order),
//! multiplied by the field's weight and summed; the highest total goes first. With
//! `mode: lexicographic` the fields are compared one after another instead (weights ignored).
//! Ties fall back to priority, then to a random order.
//!
//! Fields: `effective_cost` (alias `cost`), `speed_score` (tokens per second, else 1/latency),
//! `latency`, `ttft`, `quota_remaining`, `priority`, `weight`, `success_rate`, `load` (alias
//! `in_flight`). Use it when several signals matter at once: "free first, then fastest".

use smart_router_sdk::json::Value;
use smart_router_sdk::{
    Candidate, Ranking, RequestInfo, Strategy, export_strategy, scores_explained,
};

struct WeightedSort;

#[derive(Clone, Copy, PartialEq)]
enum Field {
    Cost,
    Speed,
    Latency,
    Ttft,
    Quota,
    Priority,
    Weight,
    SuccessRate,
    Load,
}

struct Criterion {
    field: Field,
    ascending: bool,
    weight: f64,
}

fn parse_field(name: &str) -> Result<Field, String> {
    Ok(match name {
        "effective_cost" | "cost" => Field::Cost,
        "speed_score" | "speed" => Field::Speed,
        "latency" => Field::Latency,
        "ttft" => Field::Ttft,
        "quota_remaining" => Field::Quota,
        "priority" => Field::Priority,
        "weight" => Field::Weight,
        "success_rate" => Field::SuccessRate,
        "load" | "in_flight" => Field::Load,
        other => return Err(format!("unknown routing_strategy field `{other}`")),
    })
}

/// The criteria when the group sets none.
const DEFAULT_CRITERIA: [Criterion; 4] = [
    Criterion {
        field: Field::Cost,
        ascending: true,
        weight: 1.0,
    },
    Criterion {
        field: Field::Speed,
        ascending: false,
        weight: 0.5,
    },
    Criterion {
        field: Field::SuccessRate,
        ascending: false,
        weight: 0.5,
    },
    Criterion {
        field: Field::Priority,
        ascending: true,
        weight: 0.3,
    },
];

/// The group's `routing_strategy` list.
fn criteria(list: &Value) -> Result<Vec<Criterion>, String> {
    let list = list.as_array().ok_or("routing_strategy must be a list")?;
    list.iter()
        .map(|entry| {
            let field = entry
                .get("field")
                .and_then(Value::as_str)
                .ok_or("each routing_strategy entry needs a `field`")?;
            let field = parse_field(field)?;
            let ascending = match entry.get("order").and_then(Value::as_str) {
                Some("asc") => true,
                Some("desc") => false,
                None => matches!(
                    field,
                    Field::Cost | Field::Latency | Field::Ttft | Field::Priority | Field::Load
                ),
                Some(other) => return Err(format!("order must be asc or desc, not `{other}`")),
            };
            let weight = entry.get("weight").and_then(Value::as_f64).unwrap_or(1.0);
            Ok(Criterion {
                field,
                ascending,
                weight,
            })
        })
        .collect()
}

/// The raw value of `field` for `c`; `None` when unknown (scored as the middle of the range).
fn value(field: Field, c: &Candidate) -> Option<f64> {
    match field {
        Field::Cost => Some(c.effective_cost),
        Field::Speed => c
            .tokens_per_second
            .or_else(|| c.latency_ms.filter(|l| *l > 0.0).map(|l| 1000.0 / l)),
        Field::Latency => c.latency_ms,
        Field::Ttft => c.ttft_ms,
        Field::Quota => Some(c.quota_remaining.unwrap_or(1.0)),
        Field::Priority => Some(f64::from(c.priority)),
        Field::Weight => Some(c.weight),
        Field::SuccessRate => Some(c.success_rate),
        Field::Load => Some(f64::from(c.in_flight)),
    }
}

/// `criterion`'s score in 0..1 for a candidate whose value is `v`, 1 = best, given the range of
/// the known values.
fn score(criterion: &Criterion, v: Option<f64>, (min, max): (f64, f64)) -> f64 {
    match v {
        Some(v) if max > min => {
            let t = (v - min) / (max - min);
            if criterion.ascending { 1.0 - t } else { t }
        }
        _ => 0.5,
    }
}

impl Strategy for WeightedSort {
    /// Every candidate's keys in one flat list, and the order as a sorted list of indices: a
    /// handful of allocations per call whatever the number of criteria (each one is a call into
    /// the guest's allocator, and a ranking of a few candidates is otherwise only arithmetic).
    fn rank(
        request: &RequestInfo,
        candidates: &[Candidate],
        params: &Value,
    ) -> Result<Ranking, String> {
        let configured;
        let criteria: &[Criterion] = match params.get("routing_strategy") {
            Some(list) => {
                configured = criteria(list)?;
                &configured
            }
            None => &DEFAULT_CRITERIA,
        };
        let lexicographic = params.get("mode").and_then(Value::as_str) == Some("lexicographic");
        let n = candidates.len();
        // Lexicographic: one key per criterion, compared in turn. Weighted: one key, the sum of
        // the weighted scores, added in the criteria's order from -0.0 (as `Iterator::sum`).
        let width = if lexicographic { criteria.len() } else { 1 };
        let mut keys = vec![if lexicographic { 0.0 } else { -0.0 }; n * width];
        for (k, criterion) in criteria.iter().enumerate() {
            let range = candidates
                .iter()
                .filter_map(|c| value(criterion.field, c))
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                    (lo.min(v), hi.max(v))
                });
            for (i, c) in candidates.iter().enumerate() {
                let s = score(criterion, value(criterion.field, c), range);
                if lexicographic {
                    keys[i * width + k] = s;
                } else {
                    keys[i] += criterion.weight * s;
                }
            }
        }
        let mut tiebreak = request.random | 1;
        let ties: Vec<u64> = (0..n)
            .map(|_| {
                tiebreak ^= tiebreak << 13;
                tiebreak ^= tiebreak >> 7;
                tiebreak ^= tiebreak << 17;
                tiebreak
            })
            .collect();
        let keys_of = |i: usize| &keys[i * width..(i + 1) * width];
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.sort_by(|&a, &b| {
            let (a, b) = (a as usize, b as usize);
            let by_keys = keys_of(a)
                .iter()
                .zip(keys_of(b))
                .map(|(x, y)| y.total_cmp(x))
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal);
            by_keys
                .then(candidates[a].priority.cmp(&candidates[b].priority))
                .then(ties[a].cmp(&ties[b]))
        });
        let explanation = scores_explained(
            candidates,
            order
                .iter()
                .map(|&i| (i, keys_of(i as usize).first().copied().unwrap_or(0.0))),
            "",
            3,
        );
        Ok(Ranking::new(order).explained(explanation))
    }
}

export_strategy!(WeightedSort);

#[cfg(test)]
mod tests {
    use super::*;
    use smart_router_sdk::Health;
    use smart_router_sdk::strategy::bindings::smart_router::gateway::types::Endpoint;

    fn candidate(id: &str, cost: f64, latency_ms: f64, priority: u32) -> Candidate {
        Candidate {
            id: id.into(),
            provider: "p".into(),
            model: id.into(),
            priority,
            weight: 1.0,
            input_cost_per_1k: cost,
            output_cost_per_1k: cost,
            effective_cost: cost,
            context_length: None,
            latency_ms: Some(latency_ms),
            ttft_ms: None,
            tokens_per_second: None,
            success_rate: 1.0,
            in_flight: 0,
            consecutive_failures: 0,
            quota_remaining: None,
            quota_remaining_requests: None,
            health: Health::Healthy,
        }
    }

    fn ranked(params: &str, candidates: &[Candidate]) -> Result<Ranking, String> {
        let request = RequestInfo {
            model: "g".into(),
            estimated_prompt_tokens: 10,
            max_output_tokens: None,
            is_stream: false,
            needs_tools: false,
            needs_vision: false,
            needs_json: false,
            now_ms: 0,
            random: 7,
            sequence: 0,
            endpoint: Endpoint::Chat,
        };
        let params = smart_router_sdk::json::from_str(params).expect("json");
        WeightedSort::rank(&request, candidates, &params)
    }

    fn rank(params: &str, candidates: &[Candidate]) -> (Vec<u32>, String) {
        let r = ranked(params, candidates).expect("ranks");
        (r.order, r.explanation.unwrap_or_default())
    }

    /// A free, slow channel and a paid, fast one: the weights decide between them, and the
    /// lexicographic mode takes the first field that differs, whatever the weights.
    #[test]
    fn weights_and_modes_decide_between_cost_and_speed() {
        let c = [
            candidate("free-slow", 0.0, 2000.0, 1),
            candidate("paid-fast", 0.01, 100.0, 1),
        ];
        let speed_heavy = r#"{"routing_strategy":[{"field":"cost","weight":0.1},{"field":"latency","weight":1.0}]}"#;
        assert_eq!(
            rank(speed_heavy, &c),
            (vec![1, 0], "paid-fast=1.000, free-slow=0.100".to_string())
        );
        let cost_heavy = r#"{"routing_strategy":[{"field":"cost","weight":1.0},{"field":"latency","weight":0.1}]}"#;
        assert_eq!(rank(cost_heavy, &c).0, vec![0, 1]);
        let lexicographic = r#"{"mode":"lexicographic","routing_strategy":[{"field":"cost","weight":0.1},{"field":"latency","weight":1.0}]}"#;
        assert_eq!(
            rank(lexicographic, &c),
            (vec![0, 1], "free-slow=1.000, paid-fast=0.000".to_string())
        );
        // Equal on the first field: the second decides.
        let three = [
            candidate("free-slow", 0.0, 2000.0, 1),
            candidate("free-fast", 0.0, 100.0, 1),
            candidate("paid-fastest", 0.01, 50.0, 1),
        ];
        assert_eq!(
            rank(lexicographic, &three),
            (
                vec![1, 0, 2],
                "free-fast=1.000, free-slow=1.000, paid-fastest=0.000".to_string()
            )
        );
        // No parameters: cost first.
        assert_eq!(rank("{}", &c).0, vec![0, 1]);
    }

    /// Equal scores fall back to priority; a bad list is an error, not a guess.
    #[test]
    fn ties_go_to_priority_and_bad_parameters_are_refused() {
        let c = [
            candidate("backup", 0.0, 100.0, 2),
            candidate("main", 0.0, 100.0, 1),
            candidate("paid", 0.02, 100.0, 1),
        ];
        assert_eq!(rank("{}", &c).0, vec![1, 0, 2]);
        let err = ranked(r#"{"routing_strategy":[{"field":"nope"}]}"#, &c)
            .map(|r| r.order)
            .expect_err("unknown field");
        assert!(
            err.contains("unknown routing_strategy field `nope`"),
            "{err}"
        );
    }
}
