//! The DPSS vendor client: tokens, batch jobs, discovery, on-demand and downloads.
//!
//! Retry policy follows what is safe, not what is convenient: reads (GET, on-demand) are retried
//! on 429, 5xx and network errors with jittered exponential backoff, honouring `Retry-After`.
//! A batch-request POST creates a job at the vendor, so it is retried only when the server
//! provably did not act on it (429, 401, a refused connection); anything else surfaces as
//! [`ApiError::OutcomeUnknown`] and the caller decides.

mod auth;
mod call;
mod download;
pub mod model;
pub mod redact;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use url::Url;
use uuid::Uuid;

pub use auth::{Credentials, TokenProvider};
use call::Idempotency;
pub use call::jittered;
pub use model::{BatchJob, JobPhase, TokenSpec};

use crate::config::{FileType, Settings};
use crate::model::OnDemandRow;

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
    #[error("{endpoint} ({at}{}): gave up after {attempts} attempts (api.max_attempts); last error: {last}", correlation(.correlation_id))]
    RetriesExhausted {
        endpoint: &'static str,
        at: String,
        correlation_id: Option<Uuid>,
        attempts: u32,
        last: String,
    },
    #[error(
        "{endpoint} ({at}): the server asked to wait {} (Retry-After), longer than \
         api.max_retry_after ({}); not retried now: the window waits for a later cycle",
        humantime::format_duration(*.wait), humantime::format_duration(*.max)
    )]
    Throttled {
        endpoint: &'static str,
        at: String,
        wait: Duration,
        max: Duration,
    },
    #[error(
        "token ({at}): the identity server is throttling or unavailable (HTTP {status}): {detail}"
    )]
    TokenUnavailable {
        at: String,
        status: u16,
        detail: String,
        retry_after: Option<Duration>,
    },
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),
    #[error(transparent)]
    Secret(#[from] crate::config::SecretFileError),
    #[error(transparent)]
    Disk(#[from] crate::disk::DiskError),
    #[error("download link {url} was refused (HTTP {status}); it has probably expired")]
    LinkRejected { url: String, status: u16 },
    #[error("download from {url} failed: {detail}")]
    Download { url: String, detail: String },
    #[error("download from {url} exceeds lake.max_uncompressed_size ({limit} bytes)")]
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
    /// `api.max_retry_after`: the longest `Retry-After` waited out; longer ones defer.
    pub max_retry_after: Duration,
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
        if let Some(warning) = s.auth.client_secret.as_ref().and_then(|c| c.exposure()) {
            tracing::warn!("{warning}");
        }
        Self::new(
            ClientSettings {
                base_url: s.api.base_url.clone(),
                subscriber_id: s.api.subscriber_id.clone().unwrap_or_default(),
                request_timeout: s.api.request_timeout,
                max_attempts: s.api.max_attempts,
                retry_base: Duration::from_millis(500),
                retry_cap: Duration::from_secs(30),
                max_retry_after: s.api.max_retry_after,
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
}
