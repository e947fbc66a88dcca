//! The built-in DPSS simulator: the identity token endpoint and the DPSS v1 data-product API
//! (discovery, batch-request create / status, on-demand), plus a SAS-style blob host for the
//! export zips. It follows `dpss-api.md`, including the parts the vendor only implies, and can
//! inject every fault the client must survive. Tests run it in-process; `dpss-sync simulate`
//! serves it for curl or any other client.

pub mod data;
pub mod export;
pub mod faults;

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, NaiveDate, Utc};
use futures::StreamExt;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::config::FileType;
use data::{Dataset, SimRow};
use export::{Filter, Layout};
pub use faults::Faults;
use faults::fires;

/// Rows of the previous day a `stray-rows` export adds.
pub const STRAY_ROWS: usize = 3;

/// The on-demand endpoint's documented cap.
pub const ON_DEMAND_MAX_ROWS: usize = 1000;

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub rows_per_day: u64,
    pub client_id: String,
    pub client_secret: String,
    pub subscriber_id: String,
    pub subscription_id: String,
    pub job_delay: Duration,
    pub token_ttl: Duration,
    pub link_ttl: Duration,
    pub max_parts: usize,
    pub faults: Faults,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            rows_per_day: 300,
            client_id: "dpss-sim-client".into(),
            client_secret: "dpss-sim-secret".into(),
            subscriber_id: "00000000-0000-4000-8000-00000000beef".into(),
            subscription_id: "00000000-0000-4000-8000-00000000cafe".into(),
            job_delay: Duration::from_secs(2),
            token_ttl: Duration::from_secs(3600),
            link_ttl: Duration::from_secs(3600),
            max_parts: 3,
            faults: Faults::default(),
        }
    }
}

/// One request as the simulator saw it; tests assert on these.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub endpoint: &'static str,
    pub status: u16,
    pub had_authorization: bool,
    pub correlation_id: Option<String>,
    pub job_id: Option<String>,
}

enum Build {
    Running,
    Ready(PathBuf),
    Broken(String),
}

struct Job {
    id: String,
    file_type: FileType,
    tokens: Value,
    created: Instant,
    delay: Duration,
    fails: bool,
    lost: bool,
    build: Arc<Mutex<Build>>,
}

#[derive(Default)]
struct Tokens {
    live: HashMap<String, (Instant, u64)>,
}

#[derive(Default)]
struct Counters {
    dpss_requests: u64,
    jobs: u64,
    links: u64,
    downloads: u64,
    tokens_issued: u64,
}

pub struct SimState {
    cfg: SimConfig,
    dataset: Dataset,
    work: tempfile::TempDir,
    signer: std::hash::RandomState,
    tokens: Mutex<Tokens>,
    jobs: Mutex<HashMap<String, Job>>,
    counters: Mutex<Counters>,
    log: Mutex<Vec<RequestRecord>>,
    extra: Mutex<Vec<SimRow>>,
    packaging: Mutex<export::Packaging>,
    addr: Mutex<Option<SocketAddr>>,
}

/// A running simulator; dropping it does not stop the server, `shutdown` does.
pub struct SimHandle {
    pub addr: SocketAddr,
    pub state: Arc<SimState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl SimHandle {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/connect/token", self.addr)
    }

    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl SimState {
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.log.lock().expect("log lock").clone()
    }

    pub fn jobs_created(&self) -> u64 {
        self.counters.lock().expect("counters").jobs
    }

    /// Every access token handed out, for tests that prove none was logged or stored.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.tokens
            .lock()
            .expect("tokens")
            .live
            .keys()
            .cloned()
            .collect()
    }

    pub fn tokens_issued(&self) -> u64 {
        self.counters.lock().expect("counters").tokens_issued
    }

    /// How exports created from now on pack their parts.
    pub fn set_packaging(&self, packaging: export::Packaging) {
        *self.packaging.lock().expect("packaging") = packaging;
    }

    /// Adds a row that exports created from now on will serve: a late status update.
    pub fn inject_row(&self, row: SimRow) {
        self.extra.lock().expect("extra").push(row);
    }

    /// Every row an unfiltered export created at `as_of` would serve for `day`, in order.
    pub fn rows_for_day(&self, day: NaiveDate, as_of: DateTime<Utc>) -> Vec<SimRow> {
        let mut out = Vec::new();
        let filter = Filter {
            day: Some(day),
            ..Default::default()
        };
        let extra = self.extra.lock().expect("extra").clone();
        filter.for_each_row(&self.dataset, Utc::now().date_naive(), as_of, &extra, |r| {
            out.push(r);
            true
        });
        out
    }

    fn record(
        &self,
        endpoint: &'static str,
        status: StatusCode,
        headers: &HeaderMap,
        job_id: Option<String>,
    ) {
        self.log.lock().expect("log lock").push(RequestRecord {
            endpoint,
            status: status.as_u16(),
            had_authorization: headers.contains_key(header::AUTHORIZATION),
            correlation_id: headers
                .get("itron-correlationid")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            job_id,
        });
    }

    fn sign(&self, job_id: &str, expiry: i64) -> String {
        format!("{:016x}", self.signer.hash_one((job_id, expiry)))
    }
}

