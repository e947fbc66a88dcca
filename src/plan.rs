//! Which windows a cycle or a backfill must run, and why.
//!
//! A window is one UTC day of the product's window column, asked for with the tokens the product
//! declares (one day token, or a start and an end). A first run with no watermark instead loads
//! the whole 13-month history with one unfiltered export, which is far cheaper than ~400 day
//! jobs.
//!
//! A cycle converges: a closed day committed after it closed is not exported again unless it is
//! within the lookback, and a window that keeps failing waits longer before each try, so one
//! bad day neither holds every cycle hostage nor makes each re-export the days around it.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Months, NaiveDate, Utc};

use crate::model::WindowKind;
use crate::product::Product;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WindowPlan {
    pub key: String,
    pub kind: WindowKind,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub tokens: BTreeMap<String, String>,
    pub reason: String,
}

/// The first day the vendor still serves: 13 months back from `today`.
pub fn available_from(today: NaiveDate) -> NaiveDate {
    today - Months::new(13)
}

pub fn day_window(product: Product, day: NaiveDate, reason: String) -> WindowPlan {
    WindowPlan {
        key: day.format("%Y-%m-%d").to_string(),
        kind: WindowKind::Day,
        from: day,
        to: day,
        tokens: product.day_tokens(day),
        reason,
    }
}

pub fn history_window(product: Product, today: NaiveDate) -> WindowPlan {
    WindowPlan {
        key: "history".into(),
        kind: WindowKind::History,
        from: available_from(today),
        to: today,
        // Unused tokens go as "" (not supplied), as in every vendor example.
        tokens: product.history_tokens(),
        reason: "no watermark yet: load the available 13 months with one unfiltered export".into(),
    }
}

/// What the state knows of past windows, for planning a cycle.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    /// Days committed after they closed.
    pub final_days: BTreeSet<NaiveDate>,
    /// Windows (by key) that keep failing, with when they may be tried again.
    pub backing_off: BTreeMap<String, DateTime<Utc>>,
}

/// A window a cycle leaves out for now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Deferred {
    pub key: String,
    pub until: DateTime<Utc>,
}

/// The windows of one cycle, and the failing ones it waits for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CyclePlan {
    pub windows: Vec<WindowPlan>,
    pub deferred: Vec<Deferred>,
}

/// How long a window that failed in `failures` runs in a row waits before the next cycle tries
/// it: the first failure is retried by the next cycle, then 15 minutes, doubling to six hours.
pub fn retry_delay(failures: i64) -> Option<Duration> {
    (failures >= 2).then(|| {
        let steps = (failures - 2).min(5) as u32;
        (Duration::minutes(15) * 2i32.pow(steps)).min(Duration::hours(6))
    })
}

/// The windows of one incremental cycle: the lookback days before the watermark and before
/// today (late updates), every day after the watermark not yet final, and today.
pub fn plan_cycle(
    product: Product,
    watermark: Option<NaiveDate>,
    lookback_days: u32,
    today: NaiveDate,
    now: DateTime<Utc>,
    ledger: &Ledger,
) -> CyclePlan {
    let candidates = match watermark {
        None => vec![history_window(product, today)],
        Some(w) => cycle_days(product, w, lookback_days, today, &ledger.final_days),
    };
    let mut plan = CyclePlan::default();
    for window in candidates {
        match ledger.backing_off.get(&window.key) {
            Some(until) if *until > now => plan.deferred.push(Deferred {
                key: window.key,
                until: *until,
            }),
            _ => plan.windows.push(window),
        }
    }
    plan
}

fn cycle_days(
    product: Product,
    w: NaiveDate,
    lookback_days: u32,
    today: NaiveDate,
    final_days: &BTreeSet<NaiveDate>,
) -> Vec<WindowPlan> {
    let floor = available_from(today);
    let lookback = Duration::days(lookback_days as i64);
    let first = (w - lookback + Duration::days(1)).max(floor);
    let recent = today - lookback;
    let mut out = Vec::new();
    let mut d = first.min(today);
    while d <= today {
        let reason = if d == today {
            Some("today: re-synced every cycle until it closes".to_string())
        } else if d <= w {
            Some(format!(
                "lookback: closed day within {lookback_days} day(s) of the watermark {w}, re-synced for late updates"
            ))
        } else if d >= recent {
            Some(format!(
                "lookback: closed day within {lookback_days} day(s) of today, re-synced for late updates"
            ))
        } else if final_days.contains(&d) {
            None
        } else {
            Some(format!(
                "after the watermark {w}: not yet committed since it closed"
            ))
        };
        if let Some(reason) = reason {
            out.push(day_window(product, d, reason));
        }
        d += Duration::days(1);
    }
    out
}

