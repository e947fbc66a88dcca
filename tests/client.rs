//! The vendor client against the in-process simulator: every endpoint and every fault switch,
//! asserting what the client did, not only that it got an answer.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use dpss_sync::api::{ApiError, ClientSettings, Credentials, DpssClient, JobPhase};
use dpss_sync::config::{FileType, Settings, Sources};
use dpss_sync::fetch::{FetchError, Fetcher};
use dpss_sync::model::WindowKind;
use dpss_sync::state::State;

fn day_tokens(day: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("StatusDatetime".to_string(), day.to_string())])
}

fn yesterday() -> String {
    days_before_today(1)[0].to_string()
}

/// A finished job's download link: the job created for yesterday, polled to Success.
async fn ready_link(
    c: &dpss_sync::api::DpssClient,
    sim: &dpss_sync::sim::SimHandle,
    ft: FileType,
) -> String {
    let sub = sim.state.config().subscription_id.clone();
    let job = c
        .create_batch(&sub, ft, &day_tokens(&yesterday()))
        .await
        .unwrap();
    wait_done(c, &sub, &job.job_id).await.download_url.unwrap()
}

async fn wait_done(
    c: &dpss_sync::api::DpssClient,
    sub: &str,
    job: &str,
) -> dpss_sync::api::BatchJob {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let j = c.job_status(sub, job).await.unwrap();
        if j.phase() != JobPhase::Pending || Instant::now() > deadline {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

#[tokio::test]
async fn full_walk_token_discovery_job_download_on_demand() {
    let sim = start(quick_sim("")).await;
    let c = client(&sim);
    let sub = sim.state.config().subscription_id.clone();

    let tokens = c.parameters(&sub).await.unwrap();
    let names: Vec<_> = tokens.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "StatusDatetime",
            "WorkOrderId",
            "IssueId",
            "Status",
            "Reason"
        ]
    );
    assert!(tokens[1].is_list);

    let job = c
        .create_batch(&sub, FileType::Csv, &day_tokens(&yesterday()))
        .await
        .unwrap();
    assert_eq!(job.status, "New");
    let done = wait_done(&c, &sub, &job.job_id).await;
    assert_eq!(done.phase(), JobPhase::Succeeded);
    let url = done.download_url.unwrap();
    assert!(url.contains("sig=") && url.contains(&job.job_id.to_uppercase()));

    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("x.zip");
    let bytes = c.download(&url, &dest, u64::MAX).await.unwrap();
    assert_eq!(bytes, std::fs::metadata(&dest).unwrap().len());
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&dest).unwrap()).unwrap();
    let names: Vec<String> = (0..zip.len())
        .map(|i| zip.by_index(i).unwrap().name().unwrap().to_string())
        .collect();
    assert!(names.contains(&"_SUCCESS".to_string()), "{names:?}");
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("part-") && n.ends_with(".csv")),
        "{names:?}"
    );

    // On-demand: the seed's filters, answered synchronously.
    let rows = c.on_demand(&sub, &day_tokens(&yesterday())).await.unwrap();
    assert!(!rows.is_empty());
    let wo = rows[0]["WorkOrderId"].clone().unwrap();
    let one = c
        .on_demand(
            &sub,
            &BTreeMap::from([("WorkOrderId".to_string(), format!("{wo},"))]),
        )
        .await
        .unwrap();
    assert!(
        !one.is_empty()
            && one
                .iter()
                .all(|r| r["WorkOrderId"].as_deref() == Some(wo.as_str()))
    );

    // One token for all of it; every DPSS call carried a bearer, the subscriber and a fresh
    // UUID correlation id; the download carried no Authorization header.
    assert_eq!(c.tokens_fetched(), 1);
    let log = sim.state.requests();
    let dpss: Vec<_> = log
        .iter()
        .filter(|r| !matches!(r.endpoint, "token" | "download"))
        .collect();
    assert!(
        dpss.iter().all(|r| r.had_authorization && r.status < 300),
        "{dpss:?}"
    );
    let ids: std::collections::BTreeSet<_> = dpss
        .iter()
        .map(|r| r.correlation_id.clone().unwrap())
        .collect();
    assert_eq!(ids.len(), dpss.len(), "one correlation id per call");
    assert!(ids.iter().all(|id| uuid::Uuid::parse_str(id).is_ok()));
    let downloads: Vec<_> = log.iter().filter(|r| r.endpoint == "download").collect();
    assert_eq!(downloads.len(), 1);
    assert!(!downloads[0].had_authorization);
    sim.shutdown().await;
}

