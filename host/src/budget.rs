//! Budgets in US dollars per gateway key, per group and per channel, daily and monthly: held
//! before the call (an upper-bound estimate), settled with the real cost after. A zero-cost
//! channel is never blocked by a budget.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::quota::{DailyCounter, Day};

/// Whose budget.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    Key(String),
    Group(String),
    Channel(String),
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Key(k) => write!(f, "key `{k}`"),
            Owner::Group(g) => write!(f, "group `{g}`"),
            Owner::Channel(c) => write!(f, "channel `{c}`"),
        }
    }
}

/// Limits in micro-dollars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub daily_micros: Option<u64>,
    pub monthly_micros: Option<u64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.daily_micros.is_none() && self.monthly_micros.is_none()
    }
}

#[derive(Default)]
struct Spend {
    day: DailyCounter,
    month: DailyCounter,
}

/// Spending so far, per owner. Entries outlive config reloads.
#[derive(Default)]
pub struct Budgets {
    spend: RwLock<HashMap<Owner, Arc<Spend>>>,
}

/// Budgets an attempt holds until it settles.
#[derive(Debug, Default)]
pub struct Hold {
    entries: Vec<(Owner, Limits, u64)>,
    day: u64,
    month: u64,
}

/// A budget that would be exceeded.
#[derive(Debug, Clone)]
pub struct Exceeded {
    pub owner: Owner,
    pub period: &'static str,
    pub limit_micros: u64,
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the {} budget of {} (${:.2}) would be exceeded",
            self.period,
            self.owner,
            self.limit_micros as f64 / 1e6
        )
    }
}

impl Budgets {
    fn spend(&self, owner: &Owner) -> Arc<Spend> {
        if let Some(s) = self
            .spend
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(owner)
        {
            return s.clone();
        }
        self.spend
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(owner.clone())
            .or_default()
            .clone()
    }

    /// Holds `estimate` against every listed budget, all or nothing.
    pub fn hold(
        &self,
        budgets: &[(Owner, Limits)],
        day: &Day,
        estimate: u64,
    ) -> Result<Hold, Exceeded> {
        let mut hold = Hold {
            entries: Vec::new(),
            day: day.id,
            month: day.month_start_ms,
        };
        if estimate == 0 {
            return Ok(hold);
        }
        for (owner, limits) in budgets.iter().filter(|(_, l)| !l.is_empty()) {
            let spend = self.spend(owner);
            if let Some(limit) = limits.daily_micros
                && !spend.day.try_reserve(estimate, limit, hold.day)
            {
                self.release(&hold);
                return Err(Exceeded {
                    owner: owner.clone(),
                    period: "daily",
                    limit_micros: limit,
                });
            }
            if let Some(limit) = limits.monthly_micros
                && !spend.month.try_reserve(estimate, limit, hold.month)
            {
                if limits.daily_micros.is_some() {
                    spend.day.settle(estimate, 0, hold.day);
                }
                self.release(&hold);
                return Err(Exceeded {
                    owner: owner.clone(),
                    period: "monthly",
                    limit_micros: limit,
                });
            }
            hold.entries.push((owner.clone(), *limits, estimate));
        }
        Ok(hold)
    }

    /// Replaces the held estimates with the real cost.
    pub fn settle(&self, hold: &Hold, actual: u64) {
        for (owner, limits, held) in &hold.entries {
            let spend = self.spend(owner);
            if limits.daily_micros.is_some() {
                spend.day.settle(*held, actual, hold.day);
            }
            if limits.monthly_micros.is_some() {
                spend.month.settle(*held, actual, hold.month);
            }
        }
    }

    /// Gives a hold back whole.
    pub fn release(&self, hold: &Hold) {
        self.settle(hold, 0);
    }

    /// Seeds spending (at start-up, from the usage table).
    pub fn seed(&self, owner: Owner, day: &Day, today_micros: u64, month_micros: u64) {
        let spend = self.spend(&owner);
        spend.day.seed(today_micros, day.id);
        spend.month.seed(month_micros, day.month_start_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dollar_is_never_overspent_under_concurrency() {
        let b = Budgets::default();
        let day = Day {
            id: 1,
            start_ms: 0,
            end_ms: 1,
            month_start_ms: 0,
        };
        let owner = vec![(
            Owner::Key("k".into()),
            Limits {
                daily_micros: Some(1_000_000),
                monthly_micros: Some(5_000_000),
            },
        )];
        let granted = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..100 {
                        if let Ok(h) = b.hold(&owner, &day, 30_000) {
                            granted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            b.settle(&h, 30_000);
                        }
                    }
                });
            }
        });
        assert_eq!(
            granted.into_inner(),
            33,
            "33 × $0.03 fits in $1, 34 would not"
        );
        let err = b.hold(&owner, &day, 30_000).expect_err("spent");
        assert_eq!(err.period, "daily");
        assert!(
            b.hold(&owner, &day, 0).is_ok(),
            "free calls are never blocked"
        );
    }
}