/// Day windows for an explicit range, clamped to what the vendor still serves; the message says
/// what was clamped.
pub fn plan_backfill(
    product: Product,
    from: NaiveDate,
    to: NaiveDate,
    today: NaiveDate,
) -> Result<(Vec<WindowPlan>, Option<String>), String> {
    if from > to {
        return Err(format!("--from {from} is after --to {to}"));
    }
    let floor = available_from(today);
    let (lo, hi) = (from.max(floor), to.min(today));
    let mut notes = Vec::new();
    if from < floor {
        notes.push(format!(
            "--from {from} is older than the 13-month availability; starting at {floor}"
        ));
    }
    if to > today {
        notes.push(format!(
            "--to {to} is in the future; stopping at today ({today})"
        ));
    }
    if lo > hi {
        return Err(format!(
            "nothing to load: {from}..{to} lies outside the available {floor}..{today}"
        ));
    }
    let mut out = Vec::new();
    let mut d = lo;
    while d <= hi {
        out.push(day_window(product, d, "backfill".into()));
        d += Duration::days(1);
    }
    Ok((out, (!notes.is_empty()).then(|| notes.join("; "))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn hid() -> Product {
        crate::product::test_support::hid()
    }

    fn cycle(watermark: Option<&str>, lookback: u32, today: &str, ledger: &Ledger) -> Vec<String> {
        plan_cycle(
            hid(),
            watermark.map(d),
            lookback,
            d(today),
            Utc::now(),
            ledger,
        )
        .windows
        .into_iter()
        .map(|w| w.key)
        .collect()
    }

    #[test]
    fn first_run_is_one_history_export() {
        let w = plan_cycle(
            hid(),
            None,
            2,
            d("2026-11-27"),
            Utc::now(),
            &Ledger::default(),
        )
        .windows;
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].kind, WindowKind::History);
        assert_eq!(w[0].from, d("2025-10-27"));
        assert_eq!(w[0].tokens["StatusDatetime"], "");
    }

    #[test]
    fn cycle_covers_lookback_through_today() {
        let none = Ledger::default();
        let w = plan_cycle(
            hid(),
            Some(d("2026-11-26")),
            2,
            d("2026-11-27"),
            Utc::now(),
            &none,
        )
        .windows;
        let keys: Vec<_> = w.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(keys, ["2026-11-25", "2026-11-26", "2026-11-27"]);
        assert_eq!(w[0].tokens["StatusDatetime"], "2026-11-25");
        assert!(w[2].reason.starts_with("today"));
        // A daemon that was down for a while catches up on every day since the watermark.
        assert_eq!(cycle(Some("2026-11-20"), 0, "2026-11-27", &none).len(), 7);
        assert_eq!(cycle(Some("2026-11-26"), 0, "2026-11-27", &none).len(), 1);
    }

    #[test]
    fn a_stuck_watermark_does_not_re_export_the_final_days_after_it() {
        // 2026-11-20 keeps failing, so the watermark stays at 11-19; the days after it were
        // committed after they closed.
        let ledger = Ledger {
            final_days: d("2026-11-21")
                .iter_days()
                .take_while(|x| *x < d("2026-11-27"))
                .collect(),
            ..Default::default()
        };
        assert_eq!(
            cycle(Some("2026-11-19"), 2, "2026-11-27", &ledger),
            [
                "2026-11-18", // lookback of the watermark
                "2026-11-19",
                "2026-11-20", // not yet committed
                "2026-11-25", // lookback of today
                "2026-11-26",
                "2026-11-27",
            ]
        );
    }

    #[test]
    fn a_failing_window_waits_longer_each_time() {
        assert_eq!(retry_delay(1), None);
        assert_eq!(retry_delay(2), Some(Duration::minutes(15)));
        assert_eq!(retry_delay(3), Some(Duration::minutes(30)));
        assert_eq!(retry_delay(40), Some(Duration::hours(6)));
        let now = Utc::now();
        let ledger = Ledger {
            backing_off: BTreeMap::from([
                ("2026-11-26".to_string(), now + Duration::minutes(5)),
                ("2026-11-25".to_string(), now - Duration::minutes(5)),
            ]),
            ..Default::default()
        };
        let plan = plan_cycle(
            hid(),
            Some(d("2026-11-26")),
            2,
            d("2026-11-27"),
            now,
            &ledger,
        );
        let keys: Vec<_> = plan.windows.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(keys, ["2026-11-25", "2026-11-27"]);
        assert_eq!(plan.deferred[0].key, "2026-11-26");
    }

    #[test]
    fn backfill_clamps_and_says_so() {
        let (w, note) =
            plan_backfill(hid(), d("2024-01-01"), d("2025-11-01"), d("2026-11-27")).unwrap();
        assert_eq!(w.first().unwrap().from, d("2025-10-27"));
        assert_eq!(w.len(), 6);
        assert!(note.unwrap().contains("13-month"));
        let (w, note) =
            plan_backfill(hid(), d("2026-11-01"), d("2026-11-03"), d("2026-11-27")).unwrap();
        assert_eq!(w.len(), 3);
        assert!(note.is_none());
        assert!(plan_backfill(hid(), d("2026-11-03"), d("2026-11-01"), d("2026-11-27")).is_err());
        assert!(plan_backfill(hid(), d("2020-01-01"), d("2020-02-01"), d("2026-11-27")).is_err());
    }
}
