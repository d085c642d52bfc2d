//! Calling a provider adapter component.

use std::sync::Arc;

use wasmtime::Store;
use wasmtime::component::ResourceAny;

use super::engine::{CallError, CallState, IdlePool, Instantiated, Runtime};

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

/// Host bindings for adapters built against the released 0.1.0 contract.
pub mod bindings_v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.1.0",
        world: "adapter",
        with: {
            "smart-router:gateway/types": crate::components::strategy::bindings_v0_1::smart_router::gateway::types,
            "smart-router:gateway/host": crate::components::strategy::bindings_v0_1::smart_router::gateway::host,
        },
    });
}

use bindings::exports::smart_router::gateway::translation::{
    ChatResponse, ErrorClass, HttpRequest, ProviderError, RequestContext, SseEvent, StreamOutput,
};

/// An adapter ready to instantiate, by the contract version it was built against.
pub(super) enum Pre {
    Current(bindings::AdapterPre<CallState>),
    V0_1(bindings_v0_1::AdapterPre<CallState>),
}

enum Instance {
    Current(bindings::Adapter),
    V0_1(bindings_v0_1::Adapter),
}

/// A compiled, pre-instantiated adapter.
pub struct AdapterComponent {
    pub name: Arc<str>,
    pub(super) pre: Pre,
    /// The component imports WASI (see [`super::engine::enter`]).
    pub(super) uses_wasi: bool,
    /// SHA-256 of the file it was loaded from.
    pub digest: [u8; 32],
    /// Consecutive failed attempts; quarantines the component when too long.
    pub streak: super::engine::FailureStreak,
    /// Idle instances: one that finished an attempt without trapping is reused by the next.
    pub(super) idle: IdlePool<Warm>,
}

/// An instantiated adapter and its store.
pub(super) struct Warm {
    store: Store<CallState>,
    instance: Instance,
}

impl Instantiated for Warm {
    fn store(&self) -> &Store<CallState> {
        &self.store
    }
}

/// Idle instances kept per adapter. A non-streaming attempt holds an instance only while it
/// translates (not while the upstream answers), so a few serve many concurrent requests; a
/// stream holds one until it ends, so as many are in use as streams are running. With room for
/// only 16, 64 concurrent streams dropped and re-created an instance on about half of their
/// requests (each drop an `madvise` and a TLB shoot-down on every core, each new one an
/// `mprotect` and page faults). A component built with WASI (a Python or JavaScript runtime,
/// a dozen core instances each, out of the engine's 4096) keeps [`super::engine::KEEP_IDLE`].
pub(super) const MAX_IDLE: usize = 64;

impl AdapterComponent {
    /// A session for one upstream attempt, with a warm instance when there is one.
    pub fn session(self: &Arc<Self>, rt: &Arc<Runtime>) -> Result<AdapterSession, CallError> {
        let warm = self.acquire(rt)?;
        Ok(AdapterSession {
            rt: rt.clone(),
            warm: Some(warm),
            trapped: false,
            name: self.name.clone(),
            component: self.clone(),
            stream: None,
        })
    }

    /// An idle instance, or a new one.
    fn acquire(&self, rt: &Runtime) -> Result<Warm, CallError> {
        if let Some(w) = self.idle.take() {
            return Ok(w);
        }
        let mut store = rt.store(&self.name);
        let instance = super::engine::enter(self.uses_wasi, || match &self.pre {
            Pre::Current(pre) => pre.instantiate(&mut store).map(Instance::Current),
            Pre::V0_1(pre) => pre.instantiate(&mut store).map(Instance::V0_1),
        })
        .map_err(|e| CallError::trap(&self.name, e))?;
        self.idle.note_created();
        Ok(Warm { store, instance })
    }

    /// Instances created since the component was loaded.
    pub fn instances_created(&self) -> u64 {
        self.idle.created()
    }

    /// Returns an instance that finished its work without trapping to the idle list.
    fn give_back(&self, rt: &Runtime, warm: Warm) {
        self.idle.give_back(rt, warm);
    }
}

