//! One request to the vendor, retried as its kind allows: reads on any transient failure, a job
//! creation only when the server provably did not act (a second POST could make a second job).
//! Waits honour `Retry-After`, capped, else back off exponentially with jitter; a 401 refreshes
//! the token once.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::{Method, StatusCode, header::HeaderMap};
use serde_json::Value;
use url::Url;
use uuid::Uuid;

use super::{ApiError, DpssClient, error_chain, place};
use crate::events::{InternalEvent, Retrying, VendorRequest};

impl DpssClient {
    pub(super) async fn call(
        &self,
        endpoint: &'static str,
        method: Method,
        url: Url,
        body: Option<Value>,
        idempotency: Idempotency,
    ) -> Result<Value, ApiError> {
        let correlation_id = Uuid::new_v4();
        let at = place(&url);
        let here = Call {
            endpoint,
            at: &at,
            correlation_id,
        };
        let mut refreshed = false;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            // An identity server that throttles, fails or is out of reach says nothing about the
            // request: it was never sent, so even a job-creating POST may be retried.
            // Past the last attempt the token's own error is the one reported: it names the
            // identity server, which is what failed.
            let token = match self.tokens.token().await {
                Ok(t) => t,
                Err(e) => {
                    let retry_after = match &e {
                        ApiError::TokenUnavailable { retry_after, .. } => *retry_after,
                        ApiError::Network { .. } => None,
                        _ => return Err(e),
                    };
                    let long = retry_after.is_some_and(|d| d > self.settings.max_retry_after);
                    if attempt >= self.settings.max_attempts && !long {
                        return Err(e);
                    }
                    self.backoff(&here, attempt, retry_after, e.to_string())
                        .await?;
                    continue;
                }
            };
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(token.expose())
                .header("Itron-CorrelationId", correlation_id.to_string())
                .header("DataSubscriberId", &self.settings.subscriber_id)
                .header("Accept", "application/json");
            if let Some(b) = &body {
                req = req.json(b);
            }
            let started = Instant::now();
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let outcome = req.send().await;
            let cid = correlation_id.to_string();
            let resp = match outcome {
                Ok(r) => r,
                Err(e) => {
                    let never_sent = e.is_connect();
                    let detail = error_chain(&e.without_url());
                    VendorRequest {
                        endpoint,
                        method: method.as_str(),
                        status: None,
                        duration: started.elapsed(),
                        attempt,
                        correlation_id: Some(&cid),
                        error: Some(&detail),
                    }
                    .emit();
                    if idempotency == Idempotency::CreatesJob && !never_sent {
                        return Err(ApiError::OutcomeUnknown {
                            endpoint,
                            at,
                            correlation_id,
                            detail,
                        });
                    }
                    self.backoff(&here, attempt, None, detail).await?;
                    continue;
                }
            };
            let status = resp.status();
            VendorRequest {
                endpoint,
                method: method.as_str(),
                status: Some(status.as_u16()),
                duration: started.elapsed(),
                attempt,
                correlation_id: Some(&cid),
                error: None,
            }
            .emit();
            if status.is_success() {
                let text = match body_text(resp, MAX_BODY).await {
                    Ok((t, false)) => t,
                    Ok((_, true)) => {
                        return Err(ApiError::Decode {
                            endpoint,
                            at: at.clone(),
                            correlation_id: Some(correlation_id),
                            detail: format!("the response body is over {MAX_BODY} bytes"),
                        });
                    }
                    // The connection broke mid-answer: for a job-creating POST the job may exist.
                    Err(e) if idempotency == Idempotency::CreatesJob => {
                        return Err(ApiError::OutcomeUnknown {
                            endpoint,
                            at,
                            correlation_id,
                            detail: error_chain(&e.without_url()),
                        });
                    }
                    Err(e) => {
                        self.backoff(&here, attempt, None, error_chain(&e.without_url()))
                            .await?;
                        continue;
                    }
                };
                if text.trim().is_empty() {
                    return Ok(Value::Null);
                }
                return serde_json::from_str(&text).map_err(|e| ApiError::Decode {
                    endpoint,
                    at: at.clone(),
                    correlation_id: Some(correlation_id),
                    detail: format!("response is not JSON: {e}"),
                });
            }
            let retry_after = retry_after(resp.headers());
            let body = body_text(resp, MAX_ERROR_BODY).await.unwrap_or_default();
            let detail = problem_detail(&body.0);
            match status {
                StatusCode::UNAUTHORIZED if !refreshed => {
                    // An expired or revoked token: the server rejected the request before acting.
                    refreshed = true;
                    attempt -= 1;
                    self.stats
                        .unauthorized_refreshes
                        .fetch_add(1, Ordering::Relaxed);
                    self.tokens.invalidate(&token).await;
                    continue;
                }
                StatusCode::TOO_MANY_REQUESTS => {
                    self.backoff(&here, attempt, retry_after, format!("HTTP 429: {detail}"))
                        .await?;
                }
                s if s.is_server_error() && idempotency == Idempotency::Safe => {
                    self.backoff(&here, attempt, retry_after, format!("HTTP {s}: {detail}"))
                        .await?;
                }
                s if s.is_server_error() => {
                    return Err(ApiError::OutcomeUnknown {
                        endpoint,
                        at,
                        correlation_id,
                        detail: format!("HTTP {s}: {detail}"),
                    });
                }
                s => {
                    return Err(ApiError::Http {
                        endpoint,
                        at,
                        status: s.as_u16(),
                        correlation_id,
                        detail,
                    });
                }
            }
        }
    }

    /// Waits before the next attempt, or gives up once `max_attempts` are spent.
    async fn backoff(
        &self,
        call: &Call<'_>,
        attempt: u32,
        retry_after: Option<Duration>,
        last: String,
    ) -> Result<(), ApiError> {
        let endpoint = call.endpoint;
        let exhausted = |last: String| ApiError::RetriesExhausted {
            endpoint,
            at: call.at.to_string(),
            correlation_id: Some(call.correlation_id),
            attempts: attempt,
            last,
        };
        let max = self.settings.max_retry_after;
        if let Some(wait) = retry_after.filter(|d| *d > max) {
            // Waiting that long inside a run would hold a job slot for it; asking again at once
            // would defy the server. The window waits for a later cycle.
            return Err(ApiError::Throttled {
                endpoint,
                at: call.at.to_string(),
                wait,
                max,
            });
        }
        if attempt >= self.settings.max_attempts {
            return Err(exhausted(last));
        }
        let wait = match retry_after {
            Some(d) => {
                let d = d.max(MIN_RETRY_AFTER);
                self.stats.retry_after_waits.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .retry_after_ms
                    .fetch_add(d.as_millis() as u64, Ordering::Relaxed);
                d
            }
            None => jittered(self.settings.retry_base, self.settings.retry_cap, attempt),
        };
        self.stats.retries.fetch_add(1, Ordering::Relaxed);
        Retrying {
            endpoint,
            attempt,
            wait,
            retry_after: retry_after.is_some(),
            reason: &last,
        }
        .emit();
        tokio::time::sleep(wait).await;
        Ok(())
    }
}

