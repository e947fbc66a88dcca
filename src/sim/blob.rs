//! The blob host the export links point to: SAS-style signed, expiring links, shaped like the
//! vendor's Azure Blob links, with the faults a download must survive.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::StreamExt;

use super::faults::fires;
use super::{Build, Shared, SimState};
use std::collections::BTreeMap;

/// A SAS-style link on the simulator's own host, shaped like the vendor's Azure Blob links.
pub(super) fn download_link(s: &SimState, job_id: &str) -> String {
    let n = {
        let mut c = s.counters.lock().expect("counters");
        c.links += 1;
        c.links
    };
    let now = Utc::now();
    let expiry = if fires(s.cfg.faults.expired_links, n) {
        now - chrono::Duration::hours(1)
    } else {
        now + chrono::Duration::from_std(s.cfg.link_ttl).unwrap_or_default()
    };
    let upper = job_id.to_ascii_uppercase();
    let fmt = |t: DateTime<Utc>| t.format("%Y-%m-%dT%H%%3A%M%%3A%SZ").to_string();
    format!(
        "http://{}/raw/{upper}/{upper}.zip?sv=2018-03-28&sr=b&sig={}&st={}&se={}&sp=r",
        s.addr.lock().expect("addr").expect("bound"),
        s.sign(&upper, expiry.timestamp()),
        fmt(now - chrono::Duration::minutes(5)),
        fmt(expiry),
    )
}

pub(super) fn blob_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "application/xml"),
            (header::HeaderName::from_static("x-ms-error-code"), code),
        ],
        body,
    )
        .into_response()
}

pub(super) async fn download(
    State(s): Shared,
    Path((job, file)): Path<(String, String)>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let resp = download_inner(&s, &job, &file, &q, &headers).await;
    s.record(
        "download",
        resp.status(),
        &headers,
        Some(job.to_ascii_lowercase()),
    );
    resp
}

pub(super) async fn download_inner(
    s: &SimState,
    job: &str,
    file: &str,
    q: &BTreeMap<String, String>,
    headers: &HeaderMap,
) -> Response {
    if headers.contains_key(header::AUTHORIZATION) {
        // A SAS request must not carry an Authorization header; Azure refuses the mix.
        return blob_error(
            StatusCode::FORBIDDEN,
            "AuthenticationFailed",
            "Server failed to authenticate the request. An Authorization header is not allowed with a SAS.",
        );
    }
    let expiry = q
        .get("se")
        .and_then(|se| DateTime::parse_from_rfc3339(se).ok())
        .map(|t| t.timestamp());
    let signed = match (expiry, q.get("sig")) {
        (Some(e), Some(sig)) => *sig == s.sign(job, e),
        _ => false,
    };
    if !signed || file != format!("{job}.zip") {
        return blob_error(
            StatusCode::FORBIDDEN,
            "AuthenticationFailed",
            "Signature did not match.",
        );
    }
    if expiry.is_some_and(|e| e < Utc::now().timestamp()) {
        return blob_error(
            StatusCode::FORBIDDEN,
            "AuthenticationFailed",
            "Signed expiry time has expired.",
        );
    }
    let path = {
        let jobs = s.jobs.lock().expect("jobs");
        let Some(j) = jobs.get(&job.to_ascii_lowercase()) else {
            return blob_error(
                StatusCode::NOT_FOUND,
                "BlobNotFound",
                "The specified blob does not exist.",
            );
        };
        match &*j.build.lock().expect("build") {
            Build::Ready(path) => path.clone(),
            _ => {
                return blob_error(
                    StatusCode::NOT_FOUND,
                    "BlobNotFound",
                    "The specified blob does not exist.",
                );
            }
        }
    };
    let n = {
        let mut c = s.counters.lock().expect("counters");
        c.downloads += 1;
        c.downloads
    };
    let Ok(f) = tokio::fs::File::open(&path).await else {
        return blob_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "blob unreadable",
        );
    };
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024);
    let body = if fires(s.cfg.faults.corrupt_zips, n) {
        // As many bytes as promised, none of them a zip.
        Body::from(vec![b'x'; len as usize])
    } else if fires(s.cfg.faults.truncated_downloads, n) {
        // Half the promised bytes, then a broken connection.
        let mut left = len / 2;
        let s = stream
            .map(move |chunk| {
                chunk.map(|mut c| {
                    c.truncate(left.min(c.len() as u64) as usize);
                    left -= c.len() as u64;
                    c
                })
            })
            .take_while(|c| {
                futures::future::ready(c.as_ref().map(|c| !c.is_empty()).unwrap_or(true))
            })
            .chain(futures::stream::once(async {
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "simulated cut",
                ))
            }));
        Body::from_stream(s)
    } else if s.cfg.faults.huge_downloads {
        // The real bytes, then a body that never ends (and never closes the connection, which
        // could discard the headers before the client reads them): only a client that judges
        // the announced length and hangs up finishes.
        Body::from_stream(stream.chain(futures::stream::pending()))
    } else {
        Body::from_stream(stream)
    };
    let announced = if s.cfg.faults.huge_downloads {
        100u64 << 40
    } else {
        len
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-zip-compressed")
        .header(header::CONTENT_LENGTH, announced)
        .header("x-ms-blob-type", "BlockBlob")
        .header("x-ms-version", "2018-03-28")
        .body(body)
        .expect("valid response")
}