/// One upstream attempt's use of an adapter. It holds an instance while translating (and for the
/// whole of a stream, whose translator lives in the instance); [`AdapterSession::release`] hands
/// it back while the upstream is awaited. After a trap it refuses further calls.
pub struct AdapterSession {
    rt: Arc<Runtime>,
    /// The instance in use; `None` when released or trapped.
    warm: Option<Warm>,
    trapped: bool,
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
            let dropped = super::engine::enter(self.component.uses_wasi, || {
                stream.resource_drop(&mut warm.store)
            });
            if dropped.is_err() {
                return;
            }
        }
        self.component.give_back(&self.rt, warm);
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

    /// Hands the instance back to the idle list until the next call (not during a stream).
    pub fn release(&mut self) {
        if self.stream.is_none()
            && let Some(warm) = self.warm.take()
        {
            self.component.give_back(&self.rt, warm);
        }
    }

    fn call<T: Send>(
        &mut self,
        f: impl FnOnce(&Instance, &mut Store<CallState>) -> wasmtime::Result<T> + Send,
    ) -> Result<T, CallError> {
        if self.trapped {
            return Err(CallError::Trap {
                component: self.name.to_string(),
                reason: "the instance already trapped".into(),
            });
        }
        let warm = match self.warm.take() {
            Some(w) => w,
            None => self.component.acquire(&self.rt)?,
        };
        let warm = self.warm.insert(warm);
        self.rt.rearm(&mut warm.store);
        let result = super::engine::enter(self.component.uses_wasi, || {
            f(&warm.instance, &mut warm.store)
        });
        result.map_err(|e| {
            // Never enter a trapped instance again.
            self.warm = None;
            self.trapped = true;
            CallError::trap(&self.name, e)
        })
    }

    pub fn translate_request(
        &mut self,
        ctx: &RequestContext,
        body: &str,
    ) -> Result<Result<HttpRequest, ProviderError>, CallError> {
        self.call(|i, s| match i {
            Instance::Current(i) => i
                .smart_router_gateway_translation()
                .call_translate_request(s, ctx, body),
            Instance::V0_1(i) => i
                .smart_router_gateway_translation()
                .call_translate_request(s, &v0_1::context(ctx), body)
                .map(|r| r.map(v0_1::http_request).map_err(v0_1::error)),
        })
    }

    pub fn translate_response(
        &mut self,
        ctx: &RequestContext,
        status: u16,
        body: &[u8],
    ) -> Result<Result<ChatResponse, ProviderError>, CallError> {
        self.call(|i, s| match i {
            Instance::Current(i) => i
                .smart_router_gateway_translation()
                .call_translate_response(s, ctx, status, body),
            Instance::V0_1(i) => i
                .smart_router_gateway_translation()
                .call_translate_response(s, &v0_1::context(ctx), status, body)
                .map(|r| r.map(v0_1::response).map_err(v0_1::error)),
        })
    }

    /// Translates an embeddings request; an adapter built before embeddings existed (0.1.0)
    /// answers `unsupported`.
    pub fn translate_embeddings_request(
        &mut self,
        ctx: &RequestContext,
        body: &str,
    ) -> Result<Result<HttpRequest, ProviderError>, CallError> {
        self.call(|i, s| match i {
            Instance::Current(i) => i
                .smart_router_gateway_translation()
                .call_translate_embeddings_request(s, ctx, body),
            Instance::V0_1(_) => Ok(Err(ProviderError {
                class: ErrorClass::Unsupported,
                temporary: false,
                retry_after_ms: None,
                message: "the adapter was built against contract 0.1.0, which has no embeddings"
                    .into(),
            })),
        })
    }

    pub fn translate_embeddings_response(
        &mut self,
        ctx: &RequestContext,
        status: u16,
        body: &[u8],
    ) -> Result<Result<ChatResponse, ProviderError>, CallError> {
        self.call(|i, s| match i {
            Instance::Current(i) => i
                .smart_router_gateway_translation()
                .call_translate_embeddings_response(s, ctx, status, body),
            Instance::V0_1(_) => Ok(Err(ProviderError {
                class: ErrorClass::Unsupported,
                temporary: false,
                retry_after_ms: None,
                message: "the adapter has no embeddings".into(),
            })),
        })
    }

    pub fn classify_error(
        &mut self,
        status: u16,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<ProviderError, CallError> {
        self.call(|i, s| match i {
            Instance::Current(i) => i
                .smart_router_gateway_translation()
                .call_classify_error(s, status, headers, body),
            Instance::V0_1(i) => i
                .smart_router_gateway_translation()
                .call_classify_error(s, status, headers, body)
                .map(v0_1::error),
        })
    }

    /// Starts stream translation; `push` and `finish` follow.
    pub fn start_stream(&mut self, ctx: &RequestContext) -> Result<(), CallError> {
        let handle = self.call(|i, s| match i {
            Instance::Current(i) => i
                .smart_router_gateway_translation()
                .stream_translator()
                .call_constructor(s, ctx),
            Instance::V0_1(i) => i
                .smart_router_gateway_translation()
                .stream_translator()
                .call_constructor(s, &v0_1::context(ctx)),
        })?;
        self.stream = Some(handle);
        Ok(())
    }

    pub fn push(
        &mut self,
        event: &SseEvent,
    ) -> Result<Result<StreamOutput, ProviderError>, CallError> {
        let handle = self.stream_handle()?;
        self.call(|i, s| match i {
            Instance::Current(i) => i
                .smart_router_gateway_translation()
                .stream_translator()
                .call_push(s, handle, event),
            Instance::V0_1(i) => {
                let event = v0_1::old::SseEvent {
                    event: event.event.clone(),
                    data: event.data.clone(),
                };
                i.smart_router_gateway_translation()
                    .stream_translator()
                    .call_push(s, handle, &event)
                    .map(|r| r.map(v0_1::stream_output).map_err(v0_1::error))
            }
        })
    }

    pub fn finish(&mut self) -> Result<Result<StreamOutput, ProviderError>, CallError> {
        let handle = self.stream_handle()?;
        self.call(|i, s| match i {
            Instance::Current(i) => i
                .smart_router_gateway_translation()
                .stream_translator()
                .call_finish(s, handle),
            Instance::V0_1(i) => i
                .smart_router_gateway_translation()
                .stream_translator()
                .call_finish(s, handle)
                .map(|r| r.map(v0_1::stream_output).map_err(v0_1::error)),
        })
    }

    fn stream_handle(&self) -> Result<ResourceAny, CallError> {
        self.stream.ok_or_else(|| CallError::Malformed {
            component: self.name.to_string(),
            reason: "stream used before it was started".into(),
        })
    }
}

