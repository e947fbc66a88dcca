//! The built-in DPSS simulator: the identity token endpoint and the DPSS v1 data-product API
//! (discovery, batch-request create / status, on-demand), plus a SAS-style blob host for the
//! export zips. It follows `dpss-api.md`, including the parts the vendor only implies, and can
//! inject every fault the client must survive. It serves several products, each behind a
//! subscription of its own: HID work orders (`hid.rs`), Advanced Temperature Statistics
//! (`temperature.rs`), and any declared product from its declaration (`declared.rs`). Tests run
//! it in-process; `dpss-sync simulate` serves it for curl or any other client.

mod auth;
mod blob;
pub mod data;
mod declared;
pub mod export;
pub mod faults;
mod filter;
mod hid;
mod jobs;
mod on_demand;
pub mod record;
mod served;
pub mod temperature;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::config::FileType;
use crate::product::Product;
use auth::token;
use blob::download;
use data::{Dataset, SimRow};
pub use faults::Faults;
use filter::Filter;
use hid::Hid;
use jobs::{create_job, job_status, parameters};
use on_demand::on_demand;
use record::Record;
use served::Served;
use temperature::{TempRow, Temperature};

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
    /// HID work orders' subscription.
    pub subscription_id: String,
    /// Advanced Temperature Statistics' subscription.
    pub temperature_subscription_id: String,
    /// Declared products served from their declarations, each with its subscription.
    pub declared: Vec<(String, Product)>,
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
            temperature_subscription_id: "00000000-0000-4000-8000-00000000f00d".into(),
            declared: Vec::new(),
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
    hid: Arc<Hid>,
    temperature: Arc<Temperature>,
    /// Every product served, by subscription id.
    served: HashMap<String, Arc<dyn Served>>,
    work: tempfile::TempDir,
    signer: std::hash::RandomState,
    tokens: Mutex<Tokens>,
    jobs: Mutex<HashMap<String, Job>>,
    counters: Mutex<Counters>,
    log: Mutex<Vec<RequestRecord>>,
    packaging: Mutex<export::Packaging>,
    addr: Mutex<Option<SocketAddr>>,
    /// The vendor's clock, when a test holds it still: what exists is what was received by then.
    clock: Mutex<Option<DateTime<Utc>>>,
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

    /// Holds the vendor's clock at `at` (`None` lets it run): exports and look-ups serve what
    /// exists then, so a test can sync, move the clock on, and see late and corrected rows come.
    pub fn set_clock(&self, at: Option<DateTime<Utc>>) {
        *self.clock.lock().expect("clock") = at;
    }

    /// The vendor's time now.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.lock().expect("clock").unwrap_or_else(Utc::now)
    }

    /// Adds a HID row that exports created from now on will serve: a late status update.
    pub fn inject_row(&self, row: SimRow) {
        self.hid.extra.lock().expect("extra").push(row);
    }

    /// Every HID row an unfiltered export created at `as_of` would serve for `day`, in order.
    pub fn rows_for_day(&self, day: NaiveDate, as_of: DateTime<Utc>) -> Vec<SimRow> {
        let mut out = Vec::new();
        let filter = Filter {
            day: Some(day),
            ..Default::default()
        };
        let extra = self.hid.extra.lock().expect("extra").clone();
        filter.for_each_row(
            &self.hid.dataset,
            self.now().date_naive(),
            as_of,
            &extra,
            |r| {
                out.push(r);
                true
            },
        );
        out
    }

    /// Every temperature row an export created at `as_of` would serve for measurement day `day`.
    pub fn temperature_rows_for_day(&self, day: NaiveDate, as_of: DateTime<Utc>) -> Vec<TempRow> {
        let mut out = Vec::new();
        self.temperature
            .data
            .rows_for_day(day, as_of, |r| out.push(r));
        out
    }

    /// Every row an unfiltered export of the product behind `subscription`, created at `as_of`,
    /// would serve, in export order; `None` for a subscription the simulator does not serve.
    pub fn export_records(&self, subscription: &str, as_of: DateTime<Utc>) -> Option<Vec<Record>> {
        let query = self
            .served(subscription)?
            .query(&serde_json::Map::new())
            .ok()?;
        let mut out = Vec::new();
        query.rows(self, as_of.date_naive(), as_of, &mut |r| {
            out.push(r);
            true
        });
        Some(out)
    }

    /// The product behind a subscription.
    fn served(&self, subscription: &str) -> Option<Arc<dyn Served>> {
        self.served.get(subscription).cloned()
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
    let hid = Arc::new(Hid::new(
        Dataset {
            active_every: cfg.faults.sparse.unwrap_or(1),
            ..Dataset::new(cfg.seed, cfg.rows_per_day)
        },
        cfg.faults.stray_rows,
    ));
    let temperature = Arc::new(Temperature::new(cfg.seed, cfg.rows_per_day));
    let mut served: HashMap<String, Arc<dyn Served>> = HashMap::new();
    served.insert(cfg.subscription_id.clone(), hid.clone());
    served.insert(cfg.temperature_subscription_id.clone(), temperature.clone());
    for (sub, product) in &cfg.declared {
        served.insert(
            sub.clone(),
            Arc::new(declared::Declared::new(
                *product,
                cfg.seed,
                cfg.rows_per_day.min(200),
            )),
        );
    }
    let state = Arc::new(SimState {
        hid,
        temperature,
        served,
        packaging: Mutex::new(cfg.faults.packaging),
        cfg,
        work: tempfile::tempdir()?,
        signer: std::hash::RandomState::new(),
        tokens: Default::default(),
        jobs: Default::default(),
        counters: Default::default(),
        log: Default::default(),
        addr: Mutex::new(Some(addr)),
        clock: Mutex::new(None),
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
