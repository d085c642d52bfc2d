//! Calling a routing strategy component.

use std::sync::{Arc, Mutex};

use wasmtime::Store;

use super::engine::{CallError, CallState, Runtime};

/// Host bindings for the `strategy` world.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "strategy",
    });
}

use bindings::exports::smart_router::gateway::routing::Ranking;
use bindings::smart_router::gateway::types::{Candidate, RequestInfo};

/// A compiled, pre-instantiated strategy.
pub struct StrategyComponent {
    pub name: Arc<str>,
    pub(super) pre: bindings::StrategyPre<CallState>,
    /// SHA-256 of the file it was loaded from.
    pub digest: [u8; 32],
    /// Consecutive failed calls; quarantines the component when too long.
    pub streak: super::engine::FailureStreak,
    /// Idle instances. A strategy is a pure function of its inputs, so an instance that answered
    /// is reused (a call into a warm instance costs a few microseconds; instantiating, ~50);
    /// one that trapped is dropped.
    pub(super) idle: Mutex<Vec<Warm>>,
}

/// An instantiated strategy and its store.
pub(super) struct Warm {
    store: Store<CallState>,
    instance: bindings::Strategy,
}

/// Idle instances kept per strategy.
const MAX_IDLE: usize = 16;

impl StrategyComponent {
    /// Like [`Self::rank_unchecked`], keeping the failure streak.
    pub fn rank(
        &self,
        rt: &Runtime,
        request: &RequestInfo,
        candidates: &[Candidate],
        params: &str,
    ) -> Result<Ranking, CallError> {
        let result = self.rank_unchecked(rt, request, candidates, params);
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
        let warm = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut warm = match warm {
            Some(mut w) => {
                rt.rearm(&mut w.store);
                w
            }
            None => {
                let mut store = rt.store(&self.name);
                let instance = self
                    .pre
                    .instantiate(&mut store)
                    .map_err(|e| CallError::trap(&self.name, e))?;
                Warm { store, instance }
            }
        };
        // A trap drops the instance with `warm`: it is never entered again.
        let answer = warm
            .instance
            .smart_router_gateway_routing()
            .call_rank(&mut warm.store, request, candidates, params)
            .map_err(|e| CallError::trap(&self.name, e))?;
        {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < MAX_IDLE {
                idle.push(warm);
            }
        }
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
