//! Pricing policies: time-of-day windows, weekdays and quota-usage tiers that scale the effective
//! price of channels — the price routing compares and the price billed.

use jiff::civil::Weekday;

use crate::config::files::PolicyEntry;
use crate::config::{Channel, ConfigError};

/// A validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    channels: Option<Vec<String>>,
    providers: Option<Vec<String>>,
    /// Minutes since local midnight, `[start, end)`; wraps when `start > end`.
    window: Option<(u32, u32)>,
    days: Option<Vec<Weekday>>,
    quota_used_above: Option<f64>,
    pub multiplier: f64,
}

/// When a price is asked for.
#[derive(Debug, Clone, Copy)]
pub struct Moment {
    pub minute_of_day: u32,
    pub weekday: Weekday,
}

impl Policy {
    pub fn parse(i: usize, e: PolicyEntry) -> Result<Policy, ConfigError> {
        const FILE: &str = "pricing_policies.yaml";
        let at = |f: &str| format!("pricing_policies[{i}].{f}");
        if !(e.multiplier.is_finite() && e.multiplier >= 0.0) {
            return Err(ConfigError::at(
                FILE,
                at("multiplier"),
                "must be a number ≥ 0",
            ));
        }
        let window = match e.time_window {
            None => None,
            Some(w) => {
                let start = minutes(&w.start).ok_or_else(|| {
                    ConfigError::at(
                        FILE,
                        at("time_window.start"),
                        format!("`{}` is not HH:MM", w.start),
                    )
                })?;
                let end = minutes(&w.end).ok_or_else(|| {
                    ConfigError::at(
                        FILE,
                        at("time_window.end"),
                        format!("`{}` is not HH:MM", w.end),
                    )
                })?;
                Some((start, end))
            }
        };
        let days = match e.days {
            None => None,
            Some(list) => Some(
                list.iter()
                    .enumerate()
                    .map(|(j, d)| {
                        weekday(d).ok_or_else(|| {
                            ConfigError::at(
                                FILE,
                                at(&format!("days[{j}]")),
                                format!("`{d}` is not mon, tue, wed, thu, fri, sat or sun"),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        if let Some(q) = e.quota_used_above
            && !(0.0..=1.0).contains(&q)
        {
            return Err(ConfigError::at(
                FILE,
                at("quota_used_above"),
                "must be between 0.0 and 1.0",
            ));
        }
        Ok(Policy {
            name: e.name,
            channels: e.channels,
            providers: e.providers,
            window,
            days,
            quota_used_above: e.quota_used_above,
            multiplier: e.multiplier,
        })
    }

    fn applies(&self, ch: &Channel, at: Moment, quota_used: Option<f64>) -> bool {
        self.channels.as_ref().is_none_or(|c| c.contains(&ch.id))
            && self
                .providers
                .as_ref()
                .is_none_or(|p| p.contains(&ch.provider))
            && self.days.as_ref().is_none_or(|d| d.contains(&at.weekday))
            && self.window.is_none_or(|(start, end)| {
                let m = at.minute_of_day;
                if start <= end {
                    start <= m && m < end
                } else {
                    m >= start || m < end
                }
            })
            && self
                .quota_used_above
                .is_none_or(|q| quota_used.is_some_and(|u| u > q))
    }
}

/// The channel's price factor now: its own `cost_multiplier` times every policy that applies.
/// `quota_used`: the largest share of a daily limit the channel has used (none: no limits).
pub fn multiplier(policies: &[Policy], ch: &Channel, at: Moment, quota_used: Option<f64>) -> f64 {
    policies
        .iter()
        .filter(|p| p.applies(ch, at, quota_used))
        .fold(ch.cost_multiplier, |m, p| m * p.multiplier)
}

fn minutes(hhmm: &str) -> Option<u32> {
    let (h, m) = hhmm.trim().split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 24 && m < 60 && h * 60 + m <= 24 * 60).then_some(h * 60 + m)
}

fn weekday(d: &str) -> Option<Weekday> {
    Some(match d.to_ascii_lowercase().get(..3)? {
        "mon" => Weekday::Monday,
        "tue" => Weekday::Tuesday,
        "wed" => Weekday::Wednesday,
        "thu" => Weekday::Thursday,
        "fri" => Weekday::Friday,
        "sat" => Weekday::Saturday,
        "sun" => Weekday::Sunday,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::files::TimeWindow;

    fn policy(window: (&str, &str), multiplier: f64) -> Policy {
        let entry = PolicyEntry {
            name: "p".into(),
            channels: None,
            providers: Some(vec!["deepseek".into()]),
            time_window: Some(TimeWindow {
                start: window.0.into(),
                end: window.1.into(),
            }),
            days: None,
            quota_used_above: None,
            multiplier,
        };
        Policy::parse(0, entry).expect("valid")
    }

    fn channel(provider: &str) -> Channel {
        Channel {
            id: format!("{provider}/m"),
            provider: provider.into(),
            model: "m".into(),
            priority: 1,
            weight: 1.0,
            daily_limit: None,
            daily_token_limit: None,
            daily_cost_limit_micros: None,
            monthly_cost_limit_micros: None,
            input_cost_per_1k: 1.0,
            output_cost_per_1k: 1.0,
            cost_multiplier: 2.0,
            context_length: None,
            capabilities: None,
            disabled: None,
            separate_rate_limit: false,
            health_check: None,
        }
    }

    #[test]
    fn windows_wrap_midnight_and_stack_on_the_channel_multiplier() {
        let p = [policy(("22:30", "08:30"), 0.5)];
        let at = |h: u32, m: u32| Moment {
            minute_of_day: h * 60 + m,
            weekday: Weekday::Monday,
        };
        assert_eq!(multiplier(&p, &channel("deepseek"), at(23, 0), None), 1.0);
        assert_eq!(multiplier(&p, &channel("deepseek"), at(8, 29), None), 1.0);
        assert_eq!(
            multiplier(&p, &channel("deepseek"), at(8, 30), None),
            2.0,
            "the end is exclusive"
        );
        assert_eq!(
            multiplier(&p, &channel("openai"), at(23, 0), None),
            2.0,
            "other providers untouched"
        );
    }

    #[test]
    fn bad_policies_point_at_the_field() {
        let e = PolicyEntry {
            name: "x".into(),
            channels: None,
            providers: None,
            time_window: Some(TimeWindow {
                start: "25:00".into(),
                end: "01:00".into(),
            }),
            days: None,
            quota_used_above: None,
            multiplier: 1.0,
        };
        let err = Policy::parse(3, e).expect_err("refused");
        assert!(
            err.to_string()
                .contains("pricing_policies[3].time_window.start"),
            "{err}"
        );
    }
}
