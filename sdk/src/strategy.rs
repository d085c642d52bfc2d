//! Routing strategies: order the candidate channels for one request.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "strategy",
        pub_export_macro: true,
        default_bindings_module: "smart_router_sdk::strategy::bindings",
    });
}

pub use bindings::exports::smart_router::gateway::routing::Ranking;
pub use bindings::smart_router::gateway::types::{Candidate, Health, RequestInfo};

/// A routing strategy.
///
/// `rank` gets the request's facts, the candidate channels (already filtered by the host for
/// capabilities, context length, cooldowns and quotas) with their live statistics, and the group's
/// parameters as JSON. It answers with candidate indices, best first; channels it leaves out are not
/// tried for this request.
pub trait Strategy {
    /// Orders `candidates` for `request`.
    fn rank(
        request: &RequestInfo,
        candidates: &[Candidate],
        params: &serde_json::Value,
    ) -> Result<Ranking, String>;
}

impl Ranking {
    /// A ranking with no explanation.
    pub fn new(order: Vec<u32>) -> Self {
        Ranking {
            order,
            explanation: None,
        }
    }

    /// Adds a human-readable reason, logged by the host at debug level.
    pub fn explained(mut self, why: impl Into<String>) -> Self {
        self.explanation = Some(why.into());
        self
    }
}

/// Parses the group parameters the host sends; `{}` when malformed JSON would otherwise trap.
#[doc(hidden)]
pub fn parse_params(params: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(params).map_err(|e| format!("strategy parameters are not JSON: {e}"))
}

/// Exports a type that implements [`Strategy`] as this component's strategy.
///
/// ```ignore
/// struct Cheapest;
/// impl smart_router_sdk::Strategy for Cheapest { /* … */ }
/// smart_router_sdk::export_strategy!(Cheapest);
/// ```
#[macro_export]
macro_rules! export_strategy {
    ($t:ty) => {
        const _: () = {
            struct __SmartRouterStrategy;
            impl $crate::strategy::bindings::exports::smart_router::gateway::routing::Guest
                for __SmartRouterStrategy
            {
                fn rank(
                    request: $crate::RequestInfo,
                    candidates: ::std::vec::Vec<$crate::Candidate>,
                    params: ::std::string::String,
                ) -> ::std::result::Result<$crate::Ranking, ::std::string::String> {
                    let params = $crate::strategy::parse_params(&params)?;
                    <$t as $crate::Strategy>::rank(&request, &candidates, &params)
                }
            }
            $crate::strategy::bindings::export!(__SmartRouterStrategy with_types_in $crate::strategy::bindings);
        };
    };
}
