//! Which windows a cycle or a backfill must run, and why.
//!
//! A window is one UTC day of `StatusDatetime`, the product's only time filter; a date-only value
//! selects the whole day. A first run with no watermark instead loads the whole 13-month history
//! with one unfiltered export, which is far cheaper than ~400 day jobs.

use std::collections::BTreeMap;

use chrono::{Duration, Months, NaiveDate};

use crate::product::Product;
use crate::state::WindowKind;

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
    let text = day.format("%Y-%m-%d").to_string();
    WindowPlan {
        key: text.clone(),
        kind: WindowKind::Day,
        from: day,
        to: day,
        tokens: BTreeMap::from([(product.day_token().to_string(), text)]),
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
        tokens: BTreeMap::from([(product.day_token().to_string(), String::new())]),
        reason: "no watermark yet: load the available 13 months with one unfiltered export".into(),
    }
}

/// The windows of one incremental cycle.
pub fn plan_cycle(
    product: Product,
    watermark: Option<NaiveDate>,
    lookback_days: u32,
    today: NaiveDate,
) -> Vec<WindowPlan> {
    let Some(w) = watermark else {
        return vec![history_window(product, today)];
    };
    let floor = available_from(today);
    let first = (w - Duration::days(lookback_days as i64) + Duration::days(1)).max(floor);
    let mut out = Vec::new();
    let mut d = first.min(today);
    while d <= today {
        let reason = if d == today {
            "today: re-synced every cycle until it closes".to_string()
        } else if d <= w {
            format!(
                "lookback: closed day within {lookback_days} day(s) of the watermark {w}, re-synced for late updates"
            )
        } else {
            format!("after the watermark {w}: not yet committed")
        };
        out.push(day_window(product, d, reason));
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

    const P: Product = Product::HidWorkOrders;

    #[test]
    fn first_run_is_one_history_export() {
        let w = plan_cycle(P, None, 2, d("2026-11-27"));
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].kind, WindowKind::History);
        assert_eq!(w[0].from, d("2025-10-27"));
        assert_eq!(w[0].tokens["StatusDatetime"], "");
    }

    #[test]
    fn cycle_covers_lookback_through_today() {
        let w = plan_cycle(P, Some(d("2026-11-26")), 2, d("2026-11-27"));
        let keys: Vec<_> = w.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(keys, ["2026-11-25", "2026-11-26", "2026-11-27"]);
        assert_eq!(w[0].tokens["StatusDatetime"], "2026-11-25");
        assert!(w[2].reason.starts_with("today"));
        // A daemon that was down for a while catches up on every day since the watermark.
        assert_eq!(
            plan_cycle(P, Some(d("2026-11-20")), 0, d("2026-11-27")).len(),
            7
        );
        assert_eq!(
            plan_cycle(P, Some(d("2026-11-26")), 0, d("2026-11-27")).len(),
            1
        );
    }

    #[test]
    fn backfill_clamps_and_says_so() {
        let (w, note) =
            plan_backfill(P, d("2024-01-01"), d("2025-11-01"), d("2026-11-27")).unwrap();
        assert_eq!(w.first().unwrap().from, d("2025-10-27"));
        assert_eq!(w.len(), 6);
        assert!(note.unwrap().contains("13-month"));
        let (w, note) =
            plan_backfill(P, d("2026-11-01"), d("2026-11-03"), d("2026-11-27")).unwrap();
        assert_eq!(w.len(), 3);
        assert!(note.is_none());
        assert!(plan_backfill(P, d("2026-11-03"), d("2026-11-01"), d("2026-11-27")).is_err());
        assert!(plan_backfill(P, d("2020-01-01"), d("2020-02-01"), d("2026-11-27")).is_err());
    }
}
