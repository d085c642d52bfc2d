//! Provider adapters: translate OpenAI requests to a provider's HTTP API and back.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "adapter",
        pub_export_macro: true,
        default_bindings_module: "smart_router_sdk::adapter::bindings",
    });
}

use std::cell::RefCell;

pub use bindings::exports::smart_router::gateway::translation::{
    Auth, ChatResponse, ErrorClass, HttpRequest, ProviderError, RequestContext, SseEvent,
    StreamOutput, Usage,
};

/// A provider adapter.
pub trait Adapter {
    /// The per-stream state that translates a streaming response incrementally.
    type Stream: StreamTranslator;

    /// Translates the client's OpenAI `chat.completions` request body for this provider.
    fn translate_request(ctx: &RequestContext, body: &str) -> Result<HttpRequest, ProviderError>;

    /// Translates a successful non-streaming response body into an OpenAI `chat.completion`.
    fn translate_response(
        ctx: &RequestContext,
        status: u16,
        body: &[u8],
    ) -> Result<ChatResponse, ProviderError>;

    /// Classifies a non-2xx response.
    fn classify_error(status: u16, headers: &[(String, String)], body: &[u8]) -> ProviderError;

    /// Translates the client's OpenAI `embeddings` request body. The default answers
    /// `unsupported`, for providers with no embeddings API: the host moves on to the next
    /// channel.
    fn translate_embeddings_request(
        ctx: &RequestContext,
        body: &str,
    ) -> Result<HttpRequest, ProviderError> {
        let _ = (ctx, body);
        Err(ProviderError::new(
            ErrorClass::Unsupported,
            "this adapter has no embeddings",
        ))
    }

    /// Translates a successful embeddings response into OpenAI's `list` of `embedding` objects.
    /// Report the provider's token counts in the `usage`; with `None` the host bills its own
    /// estimate and adds it to the body.
    fn translate_embeddings_response(
        ctx: &RequestContext,
        status: u16,
        body: &[u8],
    ) -> Result<ChatResponse, ProviderError> {
        let _ = (ctx, status, body);
        Err(ProviderError::new(
            ErrorClass::Unsupported,
            "this adapter has no embeddings",
        ))
    }
}

/// Translates one streaming response, one upstream event at a time.
pub trait StreamTranslator {
    /// Starts a stream for the request described by `ctx`.
    fn new(ctx: RequestContext) -> Self;
    /// Translates one upstream event into zero or more OpenAI chunks.
    fn push(&mut self, event: SseEvent) -> Result<StreamOutput, ProviderError>;
    /// The upstream stream ended: flush what is left.
    fn finish(&mut self) -> Result<StreamOutput, ProviderError>;
}

impl ProviderError {
    /// An error of `class`; `temporary` follows the class's usual meaning.
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        let temporary = matches!(
            class,
            ErrorClass::RateLimited
                | ErrorClass::ServerError
                | ErrorClass::Timeout
                | ErrorClass::Unknown
        );
        ProviderError {
            class,
            temporary,
            retry_after_ms: None,
            message: message.into(),
        }
    }
}

impl HttpRequest {
    /// A JSON `POST` to `path`: `content-type: application/json`, `accept: text/event-stream`
    /// when `stream`, then the provider's extra headers (`options.headers` in `providers.yaml`).
    pub fn json_post(
        path: &str,
        body: &serde_json::Value,
        stream: bool,
        options: &serde_json::Value,
        auth: Auth,
    ) -> Self {
        Self::json_post_bytes(path, body.to_string().into_bytes(), stream, options, auth)
    }

    /// [`Self::json_post`] with a body the adapter already serialized.
    pub fn json_post_bytes(
        path: &str,
        body: Vec<u8>,
        stream: bool,
        options: &serde_json::Value,
        auth: Auth,
    ) -> Self {
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        if stream {
            headers.push(("accept".into(), "text/event-stream".into()));
        }
        if let Some(extra) = options
            .get("headers")
            .and_then(serde_json::Value::as_object)
        {
            for (k, v) in extra {
                if let Some(v) = v.as_str() {
                    headers.push((k.clone(), v.to_string()));
                }
            }
        }
        HttpRequest {
            method: "POST".into(),
            path: path.into(),
            headers,
            body,
            auth,
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

impl StreamOutput {
    /// Nothing to emit yet.
    pub fn empty() -> Self {
        StreamOutput {
            chunks: Vec::new(),
            usage: None,
            done: false,
        }
    }
}

/// Holds a [`StreamTranslator`] behind the shared reference the bindings hand out.
#[doc(hidden)]
pub struct StreamCell<S>(pub RefCell<S>);

impl<S: StreamTranslator + 'static>
    bindings::exports::smart_router::gateway::translation::GuestStreamTranslator for StreamCell<S>
{
    fn new(ctx: RequestContext) -> Self {
        StreamCell(RefCell::new(S::new(ctx)))
    }
    fn push(&self, event: SseEvent) -> Result<StreamOutput, ProviderError> {
        self.0.borrow_mut().push(event)
    }
    fn finish(&self) -> Result<StreamOutput, ProviderError> {
        self.0.borrow_mut().finish()
    }
}

/// Exports a type that implements [`Adapter`] as this component's adapter.
#[macro_export]
macro_rules! export_adapter {
    ($t:ty) => {
        const _: () = {
            struct __SmartRouterAdapter;
            impl $crate::adapter::bindings::exports::smart_router::gateway::translation::Guest
                for __SmartRouterAdapter
            {
                type StreamTranslator =
                    $crate::adapter::StreamCell<<$t as $crate::Adapter>::Stream>;
                fn translate_request(
                    ctx: $crate::RequestContext,
                    body: ::std::string::String,
                ) -> ::std::result::Result<$crate::HttpRequest, $crate::ProviderError> {
                    <$t as $crate::Adapter>::translate_request(&ctx, &body)
                }
                fn translate_response(
                    ctx: $crate::RequestContext,
                    status: u16,
                    body: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<$crate::ChatResponse, $crate::ProviderError> {
                    <$t as $crate::Adapter>::translate_response(&ctx, status, &body)
                }
                fn translate_embeddings_request(
                    ctx: $crate::RequestContext,
                    body: ::std::string::String,
                ) -> ::std::result::Result<$crate::HttpRequest, $crate::ProviderError> {
                    <$t as $crate::Adapter>::translate_embeddings_request(&ctx, &body)
                }
                fn translate_embeddings_response(
                    ctx: $crate::RequestContext,
                    status: u16,
                    body: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<$crate::ChatResponse, $crate::ProviderError> {
                    <$t as $crate::Adapter>::translate_embeddings_response(&ctx, status, &body)
                }
                fn classify_error(
                    status: u16,
                    headers: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                    body: ::std::vec::Vec<u8>,
                ) -> $crate::ProviderError {
                    <$t as $crate::Adapter>::classify_error(status, &headers, &body)
                }
            }
            $crate::adapter::bindings::export!(__SmartRouterAdapter with_types_in $crate::adapter::bindings);
        };
    };
}
