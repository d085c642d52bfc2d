//! Calling a provider adapter component.

use std::sync::{Arc, Mutex};

use wasmtime::Store;
use wasmtime::component::ResourceAny;

use super::engine::{CallError, CallState, Runtime};

/// Host bindings for the `adapter` world (sharing the `types` and `host` interfaces with the
/// strategy bindings).
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "adapter",
        with: {
            "smart-router:gateway/types": crate::components::strategy_api::smart_router::gateway::types,
            "smart-router:gateway/host": crate::components::strategy_api::smart_router::gateway::host,
        },
    });
}

use bindings::exports::smart_router::gateway::translation::{
    ChatResponse, HttpRequest, ProviderError, RequestContext, SseEvent, StreamOutput,
};

/// A compiled, pre-instantiated adapter.
pub struct AdapterComponent {
    pub name: Arc<str>,
    pub(super) pre: bindings::AdapterPre<CallState>,
    /// SHA-256 of the file it was loaded from.
    pub digest: [u8; 32],
    /// Consecutive failed attempts; quarantines the component when too long.
    pub streak: super::engine::FailureStreak,
    /// Idle instances: one that finished an attempt without trapping is reused by the next.
    pub(super) idle: Mutex<Vec<Warm>>,
}

/// An instantiated adapter and its store.
pub(super) struct Warm {
    store: Store<CallState>,
    instance: bindings::Adapter,
}

/// Idle instances kept per adapter.
const MAX_IDLE: usize = 64;

impl AdapterComponent {
    /// An instance for one upstream attempt (request, response and stream translation share it):
    /// a warm one when there is one.
    pub fn session(self: &Arc<Self>, rt: &Arc<Runtime>) -> Result<AdapterSession, CallError> {
        let warm = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let warm = match warm {
            Some(w) => w,
            None => {
                let mut store = rt.store(&self.name);
                let instance = self
                    .pre
                    .instantiate(&mut store)
                    .map_err(|e| CallError::trap(&self.name, e))?;
                Warm { store, instance }
            }
        };
        Ok(AdapterSession {
            rt: rt.clone(),
            warm: Some(warm),
            name: self.name.clone(),
            component: self.clone(),
            stream: None,
        })
    }
}

/// One adapter instance serving one attempt. After a trap it refuses further calls and is
/// dropped; otherwise it goes back to the idle list when the attempt ends.
pub struct AdapterSession {
    rt: Arc<Runtime>,
    /// `None` once the instance trapped.
    warm: Option<Warm>,
    name: Arc<str>,
    component: Arc<AdapterComponent>,
    stream: Option<ResourceAny>,
}

impl Drop for AdapterSession {
    fn drop(&mut self) {
        let Some(mut warm) = self.warm.take() else {
            return;
        };
        if let Some(stream) = self.stream.take() {
            // The guest's destructor runs; an instance that fails even that is not reused.
            self.rt.rearm(&mut warm.store);
            if stream.resource_drop(&mut warm.store).is_err() {
                return;
            }
        }
        let mut idle = self
            .component
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(warm);
        }
    }
}

impl AdapterSession {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The component this session runs.
    pub fn component(&self) -> &Arc<AdapterComponent> {
        &self.component
    }

    fn call<T>(
        &mut self,
        f: impl FnOnce(&bindings::Adapter, &mut Store<CallState>) -> wasmtime::Result<T>,
    ) -> Result<T, CallError> {
        let Some(warm) = self.warm.as_mut() else {
            return Err(CallError::Trap {
                component: self.name.to_string(),
                reason: "the instance already trapped".into(),
            });
        };
        self.rt.rearm(&mut warm.store);
        let result = f(&warm.instance, &mut warm.store);
        result.map_err(|e| {
            // Never enter a trapped instance again.
            self.warm = None;
            CallError::trap(&self.name, e)
        })
    }

    pub fn translate_request(
        &mut self,
        ctx: &RequestContext,
        body: &str,
    ) -> Result<Result<HttpRequest, ProviderError>, CallError> {
        self.call(|i, s| {
            i.smart_router_gateway_translation()
                .call_translate_request(s, ctx, body)
        })
    }

    pub fn translate_response(
        &mut self,
        ctx: &RequestContext,
        status: u16,
        body: &[u8],
    ) -> Result<Result<ChatResponse, ProviderError>, CallError> {
        self.call(|i, s| {
            i.smart_router_gateway_translation()
                .call_translate_response(s, ctx, status, body)
        })
    }

    pub fn classify_error(
        &mut self,
        status: u16,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<ProviderError, CallError> {
        self.call(|i, s| {
            i.smart_router_gateway_translation()
                .call_classify_error(s, status, headers, body)
        })
    }

    /// Starts stream translation; `push` and `finish` follow.
    pub fn start_stream(&mut self, ctx: &RequestContext) -> Result<(), CallError> {
        let handle = self.call(|i, s| {
            i.smart_router_gateway_translation()
                .stream_translator()
                .call_constructor(s, ctx)
        })?;
        self.stream = Some(handle);
        Ok(())
    }

    pub fn push(
        &mut self,
        event: &SseEvent,
    ) -> Result<Result<StreamOutput, ProviderError>, CallError> {
        let handle = self.stream_handle()?;
        self.call(|i, s| {
            i.smart_router_gateway_translation()
                .stream_translator()
                .call_push(s, handle, event)
        })
    }

    pub fn finish(&mut self) -> Result<Result<StreamOutput, ProviderError>, CallError> {
        let handle = self.stream_handle()?;
        self.call(|i, s| {
            i.smart_router_gateway_translation()
                .stream_translator()
                .call_finish(s, handle)
        })
    }

    fn stream_handle(&self) -> Result<ResourceAny, CallError> {
        self.stream.ok_or_else(|| CallError::Malformed {
            component: self.name.to_string(),
            reason: "stream used before it was started".into(),
        })
    }
}
