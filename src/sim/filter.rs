//! HID work orders' batch and on-demand tokens, read the way the vendor documents them: names in
//! any casing, `""` for not supplied, an unknown name a 400 naming it; and the rows a request
//! selects.

use std::collections::HashSet;

use super::data::{Dataset, SimRow};
use super::problem;
use super::served::supplied;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Value, json};

/// What a batch request or on-demand call asked for, as the seed's parameter table defines it.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `StatusDatetime` with a date-only value: that whole UTC day.
    pub day: Option<NaiveDate>,
    /// `StatusDatetime` with a full timestamp: that instant.
    pub instant: Option<DateTime<Utc>>,
    /// `WorkOrderId`, In list.
    pub work_orders: Option<HashSet<String>>,
    pub issue_id: Option<String>,
    pub status: Option<String>,
    /// `Reason`, contains.
    pub reason_contains: Option<String>,
}

impl Filter {
    pub fn matches(&self, r: &SimRow) -> bool {
        self.day.is_none_or(|d| r.status_day() == d)
            && self.instant.is_none_or(|t| r.status_datetime == t)
            && self
                .work_orders
                .as_ref()
                .is_none_or(|w| w.contains(&r.work_order_id))
            && self.issue_id.as_ref().is_none_or(|i| &r.issue_id == i)
            && self
                .status
                .as_ref()
                .is_none_or(|s| r.status.eq_ignore_ascii_case(s))
            && self
                .reason_contains
                .as_ref()
                .is_none_or(|s| r.reason.contains(s.as_str()))
    }

    /// Every row that matches, day by day over the availability window, then the injected rows.
    pub fn for_each_row(
        &self,
        ds: &Dataset,
        today: NaiveDate,
        as_of: DateTime<Utc>,
        extra: &[SimRow],
        mut emit: impl FnMut(SimRow) -> bool,
    ) {
        let from = Dataset::available_from(today);
        let (first, last) = match (self.day, self.instant) {
            (Some(d), _) => (d, d),
            (None, Some(t)) => (t.date_naive(), t.date_naive()),
            (None, None) => (from, today),
        };
        let mut day = first.max(from);
        while day <= last.min(today) {
            let mut go_on = true;
            ds.rows_for_day(day, as_of, |r| {
                if go_on && self.matches(&r) {
                    go_on = emit(r);
                }
            });
            if !go_on {
                return;
            }
            for r in extra
                .iter()
                .filter(|r| r.status_day() == day && self.matches(r))
            {
                if !emit(r.clone()) {
                    return;
                }
            }
            day = day.succ_opt().expect("dates stay in range");
        }
    }
}

pub(super) const TOKENS: [(&str, &str, bool); 5] = [
    ("StatusDatetime", "TIMESTAMP", false),
    ("WorkOrderId", "STRING", true),
    ("IssueId", "STRING", false),
    ("Status", "STRING", false),
    ("Reason", "STRING", false),
];

/// Reads the tokens into a filter; `""` means not supplied, unknown names are a 400.
pub(super) fn parse_filter(
    tokens: &serde_json::Map<String, Value>,
) -> Result<Filter, Box<Response>> {
    let mut f = Filter::default();
    let mut errors = serde_json::Map::new();
    for (name, text) in supplied(tokens) {
        let Some((canonical, _, _)) = TOKENS.iter().find(|(n, _, _)| n.eq_ignore_ascii_case(name))
        else {
            errors.insert(name.clone(), json!(["unknown token for this data product"]));
            continue;
        };
        match *canonical {
            "StatusDatetime" => {
                if let Ok(d) = NaiveDate::parse_from_str(&text, "%Y-%m-%d") {
                    f.day = Some(d);
                } else if let Ok(t) = DateTime::parse_from_rfc3339(&text) {
                    f.instant = Some(t.with_timezone(&Utc));
                } else {
                    errors.insert(
                        name.clone(),
                        json!(["expected YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ"]),
                    );
                }
            }
            "WorkOrderId" => {
                f.work_orders = Some(
                    text.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect(),
                )
            }
            "IssueId" => f.issue_id = Some(text),
            "Status" => f.status = Some(text),
            _ => f.reason_contains = Some(text),
        }
    }
    if errors.is_empty() {
        Ok(f)
    } else {
        Err(Box::new(problem(
            StatusCode::BAD_REQUEST,
            "One or more validation errors occurred.",
            Value::Object(errors),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn status_datetime_is_a_day_or_an_rfc3339_instant_and_anything_else_is_named() {
        let f = parse_filter(&tokens(json!({"statusdatetime": "2026-01-02"}))).unwrap();
        assert_eq!(f.day, NaiveDate::from_ymd_opt(2026, 1, 2));
        let f = parse_filter(&tokens(json!({"StatusDatetime": "2026-01-02T03:04:05Z"}))).unwrap();
        assert_eq!(
            f.instant.map(|t| t.to_rfc3339()),
            Some("2026-01-02T03:04:05+00:00".into())
        );
        let refused = parse_filter(&tokens(json!({"StatusDatetime": "02/01/2026"}))).unwrap_err();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        let refused = parse_filter(&tokens(json!({"Colour": "red"}))).unwrap_err();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn empty_tokens_are_not_supplied_and_lists_split_on_commas() {
        let f = parse_filter(&tokens(json!({"Status": "", "WorkOrderId": "a, b,"}))).unwrap();
        assert_eq!(f.status, None);
        let mut ids: Vec<String> = f.work_orders.unwrap().into_iter().collect();
        ids.sort();
        assert_eq!(ids, ["a", "b"]);
    }
}
