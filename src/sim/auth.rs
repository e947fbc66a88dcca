//! The identity provider's token endpoint and the gate every DPSS call passes: throttling and
//! outages first, then the bearer, the headers and the subscription, as a gateway and the service
//! would apply them.

use std::collections::HashMap;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use uuid::Uuid;

use super::faults::fires;
use super::{Shared, SimState, problem};

pub(super) fn oauth_error(code: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({ "error": code })),
    )
        .into_response()
}

pub(super) async fn token(
    State(s): Shared,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    let resp = if field("grant_type") != "client_credentials" {
        oauth_error("unsupported_grant_type")
    } else if field("client_id") != s.cfg.client_id || field("client_secret") != s.cfg.client_secret
    {
        oauth_error("invalid_client")
    } else if !field("scope")
        .split_whitespace()
        .any(|x| x == "DPSSSubscriberApi")
    {
        oauth_error("invalid_scope")
    } else {
        let token = format!(
            "sim.{}.{}",
            Uuid::new_v4().simple(),
            Uuid::new_v4().simple()
        );
        s.tokens
            .lock()
            .expect("tokens")
            .live
            .insert(token.clone(), (Instant::now() + s.cfg.token_ttl, 0));
        s.counters.lock().expect("counters").tokens_issued += 1;
        // The docs ask for DPSSSubscriberApi and show DPSSApi coming back; so does the simulator.
        axum::Json(json!({
            "access_token": token,
            "expires_in": s.cfg.token_ttl.as_secs(),
            "token_type": "Bearer",
            "scope": "DPSSApi",
        }))
        .into_response()
    };
    s.record("token", resp.status(), &headers, None);
    resp
}

/// The checks every DPSS call passes through, in the order a gateway and the service would
/// apply them: throttling and outages first, then the bearer, the headers and the subscription.
/// `Some` is the refusal to send instead of serving the call.
fn guard(s: &SimState, headers: &HeaderMap, sub: &str) -> Option<Response> {
    let n = {
        let mut c = s.counters.lock().expect("counters");
        c.dpss_requests += 1;
        c.dpss_requests
    };
    let f = &s.cfg.faults;
    if fires(f.too_many_requests, n) {
        let throttled = (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            "Too Many Requests",
        );
        return Some(throttled.into_response());
    }
    if fires(f.server_errors, n) {
        let status = [
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::BAD_GATEWAY,
        ][(n / f.server_errors.unwrap_or(1) % 3) as usize];
        return Some((status, "upstream error").into_response());
    }
    if fires(f.resets, n) {
        // The status line goes out, then the connection breaks before the body.
        let broken = futures::stream::once(async {
            Err::<bytes::Bytes, _>(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "simulated reset",
            ))
        });
        return Some(Response::new(Body::from_stream(broken)));
    }
    let unauthorized = (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")],
        "",
    );
    let Some(bearer) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return Some(unauthorized.into_response());
    };
    {
        let mut tokens = s.tokens.lock().expect("tokens");
        let Some((expiry, uses)) = tokens.live.get_mut(bearer) else {
            return Some(unauthorized.into_response());
        };
        *uses += 1;
        if Instant::now() >= *expiry || f.token_expiry.is_some_and(|limit| *uses > limit) {
            return Some(unauthorized.into_response());
        }
    }
    let subscriber = headers
        .get("datasubscriberid")
        .and_then(|v| v.to_str().ok());
    if subscriber != Some(s.cfg.subscriber_id.as_str()) {
        return Some(problem(
            StatusCode::BAD_REQUEST,
            "DataSubscriberId header missing or unknown",
            json!({"DataSubscriberId": ["required; must be your subscriber id"]}),
        ));
    }
    let correlation = headers
        .get("itron-correlationid")
        .and_then(|v| v.to_str().ok());
    if correlation.and_then(|c| Uuid::parse_str(c).ok()).is_none() {
        return Some(problem(
            StatusCode::BAD_REQUEST,
            "Itron-CorrelationId header missing or not a UUID",
            json!({"Itron-CorrelationId": ["required; a UUID per request"]}),
        ));
    }
    if s.served(sub).is_none() {
        return Some(
            (
                StatusCode::FORBIDDEN,
                "subscription does not belong to this subscriber",
            )
                .into_response(),
        );
    }
    None
}

/// Serves one DPSS call: the gate's refusal, or what `serve` answers; recorded either way, under
/// the job id `job_id` finds in the answer, if any.
pub(super) fn gated(
    s: &SimState,
    headers: &HeaderMap,
    sub: &str,
    endpoint: &'static str,
    job_id: impl FnOnce(&Response) -> Option<String>,
    serve: impl FnOnce() -> Response,
) -> Response {
    let resp = guard(s, headers, sub).unwrap_or_else(serve);
    s.record(endpoint, resp.status(), headers, job_id(&resp));
    resp
}
