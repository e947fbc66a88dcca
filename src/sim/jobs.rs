//! The batch-request endpoints: parameter discovery, job creation and job status. A job builds
//! its export in the background and reports `Success` with a download link when it is ready.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use uuid::Uuid;

use super::auth::gated;
use super::blob::download_link;
use super::export::Layout;
use super::faults::fires;
use super::served::lookup;
use super::{Build, Job, Shared, SimState, data, export, problem};
use crate::config::FileType;

pub(super) async fn parameters(
    State(s): Shared,
    Path(sub): Path<String>,
    headers: HeaderMap,
) -> Response {
    gated(
        &s,
        &headers,
        &sub,
        "batch-request-parameters",
        |_| None,
        || {
            let Some(product) = s.served(&sub) else {
                return problem(StatusCode::NOT_FOUND, "Unknown subscription.", json!({}));
            };
            let tokens: Vec<Value> = product
                .discovery()
                .iter()
                .map(|(name, kind, list)| {
                    json!({"name": name, "type": kind, "isList": list,
                       "default": "__REMOVEIFNOTSUPPLIED__", "description": null})
                })
                .collect();
            axum::Json(json!({ "tokens": tokens })).into_response()
        },
    )
}

pub(super) async fn create_job(
    State(s): Shared,
    Path(sub): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let created = |r: &Response| r.status().is_success().then(|| "created".to_string());
    gated(&s, &headers, &sub, "batch-request", created, || {
        create_job_inner(&s, &sub, &body)
    })
}

pub(super) fn create_job_inner(s: &Arc<SimState>, sub: &str, body: &str) -> Response {
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
    let Some(file_type) = lookup(&obj, "filetype")
        .and_then(Value::as_str)
        .and_then(FileType::parse)
    else {
        return problem(
            StatusCode::BAD_REQUEST,
            "One or more validation errors occurred.",
            json!({"filetype": ["required: one of Parquet, Orc, Json, Csv"]}),
        );
    };
    let tokens = match lookup(&obj, "tokens") {
        Some(Value::Object(t)) => t.clone(),
        _ => {
            return problem(
                StatusCode::BAD_REQUEST,
                "One or more validation errors occurred.",
                json!({"tokens": ["required: an object of token names to values"]}),
            );
        }
    };
    let query = match product.query(&tokens) {
        Ok(q) => q,
        Err(r) => return *r,
    };
    if s.cfg.faults.no_history && query.day().is_none() {
        let mut errors = serde_json::Map::new();
        errors.insert(product.day_token().to_string(), json!(["required"]));
        return problem(
            StatusCode::BAD_REQUEST,
            "One or more validation errors occurred.",
            Value::Object(errors),
        );
    }
    let seq = {
        let mut c = s.counters.lock().expect("counters");
        c.jobs += 1;
        c.jobs
    };
    let id = Uuid::new_v4().to_string();
    let build = Arc::new(Mutex::new(Build::Running));
    let job = Job {
        id: id.clone(),
        file_type,
        tokens: Value::Object(tokens),
        created: Instant::now(),
        delay: s.cfg.faults.slow_jobs.unwrap_or(s.cfg.job_delay),
        fails: s.cfg.faults.failed_jobs.is_some_and(|n| (seq - 1) % n == 0)
            || (s.cfg.faults.failing_day.is_some() && s.cfg.faults.failing_day == query.day()),
        lost: s.cfg.faults.lost_jobs.is_some_and(|n| (seq - 1) % n == 0),
        build: build.clone(),
    };
    let response = job_json(&job, "New", None);
    s.jobs.lock().expect("jobs").insert(id.clone(), job);
    // The result is frozen now: what exists at creation is what the zip holds.
    let state = s.clone();
    let as_of = s.now();
    tokio::task::spawn_blocking(move || {
        let h = data::mix(id.bytes().fold(0u64, |a, b| a.rotate_left(5) ^ b as u64));
        let layout = Layout {
            parts: 1 + (h % state.cfg.max_parts.max(1) as u64) as usize,
            variant: h >> 8,
            packaging: *state.packaging.lock().expect("packaging"),
            markers_when_empty: state.cfg.faults.markers_when_empty,
        };
        let path = state
            .work
            .path()
            .join(format!("{}.zip", id.to_ascii_uppercase()));
        let today = as_of.date_naive();
        let result = export::write_zip(&path, &id, file_type, layout, product.columns(), |emit| {
            query.rows(&state, today, as_of, emit)
        });
        *build.lock().expect("build") = match result {
            Ok(rows) => {
                tracing::info!(job_id = %id, rows, ?file_type, "simulator export built");
                Build::Ready(path)
            }
            Err(e) => Build::Broken(e.to_string()),
        };
    });
    if fires(s.cfg.faults.lost_responses, seq) {
        // The job exists now; the answer that names it never arrives whole.
        let broken = futures::stream::once(async {
            Err::<bytes::Bytes, _>(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "simulated reset after the job was created",
            ))
        });
        return Response::new(Body::from_stream(broken));
    }
    (StatusCode::ACCEPTED, axum::Json(response)).into_response()
}

pub(super) fn job_json(job: &Job, status: &str, url: Option<String>) -> Value {
    json!({
        "jobId": job.id,
        "status": status,
        "downloadUrl": url,
        "fileFormat": job.file_type.as_str(),
        "tokens": job.tokens,
        "isOhsRequest": false,
    })
}

pub(super) async fn job_status(
    State(s): Shared,
    Path((sub, job_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let named = Some(job_id.clone());
    gated(
        &s,
        &headers,
        &sub,
        "job-status",
        |_| named,
        || job_status_inner(&s, &job_id),
    )
}

pub(super) fn job_status_inner(s: &SimState, job_id: &str) -> Response {
    let jobs = s.jobs.lock().expect("jobs");
    let Some(job) = jobs.get(&job_id.to_ascii_lowercase()).filter(|j| !j.lost) else {
        return problem(
            StatusCode::NOT_FOUND,
            "Job not found.",
            json!({"jobId": [job_id]}),
        );
    };
    let elapsed = job.created.elapsed();
    let build = job.build.lock().expect("build");
    let (status, url) = if elapsed < job.delay / 2 {
        ("New", None)
    } else if elapsed < job.delay || matches!(*build, Build::Running) {
        ("InProgress", None)
    } else if job.fails || matches!(*build, Build::Broken(_)) {
        ("Failed", None)
    } else {
        ("Success", Some(download_link(s, &job.id)))
    };
    let mut body = job_json(job, status, url);
    if status == "Failed" {
        body["message"] = match &*build {
            Build::Broken(e) => json!(format!("export failed: {e}")),
            _ => json!("the export job failed (simulated fault)"),
        };
    }
    axum::Json(body).into_response()
}
