//! The on-demand endpoint: up to 1,000 rows answered at once, filtered by the same tokens.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::auth::gated;
use super::served::lookup;
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
        || on_demand_inner(&s, &sub, &body),
    )
}

pub(super) fn on_demand_inner(s: &SimState, sub: &str, body: &str) -> Response {
    let Some(product) = s.served(sub) else {
        return problem(StatusCode::NOT_FOUND, "Unknown subscription.", json!({}));
    };
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
    let query = match product.query(&tokens) {
        Ok(q) => q,
        Err(r) => return *r,
    };
    let now = s.now();
    let names = product.columns().names(0);
    let mut rows = Vec::new();
    query.rows(s, now.date_naive(), now, &mut |r| {
        let row: serde_json::Map<String, Value> = names
            .iter()
            .zip(&r.values)
            .map(|(n, v)| (n.clone(), Value::from(v.text())))
            .collect();
        rows.push(Value::Object(row));
        rows.len() < ON_DEMAND_MAX_ROWS
    });
    axum::Json(Value::Array(rows)).into_response()
}