pub async fn spawn(cfg: SimConfig, listen: SocketAddr) -> std::io::Result<SimHandle> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(SimState {
        dataset: Dataset::new(cfg.seed, cfg.rows_per_day),
        packaging: Mutex::new(cfg.faults.packaging),
        cfg,
        work: tempfile::tempdir()?,
        signer: std::hash::RandomState::new(),
        tokens: Default::default(),
        jobs: Default::default(),
        counters: Default::default(),
        log: Default::default(),
        extra: Default::default(),
        addr: Mutex::new(Some(addr)),
    });
    let api = "/dpss/api/v1/subscriptions/{sub}";
    let app = Router::new()
        .route("/connect/token", post(token))
        .route("/connect/token/", post(token))
        .route(&format!("{api}/batch-request-parameters"), get(parameters))
        .route(&format!("{api}/batch-request"), post(create_job))
        .route(&format!("{api}/batch-request/{{job}}"), get(job_status))
        .route(&format!("{api}/on-demand"), post(on_demand))
        .route("/raw/{job}/{file}", get(download))
        .with_state(state.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
    });
    Ok(SimHandle {
        addr,
        state,
        stop: Some(stop),
        task,
    })
}

type Shared = State<Arc<SimState>>;

fn problem(status: StatusCode, title: &str, errors: Value) -> Response {
    let body = json!({
        "type": "https://tools.ietf.org/html/rfc7231#section-6.5.1",
        "title": title,
        "status": status.as_u16(),
        "errors": errors,
        "traceId": Uuid::new_v4().to_string(),
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

fn oauth_error(code: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({ "error": code })),
    )
        .into_response()
}

async fn token(
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
    if sub != s.cfg.subscription_id {
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

const TOKENS: [(&str, &str, bool); 5] = [
    ("StatusDatetime", "TIMESTAMP", false),
    ("WorkOrderId", "STRING", true),
    ("IssueId", "STRING", false),
    ("Status", "STRING", false),
    ("Reason", "STRING", false),
];

async fn parameters(State(s): Shared, Path(sub): Path<String>, headers: HeaderMap) -> Response {
    let resp = match guard(&s, &headers, &sub) {
        Some(refusal) => refusal,
        None => {
            let tokens: Vec<Value> = TOKENS
                .iter()
                .map(|(name, kind, list)| {
                    json!({"name": name, "type": kind, "isList": list,
                           "default": "__REMOVEIFNOTSUPPLIED__", "description": null})
                })
                .collect();
            axum::Json(json!({ "tokens": tokens })).into_response()
        }
    };
    s.record("batch-request-parameters", resp.status(), &headers, None);
    resp
}

fn lookup<'a>(obj: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

/// Reads the tokens into a filter; `""` means not supplied, unknown names are a 400.
fn parse_filter(tokens: &serde_json::Map<String, Value>) -> Result<Filter, Box<Response>> {
    let mut f = Filter::default();
    let mut errors = serde_json::Map::new();
    for (name, value) in tokens {
        let text = match value {
            Value::String(s) => s.trim().to_string(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        if text.is_empty() {
            continue;
        }
        let Some((canonical, _, _)) = TOKENS.iter().find(|(n, _, _)| n.eq_ignore_ascii_case(name))
        else {
            errors.insert(name.clone(), json!(["unknown token for this data product"]));
            continue;
        };
        match *canonical {
            "StatusDatetime" => {
                if let Ok(d) = NaiveDate::parse_from_str(&text, "%Y-%m-%d") {
                    f.day = Some(d);
                } else if let Some(t) = crate::normalize::time::parse_utc(&text) {
                    f.instant = Some(t);
                } else {
                    errors.insert(
                        name.clone(),
                        json!(["expected YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ"]),
                    );
                }
            }
            "WorkOrderId" => {
                f.work_orders = Some(
                    text.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect(),
                )
            }
            "IssueId" => f.issue_id = Some(text),
            "Status" => f.status = Some(text),
            _ => f.reason_contains = Some(text),
        }
    }
    if errors.is_empty() {
        Ok(f)
    } else {
        Err(Box::new(problem(
            StatusCode::BAD_REQUEST,
            "One or more validation errors occurred.",
            Value::Object(errors),
        )))
    }
}

async fn create_job(
    State(s): Shared,
    Path(sub): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let resp = match guard(&s, &headers, &sub) {
        Some(refusal) => refusal,
        None => create_job_inner(&s, &body),
    };
    let job_id = (resp.status().is_success()).then(|| "created".to_string());
    s.record("batch-request", resp.status(), &headers, job_id);
    resp
}

fn create_job_inner(s: &Arc<SimState>, body: &str) -> Response {
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
    let filter = match parse_filter(&tokens) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    if s.cfg.faults.no_history && filter.day.is_none() && filter.instant.is_none() {
        return problem(
            StatusCode::BAD_REQUEST,
            "One or more validation errors occurred.",
            json!({"StatusDatetime": ["required"]}),
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
            || (s.cfg.faults.failing_day.is_some() && s.cfg.faults.failing_day == filter.day),
        lost: s.cfg.faults.lost_jobs.is_some_and(|n| (seq - 1) % n == 0),
        build: build.clone(),
    };
    let response = job_json(&job, "New", None);
    s.jobs.lock().expect("jobs").insert(id.clone(), job);
    // The result is frozen now: what exists at creation is what the zip holds.
    let state = s.clone();
    let as_of = Utc::now();
    let extra = s.extra.lock().expect("extra").clone();
    tokio::task::spawn_blocking(move || {
        let h = data::mix(id.bytes().fold(0u64, |a, b| a.rotate_left(5) ^ b as u64));
        let layout = Layout {
            parts: 1 + (h % state.cfg.max_parts.max(1) as u64) as usize,
            variant: h >> 8,
            packaging: *state.packaging.lock().expect("packaging"),
        };
        let path = state
            .work
            .path()
            .join(format!("{}.zip", id.to_ascii_uppercase()));
        let today = as_of.date_naive();
        let strays = state.cfg.faults.stray_rows.then_some(filter.day).flatten();
        let result = export::write_zip(&path, &id, file_type, layout, |emit| {
            filter.for_each_row(&state.dataset, today, as_of, &extra, &mut *emit);
            if let Some(day) = strays {
                let before = Filter {
                    day: day.pred_opt(),
                    ..Default::default()
                };
                let mut left = STRAY_ROWS;
                before.for_each_row(&state.dataset, today, as_of, &extra, |r| {
                    if r.is_valid() && left > 0 {
                        left -= 1;
                        return emit(r);
                    }
                    left > 0
                });
            }
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

fn job_json(job: &Job, status: &str, url: Option<String>) -> Value {
    json!({
        "jobId": job.id,
        "status": status,
        "downloadUrl": url,
        "fileFormat": job.file_type.as_str(),
        "tokens": job.tokens,
        "isOhsRequest": false,
    })
}

async fn job_status(
    State(s): Shared,
    Path((sub, job_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let resp = match guard(&s, &headers, &sub) {
        Some(refusal) => refusal,
        None => job_status_inner(&s, &job_id),
    };
    s.record("job-status", resp.status(), &headers, Some(job_id));
    resp
}

fn job_status_inner(s: &SimState, job_id: &str) -> Response {
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

/// A SAS-style link on the simulator's own host, shaped like the vendor's Azure Blob links.
fn download_link(s: &SimState, job_id: &str) -> String {
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

fn blob_error(status: StatusCode, code: &str, message: &str) -> Response {
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

async fn download(
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

async fn download_inner(
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
    } else {
        Body::from_stream(stream)
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-zip-compressed")
        .header(header::CONTENT_LENGTH, len)
        .header("x-ms-blob-type", "BlockBlob")
        .header("x-ms-version", "2018-03-28")
        .body(body)
        .expect("valid response")
}

async fn on_demand(
    State(s): Shared,
    Path(sub): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let resp = match guard(&s, &headers, &sub) {
        Some(refusal) => refusal,
        None => on_demand_inner(&s, &body),
    };
    s.record("on-demand", resp.status(), &headers, None);
    resp
}

fn on_demand_inner(s: &SimState, body: &str) -> Response {
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
    let filter = match parse_filter(&tokens) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let now = Utc::now();
    let extra = s.extra.lock().expect("extra").clone();
    let mut rows = Vec::new();
    filter.for_each_row(&s.dataset, now.date_naive(), now, &extra, |r| {
        rows.push(json!({
            "ServicePointId": r.service_point_id,
            "Phase": r.phase.to_string(),
            "IssueId": r.issue_id,
            "Status": r.status,
            "StatusDatetime": r.status_datetime_text(),
            "Reason": r.reason,
            "EventDate": r.event_date_text(),
            "WorkOrderId": r.work_order_id,
        }));
        rows.len() < ON_DEMAND_MAX_ROWS
    });
    axum::Json(Value::Array(rows)).into_response()
}
