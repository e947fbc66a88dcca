//! OAuth2 client-credentials tokens from Itron Identity, cached and refreshed before expiry.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Mutex;
use url::Url;

use super::ApiError;
use crate::config::{Secret, SecretSource};
use crate::events::{InternalEvent, VendorRequest};

/// Refresh this long before the token's stated expiry, so a request never leaves with a token
/// that dies in flight (the docs give 3600 s lifetimes).
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Credentials {
    pub token_url: Url,
    pub client_id: String,
    pub client_secret: SecretSource,
    pub scope: String,
}

struct Cached {
    token: Secret,
    refresh_at: Instant,
}

pub struct TokenProvider {
    http: reqwest::Client,
    creds: Credentials,
    cached: Mutex<Option<Cached>>,
    issued: std::sync::atomic::AtomicU64,
}

impl TokenProvider {
    pub fn new(http: reqwest::Client, creds: Credentials) -> Self {
        Self {
            http,
            creds,
            cached: Mutex::new(None),
            issued: Default::default(),
        }
    }

    /// How many tokens this provider fetched; tests use it to prove refresh behaviour.
    pub fn tokens_fetched(&self) -> u64 {
        self.issued.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The current token, fetching a new one when none is cached or it is about to expire.
    pub async fn token(&self) -> Result<Secret, ApiError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && Instant::now() < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        let fresh = self.fetch().await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    /// Drops `rejected` so that the next `token()` fetches anew; a token another task already
    /// replaced is left alone, so concurrent 401s cause one refresh, not several.
    pub async fn invalidate(&self, rejected: &Secret) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|c| &c.token == rejected) {
            *cached = None;
        }
    }

    async fn fetch(&self) -> Result<Cached, ApiError> {
        let started = Instant::now();
        let at = super::place(&self.creds.token_url);
        // Read at every fetch: a mounted secret rotated in place is picked up at the next refresh.
        let secret = self.creds.client_secret.read()?;
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.creds.client_id.as_str()),
            ("client_secret", secret.expose()),
            ("scope", self.creds.scope.as_str()),
        ];
        let resp = self
            .http
            .post(self.creds.token_url.clone())
            .form(&form)
            .send()
            .await
            .map_err(|e| ApiError::network("token", &at, None, e))?;
        let status = resp.status();
        let retry_after = super::call::retry_after(resp.headers());
        let (body, _) = super::call::body_text(resp, super::call::MAX_ERROR_BODY)
            .await
            .map_err(|e| ApiError::network("token", &at, None, e))?;
        VendorRequest {
            endpoint: "token",
            method: "POST",
            status: Some(status.as_u16()),
            duration: started.elapsed(),
            attempt: 1,
            correlation_id: None,
            error: None,
        }
        .emit();
        // Throttling and outages say nothing about the credentials: retried, never reported as
        // a refusal.
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(ApiError::TokenUnavailable {
                at,
                status: status.as_u16(),
                detail: oauth_error(&body).unwrap_or_else(|| "(no OAuth error in the body)".into()),
                retry_after,
            });
        }
        if !status.is_success() {
            return Err(ApiError::Auth {
                at,
                status: status.as_u16(),
                detail: oauth_error(&body)
                    .unwrap_or_else(|| "the identity server refused the client credentials".into()),
            });
        }
        let json: Value = serde_json::from_str(&body).map_err(|e| ApiError::Decode {
            endpoint: "token",
            at: at.clone(),
            correlation_id: None,
            detail: format!("token response is not JSON: {e}"),
        })?;
        // The scope echoed back is not checked: the docs send DPSSSubscriberApi and show DPSSApi.
        let token = json
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::Decode {
                endpoint: "token",
                at: at.clone(),
                correlation_id: None,
                detail: "token response has no access_token".into(),
            })?;
        let expires_in = json
            .get("expires_in")
            .and_then(|v| {
                v.as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            })
            .unwrap_or(3600);
        let lifetime = Duration::from_secs(expires_in);
        // Short-lived tokens (tests, odd servers) refresh at 90% of their life instead.
        let refresh_in = lifetime
            .checked_sub(REFRESH_MARGIN)
            .filter(|d| *d >= lifetime / 2)
            .unwrap_or(lifetime.mul_f64(0.9));
        self.issued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Cached {
            token: Secret::new(token),
            refresh_at: Instant::now() + refresh_in,
        })
    }
}

/// The OAuth error code and description, never the raw body (which might echo what was sent),
/// cut to a line's length.
fn oauth_error(body: &str) -> Option<String> {
    let v = serde_json::from_str::<Value>(body).ok()?;
    let err = v.get("error")?.as_str()?;
    let text = match v.get("error_description").and_then(Value::as_str) {
        Some(d) => format!("{err}: {d}"),
        None => err.to_string(),
    };
    Some(crate::model::cut_to(&text, 300).into_owned())
}
