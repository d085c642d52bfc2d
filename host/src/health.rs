//! Active health checks: on a schedule, a one-token request to each eligible channel, through the
//! same path as real traffic (adapter, quotas, statistics, usage rows with key `health-check`).
//! Off unless `system.yaml` sets `health_checks.interval_secs`; paid channels only on request.
//! A probe is also how an open circuit breaker finds out, without user traffic, that a channel
//! has recovered.

use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::proxy::{RequestScope, attempt};
use crate::router::{Endpoint, Facts};

/// Runs health-check rounds for as long as the gateway runs.
pub fn spawn(app: Arc<App>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let interval = app.config.load().system.health_interval;
            let Some(interval) = interval else {
                // Off: look again later, in case a reload turns it on.
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            };
            tokio::time::sleep(interval).await;
            round(&app).await;
        }
    })
}

/// Probes every eligible channel once.
pub async fn round(app: &Arc<App>) {
    let cfg = app.config.load_full();
    let comps = app.components.load_full();
    for (idx, ch) in cfg.channels.iter().enumerate() {
        let free = ch.input_cost_per_1k == 0.0 && ch.output_cost_per_1k == 0.0;
        let wanted = ch
            .health_check
            .unwrap_or(free || cfg.system.health_include_paid);
        let adapter_loaded = cfg
            .providers
            .get(&ch.provider)
            .is_some_and(|p| comps.adapters.contains_key(&p.adapter));
        if !wanted || ch.disabled.is_some() || !adapter_loaded {
            continue;
        }
        let scope = Arc::new(RequestScope {
            app: app.clone(),
            cfg: cfg.clone(),
            comps: comps.clone(),
            facts: Facts {
                endpoint: if ch.is_embeddings() {
                    Endpoint::Embeddings
                } else {
                    Endpoint::Chat
                },
                model: ch.id.clone(),
                estimated_prompt_tokens: 5,
                max_output_tokens: Some(1),
                ..Facts::default()
            },
            body: if ch.is_embeddings() {
                serde_json::json!({"model": ch.model, "input": "ping"})
            } else {
                serde_json::json!({"model": ch.model, "max_tokens": 1, "messages": [{"role": "user", "content": "ping"}]})
            }
            .to_string(),
            request_id: format!("hc_{:016x}", fastrand::u64(..)),
            client_request_id: None,
            key_id: "health-check".into(),
            key_budget: Default::default(),
            group: None,
            upstream_us: Default::default(),
            recorded: Default::default(),
            key_tpm: None,
            tpm_held: Default::default(),
            cache: None,
        });
        match attempt(&scope, idx, 1).await {
            Ok(_) => tracing::debug!(channel = %ch.id, "health check passed"),
            Err(e) => tracing::info!(channel = %ch.id, "health check failed: {e:?}"),
        }
    }
}