#[tokio::test]
async fn on_demand_is_capped_at_1000_rows() {
    let sim = sim_with(3000, "").await;
    let c = client(&sim);
    let rows = c
        .on_demand(
            &sim.state.config().subscription_id,
            &day_tokens(&yesterday()),
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), dpss_sync::sim::ON_DEMAND_MAX_ROWS);
    sim.shutdown().await;
}

#[tokio::test]
async fn expired_token_leads_to_exactly_one_refresh() {
    // Each token is good for two DPSS calls, then answered 401.
    let sim = start(quick_sim("token-expiry=2")).await;
    let c = client(&sim);
    let sub = sim.state.config().subscription_id.clone();
    for _ in 0..3 {
        c.parameters(&sub).await.unwrap();
    }
    assert_eq!(c.stats.unauthorized_refreshes.load(Ordering::Relaxed), 1);
    assert_eq!(c.tokens_fetched(), 2);
    assert_eq!(sim.state.tokens_issued(), 2);
    let statuses: Vec<u16> = sim
        .state
        .requests()
        .iter()
        .filter(|r| r.endpoint != "token")
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [200, 200, 401, 200]);
    sim.shutdown().await;
}

/// A client of `sim` with `secret` and few, quick retries.
fn client_with_secret(
    sim: &dpss_sync::sim::SimHandle,
    secret: dpss_sync::config::SecretSource,
) -> DpssClient {
    let cfg = sim.state.config();
    DpssClient::new(
        ClientSettings {
            base_url: sim.base_url().parse().unwrap(),
            subscriber_id: cfg.subscriber_id.clone(),
            request_timeout: Duration::from_secs(5),
            max_attempts: 2,
            retry_base: Duration::from_millis(10),
            retry_cap: Duration::from_millis(10),
            max_retry_after: Duration::from_secs(600),
        },
        Credentials {
            token_url: sim.token_url().parse().unwrap(),
            client_id: cfg.client_id.clone(),
            client_secret: secret,
            scope: "DPSSSubscriberApi".into(),
        },
    )
    .unwrap()
}

#[tokio::test]
async fn wrong_credentials_fail_with_the_oauth_error() {
    let sim = start(quick_sim("")).await;
    let cfg = sim.state.config();
    let c = client_with_secret(
        &sim,
        dpss_sync::config::Secret::new("not-the-secret").into(),
    );
    let err = c.parameters(&cfg.subscription_id).await.unwrap_err();
    assert!(
        matches!(&err, ApiError::Auth { status: 400, detail, .. } if detail == "invalid_client"),
        "{err}"
    );
    sim.shutdown().await;
}

