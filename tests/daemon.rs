//! `dpss-sync run` as operators run it: a child process with its HTTP server, scraped and
//! signalled; plus the proof that no secret reaches a log line or a file.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use dpss_sync::model::StateUrl;
use dpss_sync::sim::SimConfig;
use dpss_sync::state::{Stage, State};

fn daemon_config(sim: &dpss_sync::sim::SimHandle, dir: &Path, port: u16) -> std::path::PathBuf {
    let text = config_text(sim, dir, "csv", 2).replace(
        "[products.hid_work_orders]",
        &format!("[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace = \"2s\"\n[products.hid_work_orders]\nschedule = \"0 0 0 1 1 *\""),
    );
    let path = dir.join("dpss.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn spawn_daemon(config: &Path) -> Child {
    spawn_with_failpoint(config, "")
}

async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let r = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .ok()?;
    Some((r.status().as_u16(), r.text().await.unwrap_or_default()))
}

async fn wait_for(port: u16, path: &str, status: u16, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        if let Some((s, body)) = get(port, path).await
            && s == status
        {
            return body;
        }
        assert!(Instant::now() < deadline, "{path} never answered {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The metric names a PromQL expression uses (the exporter's own; `up` and the like are
/// Prometheus's).
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("dpss_sync_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        out.push(name);
    }
    out
}

/// Every expression of the shipped alert rules (`expr:` lines, folded `>` ones included).
fn alert_expressions(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some((indent, value)) = line.split_once("expr:") else {
            continue;
        };
        let value = value.trim();
        if value == ">" || value == "|" {
            let deeper = indent.len() + 2;
            let body: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| l.len() - l.trim_start().len() >= deeper)
                .map(|l| l.trim())
                .collect();
            out.push(body.join(" "));
        } else {
            out.push(value.to_string());
        }
    }
    out
}

