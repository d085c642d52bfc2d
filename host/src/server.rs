//! The HTTP surface: `/v1/chat/completions`, `/v1/embeddings`, `/v1/models`, `/health`, `/metrics`
//! and the admin API.

mod admin;
mod auth;
mod chat;
mod cors;
pub mod error;
mod keys;
mod listen;

pub use listen::{
    CarryOn, Connections, Cutoff, connections, current_worker, cutoff, default_workers, serve,
    spawn_tracked,
};

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::app::App;
use crate::router::Endpoint;
use auth::Caller;
use error::ApiError;

/// What every connection is served by. A chat or embeddings request (`POST`, no `Origin`
/// header: every SDK and server-side client) goes straight to its handler; everything else —
/// other routes, browsers' requests with their CORS headers, preflights — goes through
/// [`router`]. These requests need none of the router's layers (a boxed service cloned for each
/// layer, a boxed body, a boxed future per layer: about 20 allocations a request); the router's
/// chat and embeddings routes call the same handler, [`chat::direct`].
#[derive(Clone)]
pub struct Gateway {
    router: Router,
    app: Arc<App>,
    max_body: usize,
}

impl Gateway {
    pub fn new(app: Arc<App>, max_body_bytes: usize) -> Self {
        Self {
            router: router(app.clone(), max_body_bytes),
            app,
            max_body: max_body_bytes,
        }
    }
}

type Direct = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Response, std::convert::Infallible>> + Send>,
>;

impl hyper::service::Service<axum::http::Request<hyper::body::Incoming>> for Gateway {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future =
        futures_util::future::Either<Direct, axum::routing::future::RouteFuture<Self::Error>>;

    fn call(&self, req: axum::http::Request<hyper::body::Incoming>) -> Self::Future {
        let path = req.uri().path();
        let endpoint = if chat::CHAT_PATHS.contains(&path) {
            Some(Endpoint::Chat)
        } else if chat::EMBEDDINGS_PATHS.contains(&path) {
            Some(Endpoint::Embeddings)
        } else {
            None
        };
        match endpoint {
            Some(endpoint)
                if req.method() == axum::http::Method::POST
                    && !req.headers().contains_key(axum::http::header::ORIGIN) =>
            {
                let (app, max_body) = (self.app.clone(), self.max_body);
                let in_flight = listen::spin::begin();
                futures_util::future::Either::Left(Box::pin(async move {
                    let response = chat::direct(app, req, endpoint, max_body).await;
                    // The client's next request follows its answer.
                    drop(in_flight);
                    Ok(response)
                }))
            }
            _ => futures_util::future::Either::Right(tower_service::Service::call(
                &mut self.router.clone(),
                req,
            )),
        }
    }
}

/// The gateway's routes; shared by `main` and the tests.
pub fn router(app: Arc<App>, max_body_bytes: usize) -> Router {
    let mut routes = Router::new();
    for (paths, endpoint) in [
        (chat::CHAT_PATHS, Endpoint::Chat),
        (chat::EMBEDDINGS_PATHS, Endpoint::Embeddings),
    ] {
        for path in paths {
            routes = routes.route(
                path,
                post(
                    move |State(app): State<Arc<App>>, req: axum::extract::Request| {
                        chat::direct(app, req, endpoint, max_body_bytes)
                    },
                ),
            );
        }
    }
    routes
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .route("/v1/models/{*id}", get(model))
        .route("/models/{*id}", get(model))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/admin/stats", get(admin::stats))
        .route("/admin/stats/daily", get(admin::daily))
        .route("/admin/channels", get(admin::channels))
        .route("/admin/keys", get(keys::list).post(keys::create))
        .route("/admin/keys/{id}", axum::routing::delete(keys::revoke))
        // After every route: it applies to the routes already added.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            cors::apply,
        ))
        .with_state(app)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "invalid_request_error",
        Some("unknown_url"),
        format!("Unknown request URL: {}", uri.path()),
    )
}

/// A known URL with the wrong method (`GET /v1/chat/completions`): OpenAI's answer, with the
/// `Allow` header axum adds.
async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        Some("method_not_allowed"),
        format!("Invalid method for URL ({method} {})", uri.path()),
    )
}