/// A secret mounted as a file is read again at each token refresh: a rotation takes effect
/// without a restart, and a file gone bad fails the refresh naming the file.
#[tokio::test]
async fn a_secret_file_is_reread_at_each_token_refresh() {
    let sim = start(dpss_sync::sim::SimConfig {
        token_ttl: Duration::from_secs(1),
        ..quick_sim("")
    })
    .await;
    let cfg = sim.state.config().clone();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("client_secret");
    std::fs::write(&file, format!("{}\n", cfg.client_secret)).unwrap();
    let c = client_with_secret(&sim, dpss_sync::config::SecretSource::File(file.clone()));
    c.parameters(&cfg.subscription_id).await.unwrap();
    std::fs::write(&file, "revoked").unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let err = c.parameters(&cfg.subscription_id).await.unwrap_err();
    assert!(
        matches!(&err, ApiError::Auth { detail, .. } if detail == "invalid_client"),
        "the refresh used the file's new content: {err}"
    );
    std::fs::write(&file, &cfg.client_secret).unwrap();
    c.parameters(&cfg.subscription_id).await.unwrap();
    std::fs::remove_file(&file).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let err = c.parameters(&cfg.subscription_id).await.unwrap_err();
    assert!(
        matches!(err, ApiError::Secret(_)) && err.to_string().contains("client_secret"),
        "{err}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn retry_after_of_a_429_is_waited() {
    let sim = start(quick_sim("429=2")).await;
    let c = client(&sim);
    let sub = sim.state.config().subscription_id.clone();
    c.parameters(&sub).await.unwrap();
    let started = Instant::now();
    c.parameters(&sub).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(c.stats.retry_after_waits.load(Ordering::Relaxed), 1);
    assert_eq!(c.stats.retry_after_ms.load(Ordering::Relaxed), 1000);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_429_on_create_is_retried_once_and_creates_one_job() {
    // DPSS request #2 (the first POST) is throttled; the server provably did not act.
    let sim = start(quick_sim("429=2")).await;
    let c = client(&sim);
    let sub = sim.state.config().subscription_id.clone();
    c.parameters(&sub).await.unwrap();
    c.create_batch(&sub, FileType::Json, &day_tokens(&yesterday()))
        .await
        .unwrap();
    assert_eq!(sim.state.jobs_created(), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn server_errors_retry_reads_but_never_blindly_repost() {
    let sim = start(quick_sim("5xx=2")).await;
    let c = client(&sim);
    let sub = sim.state.config().subscription_id.clone();
    // Request 1 ok, 2 fails (retried as 3), 4 fails: a POST, not retried.
    c.parameters(&sub).await.unwrap();
    c.parameters(&sub).await.unwrap();
    assert_eq!(c.stats.retries.load(Ordering::Relaxed), 1);
    let err = c
        .create_batch(&sub, FileType::Csv, &day_tokens(&yesterday()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ApiError::OutcomeUnknown {
                endpoint: "batch-request",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("not retried"));
    let posts = sim
        .state
        .requests()
        .iter()
        .filter(|r| r.endpoint == "batch-request")
        .count();
    assert_eq!(posts, 1);
    assert_eq!(sim.state.jobs_created(), 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn unknown_job_and_bad_request_are_reported_with_status() {
    let sim = start(quick_sim("")).await;
    let c = client(&sim);
    let sub = sim.state.config().subscription_id.clone();
    let err = c
        .job_status(&sub, "6ab9821f-4c56-4ad8-8815-8a67be55878f")
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Http { status: 404, .. }), "{err}");
    let bad = BTreeMap::from([("Feeder".to_string(), "F1".to_string())]);
    let err = c.create_batch(&sub, FileType::Csv, &bad).await.unwrap_err();
    assert!(
        matches!(err, ApiError::Http { status: 400, .. }) && err.to_string().contains("Feeder"),
        "{err}"
    );
    let err = c.parameters("not-my-subscription").await.unwrap_err();
    assert!(matches!(err, ApiError::Http { status: 403, .. }), "{err}");
    sim.shutdown().await;
}

#[tokio::test]
async fn truncated_download_is_retried_and_completes() {
    let sim = start(quick_sim("truncated=2")).await;
    let c = client(&sim);
    let url = ready_link(&c, &sim, FileType::Parquet).await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("a.zip");
    // Download #1 is whole; #2 is cut halfway and retried as #3.
    c.download(&url, &dest, u64::MAX).await.unwrap();
    let whole = std::fs::read(&dest).unwrap();
    std::fs::remove_file(&dest).unwrap();
    c.download(&url, &dest, u64::MAX).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), whole);
    assert_eq!(c.stats.downloads.load(Ordering::Relaxed), 3);
    assert!(!dir.path().join("a.part").exists());
    sim.shutdown().await;
}

#[tokio::test]
async fn expired_link_is_refused_and_redacted() {
    let sim = start(quick_sim("expired-links=1")).await;
    let c = client(&sim);
    let url = ready_link(&c, &sim, FileType::Csv).await;
    let dir = tempfile::tempdir().unwrap();
    let err = c
        .download(&url, &dir.path().join("b.zip"), u64::MAX)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApiError::LinkRejected { status: 403, .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        !text.contains("sig=") && text.contains("<redacted>"),
        "{text}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn download_size_limit_is_enforced() {
    let sim = start(quick_sim("")).await;
    let c = client(&sim);
    let url = ready_link(&c, &sim, FileType::Csv).await;
    let dir = tempfile::tempdir().unwrap();
    let err = c
        .download(&url, &dir.path().join("c.zip"), 100)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApiError::TooLarge { limit: 100, .. }),
        "{err}"
    );
    sim.shutdown().await;
}

/// The fetcher: jobs recorded before anything else, failures named by job id, timeouts.
struct FetchSetup {
    sim: dpss_sync::sim::SimHandle,
    dir: tempfile::TempDir,
    settings: Settings,
    state: State,
    client: dpss_sync::api::DpssClient,
}

impl FetchSetup {
    async fn new(faults: &str, timeout: &str) -> Self {
        let sim = start(quick_sim(faults)).await;
        let dir = tempfile::tempdir().unwrap();
        let text = config_text(&sim, dir.path(), "csv", 2).replace(
            "job_timeout = \"2m\"",
            &format!("job_timeout = \"{timeout}\""),
        );
        let settings = Settings::load(&Sources {
            inline: vec![text],
            ..Default::default()
        })
        .unwrap();
        let state = State::open_writer(
            &settings.state.url,
            &dpss_sync::state::LeaseRequest::new("test", None),
        )
        .await
        .unwrap();
        let client = client(&sim);
        Self {
            sim,
            dir,
            settings,
            state,
            client,
        }
    }

    fn fetcher(&self) -> Fetcher<'_> {
        Fetcher {
            product: *P,
            client: &self.client,
            state: &self.state,
            api: &self.settings.api,
            work_dir: self.dir.path(),
            max_download: self.settings.lake.max_uncompressed_size,
        }
    }

    fn sub(&self) -> String {
        self.sim.state.config().subscription_id.clone()
    }

    /// Plans and submits `day`'s window; returns the window as recorded and the job id.
    async fn submit(&self, day: chrono::NaiveDate) -> (dpss_sync::state::WindowRow, String) {
        let run = self.state.start_run("test", None).await.unwrap();
        let w = self
            .state
            .plan_window(*P, &day.to_string(), WindowKind::Day, day, day, run)
            .await
            .unwrap();
        let job_id = self
            .fetcher()
            .submit(
                &w,
                &self.sub(),
                FileType::Csv,
                &day_tokens(&day.to_string()),
            )
            .await
            .unwrap();
        (
            self.state.window(*P, &w.key).await.unwrap().unwrap(),
            job_id,
        )
    }
}

#[tokio::test]
async fn failed_job_surfaces_as_an_error_naming_the_job() {
    let t = FetchSetup::new("failed-jobs=1", "2m").await;
    let (w, job_id) = t.submit(days_before_today(1)[0]).await;
    // The id is in the state before the first poll.
    assert_eq!(
        t.state.jobs_for_window(*P, &w.key).await.unwrap(),
        vec![job_id.clone()]
    );
    let err = t
        .fetcher()
        .fetch(&w, &job_id, &t.sub(), false)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, FetchError::JobFailed { job_id: j, .. } if *j == job_id),
        "{err}"
    );
    assert!(err.to_string().contains(&job_id));
    assert_eq!(
        t.state.job(&job_id).await.unwrap().unwrap().status,
        "Failed"
    );
    t.sim.shutdown().await;
}