/// One call's identity, for its retries' messages.
pub(super) struct Call<'a> {
    endpoint: &'static str,
    at: &'a str,
    correlation_id: Uuid,
}

/// Whether a failed request may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Idempotency {
    /// Reads: resending changes nothing at the vendor.
    Safe,
    /// Creates a job: resend only when the server provably did not act.
    CreatesJob,
}

/// The largest answer read: an on-demand page of 1,000 rows is well under it, and a server
/// streaming more cannot make the client hold it.
const MAX_BODY: usize = 16 << 20;

/// What is read of an error's body: its title is in the first few hundred bytes.
pub(super) const MAX_ERROR_BODY: usize = 64 << 10;

/// A response body as text, read up to `limit` bytes; `true` when there was more (the rest is
/// left unread and the connection dropped).
pub(super) async fn body_text(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<(String, bool), reqwest::Error> {
    let mut bytes = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if bytes.len() + chunk.len() > limit {
            bytes.extend_from_slice(&chunk[..limit - bytes.len()]);
            return Ok((String::from_utf8_lossy(&bytes).into_owned(), true));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok((String::from_utf8_lossy(&bytes).into_owned(), false))
}

/// The shortest wait a `Retry-After` gets: a server saying 0, or a date already past, is not
/// asking to be hammered.
const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Full jitter: uniform in [0, min(cap, base * 2^(attempt-1))], so many clients spread out.
pub fn jittered(base: Duration, cap: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let ceiling = exp.min(cap);
    let ms = ceiling.as_millis().max(1) as u64;
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
}

/// `Retry-After` as a finite count of seconds or an HTTP date; `None` (the default backoff) for
/// anything else: `inf`, `NaN`, a negative or unparsable value. A date in the past is a wait of
/// nothing, which the caller raises to its minimum. Nothing here can panic, whatever the
/// header holds.
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<f64>() {
        // Past a day the exact figure no longer matters; the cap keeps the conversion finite.
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(MAX_SECONDS)));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or_default())
}

/// The most seconds a `Retry-After` is read as (a year): any more says the same, "not now".
const MAX_SECONDS: f64 = 365.0 * 86_400.0;

/// The useful part of an error body: an RFC 7807 title and errors, or the first 300 characters.
fn problem_detail(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        let title = v.get("title").and_then(Value::as_str);
        let errors = v.get("errors").map(|e| e.to_string());
        let detail = match (title, errors) {
            (Some(t), Some(e)) => Some(format!("{t} {e}")),
            (Some(t), None) => Some(t.to_string()),
            _ => None,
        };
        if let Some(d) = detail {
            return crate::model::cut_to(&d, 600).into_owned();
        }
    }
    let trimmed: String = body.trim().chars().take(300).collect();
    if trimmed.is_empty() {
        "(empty body)".into()
    } else {
        trimmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_bounds() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(1);
        for attempt in 1..20 {
            let d = jittered(base, cap, attempt);
            assert!(d <= cap, "{attempt}: {d:?}");
        }
        assert!(jittered(base, cap, 1) <= base);
    }

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        for hostile in ["inf", "NaN", "-1", "1e30x", "soon", "-inf"] {
            h.insert("retry-after", hostile.parse().unwrap());
            assert_eq!(retry_after(&h), None, "{hostile}");
        }
        for huge in ["1e30", "18446744073709551616", "1e308"] {
            h.insert("retry-after", huge.parse().unwrap());
            assert_eq!(
                retry_after(&h),
                Some(Duration::from_secs_f64(MAX_SECONDS)),
                "{huge}"
            );
        }
        h.insert(
            "retry-after",
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO), "a date in the past");
        let later = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        h.insert("retry-after", later.parse().unwrap());
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
    }

    #[test]
    fn problem_bodies() {
        assert_eq!(
            problem_detail(r#"{"title":"Bad token","errors":{"Foo":["unknown"]}}"#),
            r#"Bad token {"Foo":["unknown"]}"#
        );
        assert_eq!(problem_detail(""), "(empty body)");
    }
}
