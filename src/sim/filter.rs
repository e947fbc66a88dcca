//! The batch and on-demand tokens, read the way the vendor documents them: names in any casing,
//! `""` for not supplied, an unknown name a 400 naming it.

use super::export::Filter;
use super::problem;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Value, json};

pub(super) const TOKENS: [(&str, &str, bool); 5] = [
    ("StatusDatetime", "TIMESTAMP", false),
    ("WorkOrderId", "STRING", true),
    ("IssueId", "STRING", false),
    ("Status", "STRING", false),
    ("Reason", "STRING", false),
];

pub(super) fn lookup<'a>(obj: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

/// Reads the tokens into a filter; `""` means not supplied, unknown names are a 400.
pub(super) fn parse_filter(
    tokens: &serde_json::Map<String, Value>,
) -> Result<Filter, Box<Response>> {
    let mut f = Filter::default();
    let mut errors = serde_json::Map::new();
    for (name, value) in tokens {
        let text = match value {
            Value::String(s) => s.trim().to_string(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        if text.is_empty() {
            continue;
        }
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