#[tokio::test]
async fn slow_job_times_out_by_job_timeout() {
    let t = FetchSetup::new("slow-jobs=1h", "400ms").await;
    let (w, job_id) = t.submit(days_before_today(1)[0]).await;
    let started = Instant::now();
    let err = t
        .fetcher()
        .fetch(&w, &job_id, &t.sub(), false)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, FetchError::JobTimeout { job_id: j, .. } if *j == job_id),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let polls = t
        .sim
        .state
        .requests()
        .iter()
        .filter(|r| r.endpoint == "job-status")
        .count();
    assert!(polls >= 2, "polled {polls} times");
    t.sim.shutdown().await;
}

#[tokio::test]
async fn fetcher_asks_for_a_fresh_link_when_one_expired() {
    let t = FetchSetup::new("expired-links=2", "2m").await;
    // Link #1 good, link #2 expired: the second window's first link fails, a re-poll fixes it.
    for k in [2i64, 3] {
        let (w, job_id) = t.submit(days_before_today(k)[0]).await;
        let got = t
            .fetcher()
            .fetch(&w, &job_id, &t.sub(), false)
            .await
            .unwrap();
        assert!(got.path.exists());
    }
    let refused = t
        .sim
        .state
        .requests()
        .iter()
        .filter(|r| r.endpoint == "download" && r.status == 403)
        .count();
    assert_eq!(refused, 1);
    t.sim.shutdown().await;
}

