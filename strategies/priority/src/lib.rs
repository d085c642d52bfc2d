//! `priority`: tier 1 before tier 2 (the channel's `priority`), and weighted random by `weight`
//! inside a tier, so traffic spreads across equal channels in proportion to their weights.
//!
//! Use it when you have a clear order of preference (a free tier first, a paid fallback next)
//! and want load spread evenly among channels you consider equivalent.

use smart_router_sdk::{Candidate, Ranking, RequestInfo, Strategy, export_strategy};

struct Priority;

impl Strategy for Priority {
    fn rank(
        request: &RequestInfo,
        candidates: &[Candidate],
        _params: &smart_router_sdk::json::Value,
    ) -> Result<Ranking, String> {
        let mut rng = SplitMix(request.random);
        // Weighted random order without replacement (Efraimidis–Spirakis): key = u^(1/w).
        let mut keyed: Vec<(u32, f64, u32)> = candidates
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let w = if c.weight > 0.0 { c.weight } else { 1e-9 };
                (c.priority, rng.next_f64().powf(1.0 / w), i as u32)
            })
            .collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)));
        Ok(Ranking::new(keyed.into_iter().map(|k| k.2).collect()))
    }
}

/// A small deterministic generator seeded by the host's random number.
struct SplitMix(u64);

impl SplitMix {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // 53 random bits in (0, 1].
        ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
}

export_strategy!(Priority);
