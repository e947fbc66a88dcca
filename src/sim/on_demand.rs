//! The on-demand endpoint: up to 1,000 rows answered at once, filtered by the same tokens.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};

use super::auth::gated;
use super::filter::{lookup, parse_filter};
use super::{ON_DEMAND_MAX_ROWS, Shared, SimState, problem};

pub(super) async fn on_demand(
    State(s): Shared,
    Path(sub): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    gated(
        &s,
        &headers,
        &sub,
        "on-demand",
        |_| None,
        || on_demand_inner(&s, &body),
    )
}

pub(super) fn on_demand_inner(s: &SimState, body: &str) -> Response {
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(body) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "The request body is not a JSON object.",
            json!({}),
        );
    };
    // The documented body is flat; a {tokens:{…}} wrapper is accepted too.
    let tokens = match lookup(&obj, "tokens") {
        Some(Value::Object(t)) => t.clone(),
        _ => obj,
    };
    let filter = match parse_filter(&tokens) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let now = Utc::now();
    let extra = s.extra.lock().expect("extra").clone();
    let mut rows = Vec::new();
    filter.for_each_row(&s.dataset, now.date_naive(), now, &extra, |r| {
        rows.push(json!({
            "ServicePointId": r.service_point_id,
            "Phase": r.phase.to_string(),
            "IssueId": r.issue_id,
            "Status": r.status,
            "StatusDatetime": r.status_datetime_text(),
            "Reason": r.reason,
            "EventDate": r.event_date_text(),
            "WorkOrderId": r.work_order_id,
        }));
        rows.len() < ON_DEMAND_MAX_ROWS
    });
    axum::Json(Value::Array(rows)).into_response()
}