/// A client whose API and identity server are at `base` (scheme, host and port).
fn client_at(base: &str, timeout: Duration) -> DpssClient {
    DpssClient::new(
        ClientSettings {
            base_url: base.parse().unwrap(),
            subscriber_id: "s".into(),
            request_timeout: timeout,
            max_attempts: 1,
            retry_base: Duration::from_millis(10),
            retry_cap: Duration::from_millis(10),
            max_retry_after: Duration::from_secs(600),
        },
        Credentials {
            token_url: format!("{base}/connect/token?tenant=secret-value")
                .parse()
                .unwrap(),
            client_id: "c".into(),
            client_secret: dpss_sync::config::Secret::new("s").into(),
            scope: "DPSSSubscriberApi".into(),
        },
    )
    .unwrap()
}

/// The message of a token request against `base` that cannot succeed: it names the step, the
/// host and the path, and never the query string.
async fn token_error(base: &str, timeout: Duration) -> String {
    let err = client_at(base, timeout)
        .parameters("sub")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("token ("), "{err}");
    assert!(err.contains("/connect/token"), "{err}");
    assert!(
        !err.contains("secret-value"),
        "a query string leaked: {err}"
    );
    err
}

#[tokio::test]
async fn a_refused_connection_names_host_path_and_step() {
    let port = free_port();
    let err = token_error(&format!("http://127.0.0.1:{port}"), Duration::from_secs(5)).await;
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.to_lowercase().contains("connection refused"), "{err}");
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_named() {
    // `.invalid` is reserved never to resolve (RFC 2606).
    let err = token_error("http://dpss-sync-test.invalid", Duration::from_secs(10)).await;
    assert!(err.contains("dpss-sync-test.invalid"), "{err}");
    assert!(err.to_lowercase().contains("dns"), "{err}");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_naming_it() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts and then says nothing.
    let _held = std::thread::spawn(move || {
        let conns: Vec<_> = listener.incoming().take(2).collect();
        std::thread::sleep(Duration::from_secs(5));
        drop(conns);
    });
    let err = token_error(
        &format!("http://127.0.0.1:{port}"),
        Duration::from_millis(300),
    )
    .await;
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.to_lowercase().contains("timed out"), "{err}");
}

/// A TLS server with a self-signed certificate (made by the openssl command line, served by
/// Python's ssl module on loopback): the handshake fails, and the message says so and where.
#[tokio::test]
async fn a_self_signed_tls_server_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output();
    let made = match made {
        Ok(o) if o.status.success() => o,
        other => {
            assert!(
                std::env::var_os("CI").is_none(),
                "openssl is needed in CI: {other:?}"
            );
            eprintln!("skipping: no openssl command line");
            return;
        }
    };
    drop(made);
    let port = free_port();
    let server = r#"
import ssl, sys, http.server
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[1])
httpd = http.server.HTTPServer(("127.0.0.1", int(sys.argv[3])), http.server.BaseHTTPRequestHandler)
httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
httpd.serve_forever()
"#;
    let _server = Killed(
        std::process::Command::new("python3")
            .args(["-c", server])
            .arg(&key)
            .arg(&cert)
            .arg(port.to_string())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the TLS server did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = token_error(
        &format!("https://127.0.0.1:{port}"),
        Duration::from_secs(10),
    )
    .await;
    assert!(
        err.contains(&format!("https://127.0.0.1:{port}/connect/token")),
        "{err}"
    );
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}
