//! The DPSS vendor client: tokens, batch jobs, discovery, on-demand and downloads.
//!
//! Retry policy follows what is safe, not what is convenient: reads (GET, on-demand) are retried
//! on 429, 5xx and network errors with jittered exponential backoff, honouring `Retry-After`.
//! A batch-request POST creates a job at the vendor, so it is retried only when the server
//! provably did not act on it (429, 401, a refused connection); anything else surfaces as
//! [`ApiError::OutcomeUnknown`] and the caller decides.

mod auth;
mod download;
pub mod model;
pub mod redact;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::{Method, StatusCode, header::HeaderMap};
use serde_json::{Value, json};
use url::Url;
use uuid::Uuid;

pub use auth::{Credentials, TokenProvider};
pub use model::{BatchJob, JobPhase, TokenSpec};

use crate::config::{FileType, Settings};
use crate::events::{InternalEvent, Retrying, VendorRequest};
use crate::model::OnDemandRow;

/// Longest `Retry-After` honoured; a server asking for more is treated as a failure.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Every error of a remote call names its step (`endpoint`), the host and path it called
/// (`at`: never a query string, which may carry a SAS signature) and the correlation id sent
/// with it when there is one, so an operator can tell a firewall from a vendor outage.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "token ({at}): the identity server refused the token request (HTTP {status}): {detail}"
    )]
    Auth {
        at: String,
        status: u16,
        detail: String,
    },
    #[error("{endpoint} ({at}): HTTP {status} (correlation id {correlation_id}): {detail}")]
    Http {
        endpoint: &'static str,
        at: String,
        status: u16,
        correlation_id: Uuid,
        detail: String,
    },
    #[error("{endpoint} ({at}{}): network error: {detail}", correlation(.correlation_id))]
    Network {
        endpoint: &'static str,
        at: String,
        correlation_id: Option<Uuid>,
        detail: String,
    },
    #[error(
        "{endpoint} ({at}): the request may have reached the server but its outcome is unknown \
         (correlation id {correlation_id}): {detail}; not retried, to avoid a duplicate job"
    )]
    OutcomeUnknown {
        endpoint: &'static str,
        at: String,
        correlation_id: Uuid,
        detail: String,
    },
    #[error("{endpoint} ({at}{}): unexpected response: {detail}", correlation(.correlation_id))]
    Decode {
        endpoint: &'static str,
        at: String,
        correlation_id: Option<Uuid>,
        detail: String,
    },
    #[error("{endpoint} ({at}{}): gave up after {attempts} attempts; last error: {last}", correlation(.correlation_id))]
    RetriesExhausted {
        endpoint: &'static str,
        at: String,
        correlation_id: Option<Uuid>,
        attempts: u32,
        last: String,
    },
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),
    #[error("download link {url} was refused (HTTP {status}); it has probably expired")]
    LinkRejected { url: String, status: u16 },
    #[error("download from {url} failed: {detail}")]
    Download { url: String, detail: String },
    #[error("download from {url} exceeds the {limit}-byte limit")]
    TooLarge { url: String, limit: u64 },
}

/// ", correlation id …" when a call carried one.
fn correlation(id: &Option<Uuid>) -> String {
    id.map(|c| format!(", correlation id {c}"))
        .unwrap_or_default()
}

/// Where a call went, for messages: scheme, host, port and path; no query, no credentials.
pub(crate) fn place(url: &Url) -> String {
    redact::redact_url(url.as_str())
}

impl ApiError {
    fn network(
        endpoint: &'static str,
        at: &str,
        correlation_id: Option<Uuid>,
        e: reqwest::Error,
    ) -> Self {
        ApiError::Network {
            endpoint,
            at: at.to_string(),
            correlation_id,
            detail: error_chain(&e.without_url()),
        }
    }
}

/// The error and its sources in one line; reqwest's own Display says only "error sending request".
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// One call's identity, for its retries' messages.
struct Call<'a> {
    endpoint: &'static str,
    at: &'a str,
    correlation_id: Uuid,
}

/// Whether a failed request may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Idempotency {
    /// Reads: resending changes nothing at the vendor.
    Safe,
    /// Creates a job: resend only when the server provably did not act.
    CreatesJob,
}

/// What the client did, for tests and metrics.
#[derive(Debug, Default)]
pub struct ClientStats {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub retry_after_waits: AtomicU64,
    pub retry_after_ms: AtomicU64,
    pub unauthorized_refreshes: AtomicU64,
    pub downloads: AtomicU64,
    pub bytes_downloaded: AtomicU64,
}

#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub base_url: Url,
    pub subscriber_id: String,
    pub request_timeout: Duration,
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_cap: Duration,
}

pub struct DpssClient {
    http: reqwest::Client,
    tokens: TokenProvider,
    settings: ClientSettings,
    pub stats: Arc<ClientStats>,
}

