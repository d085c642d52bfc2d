//! Calling a routing strategy component.

use std::sync::Arc;

use wasmtime::Store;

use super::engine::{CallError, CallState, IdlePool, Instantiated, Runtime};

/// Host bindings for the `strategy` world.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "strategy",
    });
}

/// Host bindings for strategies built against the released 0.1.0 contract.
pub mod bindings_v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.1.0",
        world: "strategy",
    });
}

use bindings::exports::smart_router::gateway::routing::Ranking;
use bindings::smart_router::gateway::types::{Candidate, Health, RequestInfo};

/// A strategy ready to instantiate, by the contract version it was built against.
pub(super) enum Pre {
    Current(bindings::StrategyPre<CallState>),
    V0_1(bindings_v0_1::StrategyPre<CallState>),
}

enum Instance {
    Current(bindings::Strategy),
    V0_1(bindings_v0_1::Strategy),
}

/// A compiled, pre-instantiated strategy.
pub struct StrategyComponent {
    pub name: Arc<str>,
    pub(super) pre: Pre,
    /// The component imports WASI (see [`super::engine::enter`]).
    pub(super) uses_wasi: bool,
    /// SHA-256 of the file it was loaded from.
    pub digest: [u8; 32],
    /// Consecutive failed calls; quarantines the component when too long.
    pub streak: super::engine::FailureStreak,
    /// Idle instances. A strategy is a pure function of its inputs, so an instance that answered
    /// is reused (a call into a warm instance costs a few microseconds; instantiating, ~50);
    /// one that trapped is dropped.
    pub(super) idle: IdlePool<Warm>,
}

/// An instantiated strategy and its store.
pub(super) struct Warm {
    store: Store<CallState>,
    instance: Instance,
}

impl Instantiated for Warm {
    fn store(&self) -> &Store<CallState> {
        &self.store
    }
}

/// Idle instances kept per strategy (calls are synchronous: about one per worker thread is used).
pub(super) const MAX_IDLE: usize = 16;

impl StrategyComponent {
    /// True when the component imports WASI (it came from a toolchain such as componentize-py).
    pub fn uses_wasi(&self) -> bool {
        self.uses_wasi
    }

    /// Instances created since the component was loaded.
    pub fn instances_created(&self) -> u64 {
        self.idle.created()
    }

    /// Like [`Self::rank_unchecked`], keeping the failure streak.
    pub fn rank(
        &self,
        rt: &Runtime,
        request: &RequestInfo,
        candidates: &[Candidate],
        params: &str,
    ) -> Result<Ranking, CallError> {
        let result = super::engine::enter(self.uses_wasi, || {
            self.rank_unchecked(rt, request, candidates, params)
        });
        match &result {
            Ok(_) => self.streak.success(),
            Err(_) => self.streak.failure(&self.name),
        }
        result
    }

    /// Ranks `candidates` in a warm (or fresh) instance. The answer is checked: indices in range,
    /// no repeats.
    fn rank_unchecked(
        &self,
        rt: &Runtime,
        request: &RequestInfo,
        candidates: &[Candidate],
        params: &str,
    ) -> Result<Ranking, CallError> {
        let warm = self.idle.take();
        let mut warm = match warm {
            Some(mut w) => {
                rt.rearm(&mut w.store);
                w
            }
            None => {
                let mut store = rt.store(&self.name);
                let instance = match &self.pre {
                    Pre::Current(pre) => pre.instantiate(&mut store).map(Instance::Current),
                    Pre::V0_1(pre) => pre.instantiate(&mut store).map(Instance::V0_1),
                }
                .map_err(|e| CallError::trap(&self.name, e))?;
                self.idle.note_created();
                Warm { store, instance }
            }
        };
        // A trap drops the instance with `warm`: it is never entered again.
        let answer = match &warm.instance {
            Instance::Current(i) => i.smart_router_gateway_routing().call_rank(
                &mut warm.store,
                request,
                candidates,
                params,
            ),
            Instance::V0_1(i) => {
                let candidates: Vec<_> = candidates.iter().map(v0_1::candidate).collect();
                i.smart_router_gateway_routing()
                    .call_rank(
                        &mut warm.store,
                        &v0_1::request(request),
                        &candidates,
                        params,
                    )
                    .map(|answer| {
                        answer.map(|r| Ranking {
                            order: r.order,
                            explanation: r.explanation,
                        })
                    })
            }
        }
        .map_err(|e| CallError::trap(&self.name, e))?;
        self.idle.give_back(rt, warm);
        let ranking = answer.map_err(|reason| CallError::Malformed {
            component: self.name.to_string(),
            reason: format!("it returned an error: {}", truncate(reason)),
        })?;
        let mut seen = vec![false; candidates.len()];
        for &i in &ranking.order {
            let Some(slot) = seen.get_mut(i as usize) else {
                return Err(CallError::Malformed {
                    component: self.name.to_string(),
                    reason: format!(
                        "index {i} is out of range for {} candidates",
                        candidates.len()
                    ),
                });
            };
            if std::mem::replace(slot, true) {
                return Err(CallError::Malformed {
                    component: self.name.to_string(),
                    reason: format!("index {i} appears twice"),
                });
            }
        }
        Ok(ranking)
    }
}

fn truncate(mut s: String) -> String {
    if s.len() > 300 {
        let mut end = 300;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// The current contract's records in the 0.1.0 shape (which lacks `request-info.endpoint`).
mod v0_1 {
    use super::bindings_v0_1::smart_router::gateway::types as old;
    use super::{Candidate, Health, RequestInfo};

    pub fn request(r: &RequestInfo) -> old::RequestInfo {
        old::RequestInfo {
            model: r.model.clone(),
            estimated_prompt_tokens: r.estimated_prompt_tokens,
            max_output_tokens: r.max_output_tokens,
            is_stream: r.is_stream,
            needs_tools: r.needs_tools,
            needs_vision: r.needs_vision,
            needs_json: r.needs_json,
            now_ms: r.now_ms,
            random: r.random,
            sequence: r.sequence,
        }
    }

    pub fn candidate(c: &Candidate) -> old::Candidate {
        old::Candidate {
            id: c.id.clone(),
            provider: c.provider.clone(),
            model: c.model.clone(),
            priority: c.priority,
            weight: c.weight,
            input_cost_per_1k: c.input_cost_per_1k,
            output_cost_per_1k: c.output_cost_per_1k,
            effective_cost: c.effective_cost,
            context_length: c.context_length,
            latency_ms: c.latency_ms,
            ttft_ms: c.ttft_ms,
            tokens_per_second: c.tokens_per_second,
            success_rate: c.success_rate,
            in_flight: c.in_flight,
            consecutive_failures: c.consecutive_failures,
            quota_remaining: c.quota_remaining,
            quota_remaining_requests: c.quota_remaining_requests,
            health: match c.health {
                Health::Healthy => old::Health::Healthy,
                Health::Degraded => old::Health::Degraded,
                Health::Probing => old::Health::Probing,
            },
        }
    }
}
