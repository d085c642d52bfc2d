//! Test fixture: a strategy that tries to allocate 4 GiB (the host's memory cap must stop it).

use smart_router_sdk::{Candidate, Ranking, RequestInfo, Strategy, export_strategy, json::Value};

struct Hog;

impl Strategy for Hog {
    fn rank(request: &RequestInfo, candidates: &[Candidate], _: &Value) -> Result<Ranking, String> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        for _ in 0..64 {
            let chunk = vec![request.random as u8; 64 << 20];
            hoard.push(std::hint::black_box(chunk));
        }
        Ok(Ranking::new((0..candidates.len() as u32).collect())
            .explained(format!("{}", hoard.len())))
    }
}

export_strategy!(Hog);