/// `GET /v1/models`: the model groups, then the plain model names channels serve.
async fn models(State(app): State<Arc<App>>, caller: Caller) -> Response {
    let cfg = app.config.load();
    let groups = cfg.groups.keys();
    let served = cfg
        .models
        .keys()
        .filter(|name| !cfg.groups.contains_key(*name));
    let data: Vec<_> = groups
        .chain(served)
        .filter(|id| caller.may_use(id))
        .filter_map(|id| model_object(&cfg, id, true))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// `GET /v1/models/{model}`: one entry of the list, or a channel id (`provider/model`) requests
/// may name. Anything else, or a model the key may not use, is OpenAI's `404 model_not_found`.
async fn model(
    State(app): State<Arc<App>>,
    caller: Caller,
    id: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Path(id) =
        id.map_err(|e| ApiError::invalid(format!("The model name in the URL is not valid: {e}")))?;
    let cfg = app.config.load();
    caller
        .may_use(&id)
        .then(|| model_object(&cfg, &id, false))
        .flatten()
        .map(|m| axum::Json(m).into_response())
        .ok_or_else(|| ApiError::model_not_found(&id))
}

/// OpenAI's model object for a group, or for a model name served by an enabled channel (with
/// `direct`, only a channel whose model is that name: not a channel id), owned by its provider.
fn model_object(cfg: &crate::config::Config, id: &str, direct: bool) -> Option<serde_json::Value> {
    if let Some(g) = cfg.groups.get(id) {
        return Some(json!({"id": g.name, "object": "model", "created": 0,
            "owned_by": "smart-router", "display_name": g.display_name,
            "description": g.description}));
    }
    let owner = cfg.models.get(id)?.iter().find_map(|m| {
        let ch = &cfg.channels[m.channel];
        (ch.disabled.is_none() && (!direct || ch.model == id)).then_some(&ch.provider)
    })?;
    Some(json!({"id": id, "object": "model", "created": 0, "owned_by": owner}))
}

/// `GET /metrics`: Prometheus text format. No secrets: channel ids and counters only.
async fn metrics(State(app): State<Arc<App>>) -> Response {
    use crate::metrics::{label, sample};
    use crate::stats::{Breaker, now_ms};
    let c = &app.counters;
    let mut out = String::with_capacity(4096);
    let counters = [
        (
            "smart_router_requests_total",
            "Chat requests received.",
            &c.requests,
        ),
        (
            "smart_router_failovers_total",
            "Attempts on a further channel after a failure.",
            &c.failovers,
        ),
        (
            "smart_router_cache_hits_total",
            "Requests answered from the answer cache.",
            &c.cache_hits,
        ),
        (
            "smart_router_cache_misses_total",
            "Requests the answer cache applied to that went to a provider.",
            &c.cache_misses,
        ),
        (
            "smart_router_strategy_failures_total",
            "Strategy calls that failed (fallback to priority order).",
            &c.strategy_failures,
        ),
        (
            "smart_router_adapter_failures_total",
            "Adapter calls that failed or produced invalid output.",
            &c.adapter_failures,
        ),
        (
            "smart_router_upstream_failures_total",
            "Upstream attempts that failed.",
            &c.upstream_failures,
        ),
        (
            "smart_router_reloads_total",
            "Batches of configuration or component file changes the watcher checked.",
            &c.reloads,
        ),
    ];
    for (name, help, v) in counters {
        sample(&mut out, name, "counter", help, v.load(Ordering::Relaxed));
    }
    c.overhead.render(
        "smart_router_overhead_seconds",
        "Time a successful request spent in the gateway itself: total minus waiting on upstreams.",
        &mut out,
    );
    out.push_str("# HELP smart_router_component_instances_total Component instances created since the component was loaded. Idle ones are reused: under a steady load this stays flat.\n# TYPE smart_router_component_instances_total counter\n");
    {
        let comps = app.components.load();
        let mut created: Vec<(&str, &String, u64)> = comps
            .strategies
            .iter()
            .map(|(n, c)| ("strategy", n, c.instances_created()))
            .chain(
                comps
                    .adapters
                    .iter()
                    .map(|(n, c)| ("adapter", n, c.instances_created())),
            )
            .collect();
        created.sort();
        for (kind, name, n) in created {
            out.push_str(&format!(
                "smart_router_component_instances_total{{kind=\"{kind}\",component=\"{}\"}} {n}\n",
                label(name)
            ));
        }
    }
    let (entries, bytes) = app.cache.usage();
    sample(
        &mut out,
        "smart_router_cache_entries",
        "gauge",
        "Answers held in the answer cache.",
        entries as u64,
    );
    sample(
        &mut out,
        "smart_router_cache_bytes",
        "gauge",
        "Memory the answer cache holds, in bytes.",
        bytes as u64,
    );
    out.push_str("# HELP smart_router_connections Open client connections per serving thread.\n# TYPE smart_router_connections gauge\n");
    for (i, open) in app.connections.iter().enumerate() {
        out.push_str(&format!(
            "smart_router_connections{{thread=\"{}\"}} {}\n",
            i + 1,
            open.load(Ordering::Relaxed)
        ));
    }
    let cfg = app.config.load();
    let now = now_ms();
    out.push_str("# HELP smart_router_channel_in_flight Requests in flight per channel.\n# TYPE smart_router_channel_in_flight gauge\n");
    let mut states = String::from(
        "# HELP smart_router_channel_available 1 when the channel takes traffic (breaker not open, not cooling down, enabled).\n# TYPE smart_router_channel_available gauge\n",
    );
    for ch in &cfg.channels {
        let s = app.stats.channel(&ch.id);
        let id = label(&ch.id);
        out.push_str(&format!(
            "smart_router_channel_in_flight{{channel=\"{id}\"}} {}\n",
            s.snapshot().in_flight
        ));
        let open = matches!(s.breaker(now), Breaker::Open(_))
            || s.cooling(now).is_some()
            || ch.disabled.is_some();
        states.push_str(&format!(
            "smart_router_channel_available{{channel=\"{id}\"}} {}\n",
            u8::from(!open)
        ));
    }
    out.push_str(&states);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response()
}

/// `GET /health`: liveness plus what is loaded and a few counters. No secrets.
async fn health(State(app): State<Arc<App>>) -> Response {
    let cfg = app.config.load();
    let comps = app.components.load();
    let c = &app.counters;
    let mut strategies: Vec<&String> = comps.strategies.keys().collect();
    strategies.sort();
    let mut adapters: Vec<&String> = comps.adapters.keys().collect();
    adapters.sort();
    axum::Json(json!({
        "status": "ok",
        "groups": cfg.groups.len(),
        "channels": cfg.channels.len(),
        "strategies": strategies,
        "adapters": adapters,
        "counters": {
            "requests": c.requests.load(Ordering::Relaxed),
            "failovers": c.failovers.load(Ordering::Relaxed),
            "cache_hits": c.cache_hits.load(Ordering::Relaxed),
            "cache_misses": c.cache_misses.load(Ordering::Relaxed),
            "strategy_failures": c.strategy_failures.load(Ordering::Relaxed),
            "adapter_failures": c.adapter_failures.load(Ordering::Relaxed),
            "upstream_failures": c.upstream_failures.load(Ordering::Relaxed),
        }
    }))
    .into_response()
}
