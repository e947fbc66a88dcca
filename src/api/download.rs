//! Streaming a job's zip to disk.
//!
//! The link is a pre-signed blob URL: it is fetched with a separate plain request that never
//! carries the Itron bearer token (Azure rejects a SAS request with an Authorization header).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::redact::redact_url;
use super::{ApiError, DpssClient, error_chain, jittered};
use crate::events::{Downloaded, InternalEvent, Retrying, VendorRequest};

impl DpssClient {
    /// Streams `url` into `dest` (via `dest.part`, renamed when complete) and returns the size.
    /// Transient failures (network, 5xx, a truncated body) are retried; a 403/404 means the link
    /// itself is dead and comes back as [`ApiError::LinkRejected`] for the caller to re-poll.
    pub async fn download(&self, url: &str, dest: &Path, max_bytes: u64) -> Result<u64, ApiError> {
        let shown = redact_url(url);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.download_once(url, &shown, dest, max_bytes).await {
                Ok(n) => return Ok(n),
                Err(
                    e @ (ApiError::LinkRejected { .. }
                    | ApiError::TooLarge { .. }
                    | ApiError::Disk(_)),
                ) => {
                    return Err(e);
                }
                Err(e) if attempt >= self.settings.max_attempts => return Err(e),
                Err(e) => {
                    let wait = jittered(self.settings.retry_base, self.settings.retry_cap, attempt);
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    Retrying {
                        endpoint: "download",
                        attempt,
                        wait,
                        retry_after: false,
                        reason: &e.to_string(),
                    }
                    .emit();
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn download_once(
        &self,
        url: &str,
        shown: &str,
        dest: &Path,
        max_bytes: u64,
    ) -> Result<u64, ApiError> {
        let fail = |detail: String| ApiError::Download {
            url: shown.to_string(),
            detail,
        };
        let started = Instant::now();
        self.stats.downloads.fetch_add(1, Ordering::Relaxed);
        // A plain request: no bearer, no Itron headers.
        let resp = self
            .http
            .get(url)
            .timeout(std::time::Duration::from_secs(24 * 3600))
            .send()
            .await
            .map_err(|e| fail(error_chain(&e.without_url())))?;
        let status = resp.status();
        VendorRequest {
            endpoint: "download",
            method: "GET",
            status: Some(status.as_u16()),
            duration: started.elapsed(),
            attempt: 1,
            correlation_id: None,
            error: None,
        }
        .emit();
        if status == reqwest::StatusCode::FORBIDDEN || status == reqwest::StatusCode::NOT_FOUND {
            return Err(ApiError::LinkRejected {
                url: shown.to_string(),
                status: status.as_u16(),
            });
        }
        if !status.is_success() {
            return Err(fail(format!("HTTP {status}")));
        }
        let expected = resp.content_length();
        // Room first: a volume that cannot take the download is what the operator must fix.
        let dir = dest.parent().unwrap_or(Path::new("."));
        if let Some(n) = expected {
            crate::disk::ensure_room(dir, n, &format!("the {n}-byte download"))?;
        }
        if expected.is_some_and(|n| n > max_bytes) {
            return Err(ApiError::TooLarge {
                url: shown.to_string(),
                limit: max_bytes,
            });
        }
        // The announced size may be absent, or wrong: the free space is looked at as it streams.
        let mut reserve = crate::disk::Reserve::new(dir, format!("the download from {shown}"))?;
        crate::progress::download_started(expected);
        let part = dest.with_extension("part");
        // Owner-only: an export is the utility's data, and the work directory may be shared.
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&part)
            .await
            .map_err(|e| fail(format!("cannot create {}: {e}", part.display())))?;
        let streamed = async {
            let mut written = 0u64;
            let mut body = resp.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| {
                    fail(format!(
                        "connection broke after {written} bytes: {}",
                        error_chain(&e.without_url())
                    ))
                })?;
                written += chunk.len() as u64;
                crate::progress::downloaded(chunk.len() as u64);
                if written > max_bytes {
                    return Err(ApiError::TooLarge {
                        url: shown.to_string(),
                        limit: max_bytes,
                    });
                }
                reserve.wrote(chunk.len() as u64)?;
                file.write_all(&chunk)
                    .await
                    .map_err(|e| fail(format!("cannot write {}: {e}", part.display())))?;
            }
            if let Some(n) = expected
                && n != written
            {
                return Err(fail(format!("truncated: got {written} of {n} bytes")));
            }
            file.sync_all()
                .await
                .map_err(|e| fail(format!("cannot flush {}: {e}", part.display())))?;
            Ok(written)
        }
        .await;
        drop(file);
        // A failed download leaves nothing behind: a partial file holds space and no rows.
        let written = match streamed {
            Ok(n) => n,
            Err(e) => {
                let _ = tokio::fs::remove_file(&part).await;
                return Err(e);
            }
        };
        if let Err(e) = tokio::fs::rename(&part, dest).await {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(fail(format!("cannot rename {}: {e}", part.display())));
        }
        self.stats
            .bytes_downloaded
            .fetch_add(written, Ordering::Relaxed);
        Downloaded {
            url: shown,
            bytes: written,
            duration: started.elapsed(),
        }
        .emit();
        Ok(written)
    }
}