/// Translation records between the current contract and 0.1.0 (which lacks embeddings and the
/// `unsupported` class).
mod v0_1 {
    use super::bindings::exports::smart_router::gateway::translation::{
        Auth, ChatResponse, ErrorClass, HttpRequest, ProviderError, RequestContext, StreamOutput,
        Usage,
    };
    pub use super::bindings_v0_1::exports::smart_router::gateway::translation as old;

    pub fn context(c: &RequestContext) -> old::RequestContext {
        old::RequestContext {
            model: c.model.clone(),
            is_stream: c.is_stream,
            include_usage: c.include_usage,
            options: c.options.clone(),
        }
    }

    pub fn http_request(r: old::HttpRequest) -> HttpRequest {
        HttpRequest {
            method: r.method,
            path: r.path,
            headers: r.headers,
            body: r.body,
            auth: match r.auth {
                old::Auth::Bearer => Auth::Bearer,
                old::Auth::Header(h) => Auth::Header(h),
                old::Auth::Query(q) => Auth::Query(q),
                old::Auth::None => Auth::None,
            },
        }
    }

    fn usage(u: old::Usage) -> Usage {
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            cached_tokens: u.cached_tokens,
            reasoning_tokens: u.reasoning_tokens,
        }
    }

    pub fn response(r: old::ChatResponse) -> ChatResponse {
        ChatResponse {
            body: r.body,
            usage: r.usage.map(usage),
        }
    }

    pub fn stream_output(o: old::StreamOutput) -> StreamOutput {
        StreamOutput {
            chunks: o.chunks,
            usage: o.usage.map(usage),
            done: o.done,
        }
    }

    pub fn error(e: old::ProviderError) -> ProviderError {
        ProviderError {
            class: match e.class {
                old::ErrorClass::RateLimited => ErrorClass::RateLimited,
                old::ErrorClass::Auth => ErrorClass::Auth,
                old::ErrorClass::QuotaExhausted => ErrorClass::QuotaExhausted,
                old::ErrorClass::ContextTooLong => ErrorClass::ContextTooLong,
                old::ErrorClass::ContentFiltered => ErrorClass::ContentFiltered,
                old::ErrorClass::BadRequest => ErrorClass::BadRequest,
                old::ErrorClass::ModelNotFound => ErrorClass::ModelNotFound,
                old::ErrorClass::ServerError => ErrorClass::ServerError,
                old::ErrorClass::Timeout => ErrorClass::Timeout,
                old::ErrorClass::Unknown => ErrorClass::Unknown,
            },
            temporary: e.temporary,
            retry_after_ms: e.retry_after_ms,
            message: e.message,
        }
    }
}
