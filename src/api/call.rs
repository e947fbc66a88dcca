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
            let token = self.tokens.token().await?;
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
                let text = match resp.text().await {
                    Ok(t) => t,
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
            let detail = problem_detail(&resp.text().await.unwrap_or_default());
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
        if attempt >= self.settings.max_attempts {
            return Err(exhausted(last));
        }
        let wait = match retry_after {
            Some(d) if d > MAX_RETRY_AFTER => {
                return Err(exhausted(format!(
                    "{last}; server asked to wait {}s",
                    d.as_secs()
                )));
            }
            Some(d) => {
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

/// Longest `Retry-After` honoured; a server asking for more is treated as a failure.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Full jitter: uniform in [0, min(cap, base * 2^(attempt-1))], so many clients spread out.
pub fn jittered(base: Duration, cap: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let ceiling = exp.min(cap);
    let ms = ceiling.as_millis().max(1) as u64;
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
}

/// `Retry-After` as delta-seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<f64>() {
        return Some(Duration::from_secs_f64(secs.max(0.0)));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or_default())
}

/// The useful part of an error body: an RFC 7807 title and errors, or the first 300 characters.
fn problem_detail(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        let title = v.get("title").and_then(Value::as_str);
        let errors = v.get("errors").map(|e| e.to_string());
        match (title, errors) {
            (Some(t), Some(e)) => return format!("{t} {e}"),
            (Some(t), None) => return t.to_string(),
            _ => {}
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
