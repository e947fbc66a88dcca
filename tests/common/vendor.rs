//! A vendor that misbehaves on purpose, for the hostile-input tests: the DPSS protocol (token,
//! batch request, job status, a download link) answered the way a broken or hostile server
//! might, one misbehaviour per vendor. Written here, not in the simulator: the simulator plays
//! the vendor as documented, this one plays it as it should never be.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

/// What the vendor does wrong; everything else it does right.
#[derive(Clone, Debug)]
pub enum Misbehaviour {
    /// Every batch request is answered 429 with this `Retry-After`, and a body this long.
    BatchThrottled {
        retry_after: &'static str,
        body_bytes: usize,
    },
    /// Every job-status poll is answered 429 with this `Retry-After`.
    StatusThrottled(&'static str),
    /// The token endpoint answers 429 with `Retry-After: 1`.
    TokenThrottled,
    /// The job is created with this id.
    JobId(String),
    /// The job fails, with this message.
    JobFails(String),
    /// The download is `bytes` long, streamed without a `Content-Length`.
    Unannounced { bytes: u64 },
}

struct Shared {
    misbehaviour: Misbehaviour,
    export: Vec<u8>,
    addr: SocketAddr,
    posts: std::sync::Mutex<Vec<std::time::Instant>>,
    polls: AtomicU64,
}

/// A running vendor; it serves until the test ends.
pub struct Vendor {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Vendor {
    /// Serves `misbehaviour`, with `export` as the zip a good job's link gives.
    pub async fn start(misbehaviour: Misbehaviour, export: Vec<u8>) -> Vendor {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            misbehaviour,
            export,
            addr,
            posts: Default::default(),
            polls: AtomicU64::new(0),
        });
        let sub = "/dpss/api/v1/subscriptions/{sub}";
        let app = Router::new()
            .route("/connect/token", post(token))
            .route(&format!("{sub}/batch-request"), post(batch))
            .route(&format!("{sub}/batch-request/{{job}}"), get(status))
            .route("/blob/export.zip", get(download))
            .with_state(shared.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Vendor { addr, shared }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Batch requests received.
    pub fn posts(&self) -> u64 {
        self.shared.posts.lock().unwrap().len() as u64
    }

    /// The times between batch requests, in order.
    pub fn post_gaps(&self) -> Vec<std::time::Duration> {
        let posts = self.shared.posts.lock().unwrap();
        posts.windows(2).map(|w| w[1] - w[0]).collect()
    }

    /// Job-status polls received.
    pub fn polls(&self) -> u64 {
        self.shared.polls.load(Ordering::SeqCst)
    }

    /// A configuration for this vendor, its lake (with `lake` lines) and state under `dir`.
    pub fn config(&self, dir: &std::path::Path, lake: &str) -> String {
        format!(
            r#"
[api]
base_url = "{base}"
subscriber_id = "subscriber"
poll_interval = "20ms"
poll_max = "50ms"
job_timeout = "1m"
max_attempts = 3
[auth]
token_url = "{base}/connect/token"
client_id = "client"
client_secret = "secret"
[lake]
url = "file://{dir}/lake"
{lake}
[state]
url = "sqlite://{dir}/state/state.db"
[products.hid_work_orders]
subscription_id = "subscription"
file_type = "csv"
"#,
            base = self.base_url(),
            dir = dir.display()
        )
    }
}

fn throttled(retry_after: &str, body: Body) -> Response {
    Response::builder()
        .status(StatusCode::TOO_MANY_REQUESTS)
        .header(header::RETRY_AFTER, retry_after)
        .body(body)
        .unwrap()
}

async fn token(State(s): State<Arc<Shared>>) -> Response {
    if matches!(s.misbehaviour, Misbehaviour::TokenThrottled) {
        return throttled("1", Body::from("slow down"));
    }
    axum::Json(json!({"access_token": "t", "expires_in": 3600, "token_type": "Bearer"}))
        .into_response()
}

fn job_id(s: &Shared) -> String {
    match &s.misbehaviour {
        Misbehaviour::JobId(id) => id.clone(),
        _ => "job-1".into(),
    }
}

async fn batch(State(s): State<Arc<Shared>>) -> Response {
    s.posts.lock().unwrap().push(std::time::Instant::now());
    if let Misbehaviour::BatchThrottled {
        retry_after,
        body_bytes,
    } = s.misbehaviour
    {
        let chunk = bytes::Bytes::from(vec![b'x'; 64 << 10]);
        let chunks = body_bytes.div_ceil(chunk.len());
        let body =
            futures::stream::iter((0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
        return throttled(retry_after, Body::from_stream(body));
    }
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({"jobId": job_id(&s), "status": "New", "downloadUrl": null})),
    )
        .into_response()
}

async fn status(State(s): State<Arc<Shared>>) -> Response {
    s.polls.fetch_add(1, Ordering::SeqCst);
    match &s.misbehaviour {
        Misbehaviour::StatusThrottled(retry_after) => throttled(retry_after, Body::empty()),
        Misbehaviour::JobFails(message) => {
            axum::Json(json!({"jobId": job_id(&s), "status": "Failed", "message": message}))
                .into_response()
        }
        _ => axum::Json(json!({
            "jobId": job_id(&s),
            "status": "Success",
            "downloadUrl": format!("http://{}/blob/export.zip?sig=x", s.addr),
        }))
        .into_response(),
    }
}

async fn download(State(s): State<Arc<Shared>>) -> Response {
    if let Misbehaviour::Unannounced { bytes } = s.misbehaviour {
        let chunk = bytes::Bytes::from(vec![0u8; 1 << 20]);
        let chunks = bytes.div_ceil(chunk.len() as u64);
        let body =
            futures::stream::iter((0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
        // A stream has no length: hyper sends it chunked, with no Content-Length.
        return Response::new(Body::from_stream(body));
    }
    (
        [(header::CONTENT_TYPE, "application/x-zip-compressed")],
        s.export.clone(),
    )
        .into_response()
}
