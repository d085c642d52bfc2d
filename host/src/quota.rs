//! Days in the configured time zone, and daily counters that reserve before a call and settle
//! with real usage after — exact under concurrency.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use jiff::tz::TimeZone;

/// One local day: its number and its bounds in Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Day {
    /// Distinct for every local day (the start's millisecond is as good an id as any).
    pub id: u64,
    pub start_ms: u64,
    pub end_ms: u64,
    /// Start of the local month the day is in (the id of monthly counters).
    pub month_start_ms: u64,
}

impl Day {
    /// Minutes since local midnight.
    pub fn minute_of_day(&self, now_ms: u64) -> u32 {
        (now_ms.saturating_sub(self.start_ms) / 60_000) as u32
    }
}

/// Local days in one time zone, cached between midnights.
#[derive(Debug)]
pub struct DayClock {
    tz: TimeZone,
    cached: Mutex<Option<(Day, jiff::civil::Weekday)>>,
}

impl DayClock {
    pub fn new(tz: TimeZone) -> Self {
        DayClock {
            tz,
            cached: Mutex::new(None),
        }
    }

    /// The local calendar date (`2026-11-26`) of an instant.
    pub fn date_of(&self, ms: u64) -> String {
        jiff::Timestamp::from_millisecond(ms as i64)
            .map(|ts| ts.to_zoned_datetime(self.tz.clone()).date().to_string())
            .unwrap_or_default()
    }

    /// The local day containing `now_ms`, and its weekday.
    pub fn day(&self, now_ms: u64) -> (Day, jiff::civil::Weekday) {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((d, w)) = *cached
            && d.start_ms <= now_ms
            && now_ms < d.end_ms
        {
            return (d, w);
        }
        let computed = compute(&self.tz, now_ms);
        *cached = Some(computed);
        computed
    }
}

fn compute(tz: &TimeZone, now_ms: u64) -> (Day, jiff::civil::Weekday) {
    let fallback = || {
        let start = now_ms - now_ms % 86_400_000;
        (
            Day {
                id: start,
                start_ms: start,
                end_ms: start + 86_400_000,
                month_start_ms: start,
            },
            jiff::civil::Weekday::Monday,
        )
    };
    let Ok(ts) = jiff::Timestamp::from_millisecond(now_ms as i64) else {
        return fallback();
    };
    let zoned = ts.to_zoned_datetime(tz.clone());
    let (Ok(start), Ok(tomorrow)) = (zoned.start_of_day(), zoned.tomorrow()) else {
        return fallback();
    };
    let Ok(end) = tomorrow.start_of_day() else {
        return fallback();
    };
    let start_ms = start.timestamp().as_millisecond().max(0) as u64;
    let end_ms = end.timestamp().as_millisecond().max(0) as u64;
    let month_start_ms = zoned
        .first_of_month()
        .and_then(|m| m.start_of_day())
        .map(|m| m.timestamp().as_millisecond().max(0) as u64)
        .unwrap_or(start_ms);
    (
        Day {
            id: start_ms,
            start_ms,
            end_ms,
            month_start_ms,
        },
        zoned.weekday(),
    )
}

/// A counter that resets when the local day changes.
#[derive(Default)]
pub struct DailyCounter {
    day: AtomicU64,
    used: AtomicU64,
}

impl DailyCounter {
    fn roll(&self, day: u64) {
        let current = self.day.load(Ordering::Acquire);
        if current != day
            && self
                .day
                .compare_exchange(current, day, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.used.store(0, Ordering::Release);
        }
    }

    /// Used today.
    pub fn used(&self, day: u64) -> u64 {
        if self.day.load(Ordering::Acquire) == day {
            self.used.load(Ordering::Acquire)
        } else {
            0
        }
    }

    /// Takes `amount` if it fits under `limit`: the check and the add are one atomic step.
    pub fn try_reserve(&self, amount: u64, limit: u64, day: u64) -> bool {
        self.roll(day);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(amount).filter(|n| *n <= limit)
            })
            .is_ok()
    }

    /// Replaces a reservation with what was really used (or gives it back with `actual = 0`).
    /// A reservation from a day that has ended is dropped with it.
    pub fn settle(&self, reserved: u64, actual: u64, day: u64) {
        if self.day.load(Ordering::Acquire) != day {
            return;
        }
        if actual >= reserved {
            self.used.fetch_add(actual - reserved, Ordering::AcqRel);
        } else {
            let give_back = reserved - actual;
            let _ = self
                .used
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                    Some(u.saturating_sub(give_back))
                });
        }
    }

    /// Seeds today's count (at start-up, from the usage table).
    pub fn seed(&self, used: u64, day: u64) {
        self.roll(day);
        self.used.fetch_max(used, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_follow_the_time_zone() {
        // 2026-11-26 05:00 UTC is 13:00 in Shanghai (UTC+8): the local day began at 16:00 UTC the day before.
        let now = jiff::Timestamp::from_second(1_795_669_200)
            .expect("ts")
            .as_millisecond() as u64;
        let shanghai = DayClock::new(TimeZone::get("Asia/Shanghai").expect("tz"));
        let (day, _) = shanghai.day(now);
        assert_eq!(day.end_ms - day.start_ms, 86_400_000);
        assert_eq!((now - day.start_ms) / 3_600_000, 13);
        assert_eq!(day.minute_of_day(now), 13 * 60);
        let utc = DayClock::new(TimeZone::UTC);
        assert_eq!(utc.day(now).0.minute_of_day(now), 5 * 60);
    }

    #[test]
    fn reserve_and_settle_are_exact() {
        let c = DailyCounter::default();
        assert!(c.try_reserve(600, 1000, 1));
        assert!(!c.try_reserve(500, 1000, 1), "would exceed");
        c.settle(600, 200, 1);
        assert_eq!(c.used(1), 200);
        assert!(c.try_reserve(800, 1000, 1));
        assert!(c.try_reserve(5, 10, 2), "a new day starts from zero");
        c.settle(800, 0, 1);
        assert_eq!(c.used(2), 5, "a stale day's settlement is dropped");
    }
}