impl DpssClient {
    pub fn new(settings: ClientSettings, creds: Credentials) -> Result<Self, ApiError> {
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(Duration::from_secs(15))
            .user_agent(concat!("dpss-sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ApiError::Setup(error_chain(&e)))?;
        Ok(Self {
            tokens: TokenProvider::new(http.clone(), creds),
            http,
            settings,
            stats: Arc::default(),
        })
    }

    /// The client the configuration describes; fails on missing credentials.
    pub fn from_settings(s: &Settings) -> Result<Self, crate::config::ConfigError> {
        s.require_api()?;
        Self::new(
            ClientSettings {
                base_url: s.api.base_url.clone(),
                subscriber_id: s.api.subscriber_id.clone().unwrap_or_default(),
                request_timeout: s.api.request_timeout,
                max_attempts: s.api.max_attempts,
                retry_base: Duration::from_millis(500),
                retry_cap: Duration::from_secs(30),
            },
            Credentials {
                token_url: s.auth.token_url.clone(),
                client_id: s.auth.client_id.clone().unwrap_or_default(),
                client_secret: s
                    .auth
                    .client_secret
                    .clone()
                    .expect("checked by require_api"),
                scope: s.auth.scope.clone(),
            },
        )
        .map_err(|e| crate::config::ConfigError::Source(e.to_string()))
    }

    pub fn tokens_fetched(&self) -> u64 {
        self.tokens.tokens_fetched()
    }

    /// `base_url` is the host (as in DESIGN.md), or already ends in `/dpss/api/v1`.
    fn url(&self, path: &str) -> Url {
        let mut url = self.settings.base_url.clone();
        let base = url.path().trim_end_matches('/');
        let base = base
            .strip_suffix("/dpss/api/v1")
            .unwrap_or(base)
            .to_string();
        url.set_path(&format!("{base}/dpss/api/v1/{path}"));
        url
    }

    /// Creates an asynchronous export job. Token names are sent verbatim, unused ones omitted.
    pub async fn create_batch(
        &self,
        subscription_id: &str,
        file_type: FileType,
        tokens: &BTreeMap<String, String>,
    ) -> Result<BatchJob, ApiError> {
        let body = json!({
            "filetype": file_type.as_str(),
            "tokens": tokens,
            "isOhsRequest": false,
        });
        let url = self.url(&format!("subscriptions/{subscription_id}/batch-request"));
        let at = place(&url);
        let v = self
            .call(
                "batch-request",
                Method::POST,
                url,
                Some(body),
                Idempotency::CreatesJob,
            )
            .await?;
        BatchJob::from_json(&v).map_err(|detail| ApiError::Decode {
            endpoint: "batch-request",
            at,
            correlation_id: None,
            detail,
        })
    }

    pub async fn job_status(
        &self,
        subscription_id: &str,
        job_id: &str,
    ) -> Result<BatchJob, ApiError> {
        let url = self.url(&format!(
            "subscriptions/{subscription_id}/batch-request/{job_id}"
        ));
        let at = place(&url);
        let v = self
            .call("job-status", Method::GET, url, None, Idempotency::Safe)
            .await?;
        BatchJob::from_json(&v).map_err(|detail| ApiError::Decode {
            endpoint: "job-status",
            at,
            correlation_id: None,
            detail,
        })
    }

    pub async fn parameters(&self, subscription_id: &str) -> Result<Vec<TokenSpec>, ApiError> {
        let url = self.url(&format!(
            "subscriptions/{subscription_id}/batch-request-parameters"
        ));
        let at = place(&url);
        let v = self
            .call(
                "batch-request-parameters",
                Method::GET,
                url,
                None,
                Idempotency::Safe,
            )
            .await?;
        TokenSpec::parse_list(&v).map_err(|detail| ApiError::Decode {
            endpoint: "batch-request-parameters",
            at,
            correlation_id: None,
            detail,
        })
    }

    /// The synchronous endpoint: a flat token map in, an array of rows out (at most 1,000).
    pub async fn on_demand(
        &self,
        subscription_id: &str,
        tokens: &BTreeMap<String, String>,
    ) -> Result<Vec<OnDemandRow>, ApiError> {
        let url = self.url(&format!("subscriptions/{subscription_id}/on-demand"));
        let at = place(&url);
        let body = serde_json::to_value(tokens).expect("a string map is JSON");
        let v = self
            .call(
                "on-demand",
                Method::POST,
                url,
                Some(body),
                Idempotency::Safe,
            )
            .await?;
        let rows = match &v {
            Value::Array(a) => a,
            Value::Null => return Ok(Vec::new()),
            _ => {
                return Err(ApiError::Decode {
                    endpoint: "on-demand",
                    at,
                    correlation_id: None,
                    detail: "expected a JSON array of rows".into(),
                });
            }
        };
        rows.iter()
            .map(model::row_from_json)
            .collect::<Result<_, _>>()
            .map_err(|detail| ApiError::Decode {
                endpoint: "on-demand",
                at,
                correlation_id: None,
                detail,
            })
    }

    async fn call(
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