/// The shipped Grafana dashboard and Prometheus rules use only metrics a running daemon exports.
fn dashboards_name_only_exported_metrics(scrape: &str) {
    let exported: std::collections::BTreeSet<&str> = scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana/dpss-sync.json")).unwrap(),
    )
    .unwrap();
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    let rules = std::fs::read_to_string(root.join("prometheus/alerts.yaml")).unwrap();
    let alerts = alert_expressions(&rules);
    assert_eq!(
        alerts.len(),
        rules.matches("- alert:").count(),
        "every rule has one expression"
    );
    exprs.extend(alerts);
    let mut used = 0;
    for expr in &exprs {
        for name in metric_names(expr) {
            assert!(
                exported.contains(name.as_str()),
                "`{name}` in `{expr}` is not exported"
            );
            used += 1;
        }
    }
    assert!(
        used >= exprs.len() - 1,
        "expressions that name no dpss_sync metric: {exprs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_serves_metrics_and_readiness_and_drains_on_sigterm() {
    let sim = sim_with(20, "").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = spawn_daemon(&daemon_config(&sim, dir.path(), port));
    wait_for(port, "/healthz", 200, Duration::from_secs(30)).await;
    wait_for(port, "/readyz", 200, Duration::from_secs(60)).await;
    // Ready means a window committed; the watermark moves a moment later, when the run ends.
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let m = wait_for(port, "/metrics", 200, Duration::from_secs(5)).await;
        if m.contains("dpss_sync_watermark_age_seconds") {
            break m;
        }
        assert!(Instant::now() < deadline, "the watermark never moved: {m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let rows = lake_rows(dir.path()).await.len() as f64;
    let p = "product=\"hid_work_orders\"";
    assert_eq!(
        metric(&metrics, "dpss_sync_rows_written_total", &[p]),
        rows,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "dpss_sync_windows_total",
            &[p, "outcome=\"committed\""]
        ),
        1.0
    );
    assert!(metric(&metrics, "dpss_sync_rows_quarantined_total", &[p]) > 0.0);
    assert!(
        metric(
            &metrics,
            "dpss_sync_vendor_requests_total",
            &["endpoint=\"job-status\"", "status_class=\"2xx\""]
        ) >= 1.0
    );
    assert!(metric(&metrics, "dpss_sync_downloaded_bytes_total", &[]) > 0.0);
    // Bytes written are the objects' sizes.
    let lake =
        dpss_sync::lake::Lake::open(&local_lake(&dir.path().join("lake")), dir.path()).unwrap();
    let objects = lake.objects(*P).await.unwrap();
    let on_disk: u64 = objects.iter().map(|(_, size)| size).sum();
    let written = metric(&metrics, "dpss_sync_written_bytes_total", &[p]);
    assert!(
        written <= on_disk as f64 && written > on_disk as f64 - 2048.0 * objects.len() as f64,
        "{written} vs {on_disk}"
    );
    assert_eq!(
        metric(&metrics, "dpss_sync_objects_written_total", &[p]),
        objects.len() as f64
    );
    assert!(metrics.contains("dpss_sync_watermark_age_seconds"));
    assert!(metrics.contains("dpss_sync_last_commit_timestamp_seconds"));
    assert!(metrics.contains("dpss_sync_job_duration_seconds"));
    // Durations are histograms with buckets fit for them, which Prometheus can aggregate.
    assert!(
        metrics.contains(
            "dpss_sync_vendor_request_duration_seconds_bucket{endpoint=\"job-status\",le=\"0.05\"}"
        ),
        "{metrics}"
    );
    assert!(metrics.contains(
        "dpss_sync_job_duration_seconds_bucket{product=\"hid_work_orders\",le=\"7200\"}"
    ));
    // Counters a dashboard or alert divides by exist from the start, at zero.
    assert_eq!(
        metric(&metrics, "dpss_sync_shrink_refused_total", &[p]),
        0.0
    );
    assert_eq!(metric(&metrics, "dpss_sync_writer_lease_held", &[]), 1.0);
    // The cycle's own histogram is recorded as the run ends, just after the watermark moves.
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let m = wait_for(port, "/metrics", 200, Duration::from_secs(5)).await;
        if m.contains("dpss_sync_cycle_duration_seconds_bucket") {
            break m;
        }
        assert!(Instant::now() < deadline, "no cycle finished: {m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    dashboards_name_only_exported_metrics(&metrics);
    sigterm(&child);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_job_leaves_it_recorded_and_the_next_start_resumes_it() {
    let sim = sim_with(20, "slow-jobs=5s").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = daemon_config(&sim, dir.path(), port);
    let mut child = spawn_daemon(&config);
    let deadline = Instant::now() + Duration::from_secs(30);
    while sim.state.jobs_created() == 0 {
        assert!(Instant::now() < deadline, "no job was submitted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sigterm(&child);
    // Draining: not ready, while the cycle in flight gets its grace period (the signal is
    // handled a moment after it is sent).
    let body = wait_for(port, "/readyz", 503, Duration::from_secs(5)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut body = body;
    while body.trim() != "draining" {
        assert!(Instant::now() < deadline, "never drained: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        body = get(port, "/readyz")
            .await
            .expect("server up while draining")
            .1;
    }
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    let state_path = dir.path().join("state/state.db");
    let st = State::open_reader(&StateUrl::Sqlite(state_path.clone()))
        .await
        .unwrap();
    let w = st.window(*P, "history").await.unwrap().unwrap();
    assert_eq!(w.stage, Stage::Submitted);
    let job = w.job_id.clone().unwrap();
    st.close().await;

    let mut child = spawn_daemon(&config);
    wait_for(port, "/readyz", 200, Duration::from_secs(60)).await;
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    assert_eq!(
        sim.state.jobs_created(),
        1,
        "the recorded job was resumed, not requested again"
    );
    let st = State::open_reader(&StateUrl::Sqlite(state_path.clone()))
        .await
        .unwrap();
    let w = st.window(*P, "history").await.unwrap().unwrap();
    assert_eq!(
        (w.stage, w.job_id.as_deref()),
        (Stage::Committed, Some(job.as_str()))
    );
    sim.shutdown().await;
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// A full sync with known secret values, logging at debug in JSON: no secret in any log line,
/// in the state, the lake or the quarantine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_is_logged_or_stored() {
    let secret = "s3cr3t-Client-Secret-7f2a";
    let cloud_key = "AKIA-CLOUD-KEY-SHOULD-NOT-LEAK";
    let mut cfg = SimConfig {
        rows_per_day: 20,
        ..quick_sim("token-expiry=3,expired-links=2")
    };
    cfg.client_secret = secret.into();
    let sim = start(cfg).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dpss.toml");
    std::fs::write(
        &config,
        config_text(&sim, dir.path(), "parquet", 2)
            .replace(&format!("client_secret = \"{secret}\"\n"), ""),
    )
    .unwrap();
    let mut logs = Vec::new();
    for args in [
        vec!["sync"],
        vec!["sync"],
        vec!["status", "--json"],
        vec!["check-config", "--online"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_dpss-sync"))
            .arg("--config")
            .arg(&config)
            .args(&args)
            .env("RUST_LOG", "debug")
            .env("DPSS_SYNC__LOG__FORMAT", "json")
            .env("DPSS_SYNC__AUTH__CLIENT_SECRET", secret)
            .env("AWS_SECRET_ACCESS_KEY", cloud_key)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        logs.extend(out.stdout);
        logs.extend(out.stderr);
    }
    let logs = String::from_utf8_lossy(&logs).into_owned();
    assert!(
        logs.lines().count() > 50,
        "debug logging produced too little to be a real check"
    );
    assert!(
        logs.contains("correlation_id"),
        "vendor calls are logged with their correlation id"
    );
    let tokens = sim.state.issued_tokens();
    assert!(tokens.len() >= 2);
    let mut needles: Vec<String> = vec![secret.into(), cloud_key.into(), "sig=".into()];
    needles.extend(tokens);
    for n in &needles {
        assert!(!logs.contains(n.as_str()), "a secret reached the logs: {n}");
    }
    for f in files_under(dir.path()) {
        if f == config {
            continue;
        }
        let bytes = std::fs::read(&f).unwrap();
        for n in &needles {
            let found = bytes.windows(n.len()).any(|w| w == n.as_bytes());
            assert!(!found, "{} holds a secret: {n}", f.display());
        }
    }
    sim.shutdown().await;
}

fn spawn_with_failpoint(config: &Path, failpoint: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_dpss-sync"))
        .arg("--config")
        .arg(config)
        .arg("run")
        .env("RUST_LOG", "warn")
        .env("DPSS_SYNC_FAILPOINT", failpoint)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Beside a running daemon, readers work and show it as the writer; a second writer exits 1
/// naming it, and with `--wait` takes over once the daemon is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_beside_the_daemon_is_refused_or_waits() {
    let sim = sim_with(20, "slow-jobs=3s").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = daemon_config(&sim, dir.path(), port);
    let mut daemon = spawn_daemon(&config);
    wait_for(port, "/healthz", 200, Duration::from_secs(30)).await;
    let status = run_child(&config, &["status"], None);
    assert!(status.status.success());
    let text = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        text.contains(&format!("`run` (pid {}", daemon.id())),
        "{text}"
    );
    assert!(run_child(&config, &["plan"], None).status.success());
    let second = run_child(&config, &["sync"], None);
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr).into_owned();
    assert!(
        err.contains("another writer holds the state")
            && err.contains(&format!("`run` (pid {}", daemon.id()))
            && err.contains("--wait"),
        "{err}"
    );
    let waiting = Command::new(env!("CARGO_BIN_EXE_dpss-sync"))
        .arg("--config")
        .arg(&config)
        .args(["sync", "--wait", "2m"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    sigterm(&daemon);
    assert!(daemon.wait().unwrap().success());
    let out = waiting.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sim.shutdown().await;
}

/// A live daemon with one configuration line replaced (`edit`: from, to) and `failpoint` armed.
#[cfg(feature = "failpoints")]
async fn daemon_at_failpoint(
    sim: &dpss_sync::sim::SimHandle,
    dir: &Path,
    port: u16,
    edit: (&str, &str),
    failpoint: &str,
) -> Child {
    let config = daemon_config(sim, dir, port);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(edit.0, edit.1);
    std::fs::write(&config, text).unwrap();
    let daemon = spawn_with_failpoint(&config, failpoint);
    wait_for(port, "/healthz", 200, Duration::from_secs(30)).await;
    daemon
}

/// A cycle that panics is counted and ends; the next tick runs (the flag is cleared) and the
/// daemon stays alive.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_cycle_does_not_wedge_the_daemon() {
    let sim = sim_with(20, "").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let edit = ("schedule = \"0 0 0 1 1 *\"", "schedule = \"* * * * * *\"");
    let mut daemon =
        daemon_at_failpoint(&sim, dir.path(), port, edit, "after-download:panic").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = wait_for(port, "/metrics", 200, Duration::from_secs(5)).await;
        if metric(&metrics, "dpss_sync_cycle_panics_total", &[]) >= 2.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no second cycle panicked: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(get(port, "/healthz").await.unwrap().0, 200);
    sigterm(&daemon);
    assert!(daemon.wait().unwrap().success());
    sim.shutdown().await;
}

/// A cycle stuck far past api.job_timeout turns /healthz to 503, so a supervisor restarts it.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_cycle_turns_healthz_unavailable() {
    let sim = sim_with(20, "").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let edit = ("job_timeout = \"2m\"", "job_timeout = \"1s\"");
    let mut daemon = daemon_at_failpoint(&sim, dir.path(), port, edit, "after-download:hang").await;
    let body = wait_for(port, "/healthz", 503, Duration::from_secs(30)).await;
    assert!(
        body.contains("wedged") && body.contains("a cycle has been running since"),
        "{body}"
    );
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    sim.shutdown().await;
}

/// `trigger` asks the running daemon (which holds the writer lease, so no second process may
/// sync) to sync or backfill now; it waits for the run and prints its report as `sync` would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_runs_a_sync_or_backfill_in_the_daemon_and_reports_it() {
    let sim = sim_with(20, "").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = daemon_config(&sim, dir.path(), port);
    let trigger = |args: &[&str]| {
        Command::new(bin())
            .env("RUST_LOG", "warn")
            .arg("--config")
            .arg(&config)
            .arg("trigger")
            .args(args)
            .output()
            .unwrap()
    };
    let absent = trigger(&["sync"]);
    assert_eq!(absent.status.code(), Some(1));
    let err = String::from_utf8_lossy(&absent.stderr);
    assert!(
        err.contains("server.admin_token_file") && err.contains("dpss-sync run"),
        "{err}"
    );

    let mut child = spawn_daemon(&config);
    wait_for(port, "/readyz", 200, Duration::from_secs(60)).await;
    let jobs_before = sim.state.jobs_created();
    let synced = trigger(&["sync", "--json"]);
    let out = String::from_utf8_lossy(&synced.stdout);
    assert!(
        synced.status.success(),
        "{out} {}",
        String::from_utf8_lossy(&synced.stderr)
    );
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["command"], "sync");
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["products"][0]["product"], "hid_work_orders");
    assert!(
        sim.state.jobs_created() > jobs_before,
        "the daemon ran a cycle"
    );

    let day = days_before_today(5)[0].to_string();
    let backfilled = trigger(&["backfill", "--from", &day, "--to", &day, "--force"]);
    let text = String::from_utf8_lossy(&backfilled.stdout);
    assert!(backfilled.status.success(), "{text}");
    assert!(
        text.contains(&day) && text.contains("committed"),
        "the report names the day's window: {text}"
    );
    let named = trigger(&[
        "backfill",
        "--from",
        &day,
        "--to",
        &day,
        "--product",
        "hid_work_orders",
    ]);
    assert!(
        named.status.success(),
        "a product the daemon has is accepted"
    );
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    sim.shutdown().await;
}

/// The admin endpoint is for `dpss-sync trigger` on this host, never for a web page: a
/// browser's CORS "simple request" (an Origin, `text/plain`, no preflight) to the loopback port
/// is refused and starts nothing, as is a request without the token; `trigger` still works. A
/// thousand idle connections held open do not keep `/healthz` from answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoint_refuses_web_pages_and_idle_connections_do_not_starve_health() {
    let sim = sim_with(20, "").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = daemon_config(&sim, dir.path(), port);
    let mut child = spawn_daemon(&config);
    wait_for(port, "/readyz", 200, Duration::from_secs(60)).await;
    let token = std::fs::read_to_string(dir.path().join("state/admin.token")).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("state/admin.token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let jobs_before = sim.state.jobs_created();
    let http = reqwest::Client::new();
    let post = |path: &str| http.post(format!("http://127.0.0.1:{port}{path}"));
    for path in [
        "/admin/trigger/sync",
        "/admin/trigger/backfill?from=2026-01-01&to=2026-01-02&force=true",
    ] {
        let page = post(path)
            .header("Origin", "http://evil.example")
            .header("Content-Type", "text/plain")
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 403, "{path}");
        // Even with the token: a page that somehow had it is still a page.
        let with_token = post(path)
            .header("Origin", "http://evil.example")
            .bearer_auth(token.trim())
            .send()
            .await
            .unwrap();
        assert_eq!(with_token.status(), 403, "{path}");
        let anonymous = post(path).send().await.unwrap();
        assert_eq!(anonymous.status(), 401, "{path}");
        let wrong = post(path).bearer_auth("guess").send().await.unwrap();
        assert_eq!(wrong.status(), 401, "{path}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sim.state.jobs_created(), jobs_before, "nothing started");

    let synced = Command::new(bin())
        .env("RUST_LOG", "warn")
        .arg("--config")
        .arg(&config)
        .args(["trigger", "sync", "--json"])
        .output()
        .unwrap();
    assert!(
        synced.status.success(),
        "{}",
        String::from_utf8_lossy(&synced.stderr)
    );
    assert!(
        sim.state.jobs_created() > jobs_before,
        "trigger ran a cycle"
    );

    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        );
    }
    let asked = Instant::now();
    let health = tokio::time::timeout(Duration::from_secs(5), get(port, "/healthz"))
        .await
        .expect("/healthz answers beside 1,000 idle connections");
    assert_eq!(health.map(|(s, _)| s), Some(200));
    assert!(asked.elapsed() < Duration::from_secs(5));
    // A connection that sends no request is closed once the header-read timeout (10 s) passes.
    let mut one = idle.pop().unwrap();
    drop(idle);
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::io::AsyncReadExt::read(&mut one, &mut buf),
    )
    .await
    .expect("the server closes an idle connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    sim.shutdown().await;
}

/// Two products in one daemon: each runs on its own schedule, under the one writer lease, and
/// the metrics and `status` name each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_daemon_runs_every_product_on_its_own_schedule() {
    let sim = sim_with(48, "").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = daemon_config(&sim, dir.path(), port);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "[products.atm_temperature_stats]\nsubscription_id = \"{}\"\nfile_type = \"parquet\"\nschedule = \"*/3 * * * * *\"\n",
        sim.state.config().temperature_subscription_id
    ));
    std::fs::write(&config, text).unwrap();
    let mut child = spawn_daemon(&config);
    wait_for(port, "/readyz", 200, Duration::from_secs(60)).await;
    let cycles = |m: &str, product: &str| {
        metric(
            m,
            "dpss_sync_cycles_total",
            &[&format!("product=\"{product}\""), "outcome=\"ok\""],
        )
    };
    // HID's schedule is once a year, so it ran its start-up cycle only; the temperatures' every
    // three seconds.
    let deadline = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        let m = wait_for(port, "/metrics", 200, Duration::from_secs(5)).await;
        if cycles(&m, "atm_temperature_stats") >= 3.0 {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "the temperatures' schedule did not run: {m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(cycles(&metrics, "hid_work_orders"), 1.0, "{metrics}");
    for product in ["hid_work_orders", "atm_temperature_stats"] {
        let p = format!("product=\"{product}\"");
        assert!(
            metric(&metrics, "dpss_sync_rows_written_total", &[&p]) > 0.0,
            "{product}"
        );
        assert!(metrics.contains(&format!("dpss_sync_watermark_age_seconds{{{p}}}")));
    }
    let status = run_child(&config, &["status", "--json"], None);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["writer"]["command"], "run", "{status}");
    let names: Vec<&str> = status["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["product"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["atm_temperature_stats", "hid_work_orders"]);
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    sim.shutdown().await;
}
