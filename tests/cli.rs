//! The binary as operators use it: exit codes, messages that name the key, environment
//! overrides, and each command's output.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use chrono::Utc;
use common::*;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dpss-sync"));
    c.env("RUST_LOG", "warn");
    for (k, _) in std::env::vars() {
        if k.starts_with("DPSS_SYNC") {
            c.env_remove(k);
        }
    }
    c
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn bad_config_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (body, key) in [
        ("[api]\npoll_intervall = \"30s\"\n", "api.poll_intervall"),
        ("[api]\npoll_interval = \"thirty\"\n", "api.poll_interval"),
        (
            "[products.hid_work_orders]\nschedule = \"*/5 * * * *\"\n",
            "products.hid_work_orders.schedule",
        ),
        ("[lake]\nurl = \"ftp://x\"\n", "lake.url"),
    ] {
        let f = write(dir.path(), "bad.toml", body);
        let o = bin()
            .arg("--config")
            .arg(&f)
            .arg("check-config")
            .output()
            .unwrap();
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{body}: {err}");
        assert!(err.contains(&format!("`{key}`")), "{body}: {err}");
        assert!(
            err.contains("bad.toml"),
            "the message says where the value came from: {err}"
        );
    }
    let o = bin()
        .args(["--config", "/nonexistent.toml", "status"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("/nonexistent.toml"));
    // Malformed TOML.
    let f = write(dir.path(), "broken.toml", "[api\nbase_url = ");
    let o = bin()
        .arg("--config")
        .arg(&f)
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    // A parse error names its place, never the line: it may be the secret's.
    let f = write(
        dir.path(),
        "leaky.toml",
        "[auth]\nclient_id = \"c\"\nclient_secret = \"hunter2-in-a-broken-line\n",
    );
    let o = bin()
        .arg("--config")
        .arg(&f)
        .arg("check-config")
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err.contains("line 3") && err.contains("leaky.toml"),
        "{err}"
    );
    assert!(!format!("{out}{err}").contains("hunter2"), "{err}");
}

/// `check-config` shows where the token, the API and the lake are, never a URL's password or
/// query string (a tenant key, a signature).
#[test]
fn check_config_prints_no_url_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "c.toml",
        "[api]\nbase_url = \"https://api-user:api-pass@k8s.example\"\n[auth]\ntoken_url = \"https://user:s3cr3t-pw@idp.example/connect/token?tenant_key=t0p-s3cret\"\n[products.hid_work_orders]\n",
    );
    for json in [false, true] {
        let mut cmd = bin();
        cmd.arg("--config").arg(&f).arg("check-config");
        if json {
            cmd.arg("--json");
        }
        let o = cmd.output().unwrap();
        let (out, err) = text(&o);
        assert!(o.status.success(), "{err}");
        for secret in ["s3cr3t-pw", "t0p-s3cret", "api-pass", "user:"] {
            assert!(
                !out.contains(secret) && !err.contains(secret),
                "{secret}: {out}"
            );
        }
        assert!(out.contains("idp.example/connect/token"), "{out}");
    }
}

#[test]
fn missing_secret_and_env_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "c.toml",
        &format!(
            "[api]\nsubscriber_id = \"s\"\n[auth]\nclient_id = \"c\"\n[state]\nurl = \"sqlite://{}/s.db\"\n[products.hid_work_orders]\nsubscription_id = \"x\"\n",
            dir.path().display()
        ),
    );
    let o = bin().arg("--config").arg(&f).arg("sync").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).1.contains("`auth.client_secret`")
            && text(&o).1.contains("DPSS_SYNC__AUTH__CLIENT_SECRET")
    );
    // The documented variable names reach the documented keys.
    let o = bin()
        .arg("--config")
        .arg(&f)
        .arg("check-config")
        .env("DPSS_SYNC__AUTH__CLIENT_SECRET", "from-env-secret")
        .env("DPSS_SYNC__LAKE__URL", "s3://bucket/prefix")
        .env("DPSS_SYNC__PRODUCTS__HID_WORK_ORDERS__LOOKBACK_DAYS", "5")
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("s3://bucket/prefix") && out.contains("lookback 5 day(s)"),
        "{out}"
    );
    assert!(!out.contains("from-env-secret") && !err.contains("from-env-secret"));
    let o = bin()
        .arg("--config")
        .arg(&f)
        .arg("check-config")
        .env("DPSS_SYNC__API__NOPE", "1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).1.contains("`api.nope`") && text(&o).1.contains("environment"),
        "{}",
        text(&o).1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_against_the_simulator() {
    let sim = start(quick_sim("")).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "dpss.toml",
        &config_text(&sim, dir.path(), "csv", 2),
    );
    let run = |args: &[&str]| bin().arg("--config").arg(&cfg).args(args).output().unwrap();

    let o = run(&["check-config", "--online"]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(text(&o).0.contains("probe OK"));

    let o = run(&["plan"]);
    let (out, _) = text(&o);
    assert!(
        out.contains("history") && out.contains("no watermark yet"),
        "{out}"
    );

    let o = run(&["sync"]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(text(&o).0.contains("1 window(s) committed, 0 failed"));

    let o = run(&["status", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let yesterday = (Utc::now().date_naive() - chrono::Duration::days(1)).to_string();
    assert_eq!(doc["products"][0]["watermark"], yesterday.as_str());
    assert_eq!(doc["runs"][0]["outcome"], "ok");
    assert!(doc["runs"][0]["rows_quarantined"].as_i64().unwrap() > 0);
    let o = run(&["status"]);
    assert!(text(&o).0.contains(&format!("watermark {yesterday}")));

    let o = run(&["plan"]);
    let (out, _) = text(&o);
    assert!(out.contains("lookback") && out.contains("today"), "{out}");

    // On-demand: typed like the lake, with the cap warning when it is reached.
    let wo = sim
        .state
        .rows_for_day(
            Utc::now().date_naive() - chrono::Duration::days(3),
            Utc::now(),
        )
        .into_iter()
        .find(|r| r.is_valid())
        .unwrap()
        .work_order_id;
    let o = run(&[
        "query",
        "--product",
        "hid_work_orders",
        "--work-order-id",
        &wo,
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert!(
        !rows.is_empty()
            && rows
                .iter()
                .all(|r| r["work_order_id"] == wo.as_str() && r["phase"].is_i64())
    );
    let o = run(&["query", "--product", "hid_work_orders", "--format", "csv"]);
    let (out, err) = text(&o);
    assert!(out.starts_with(
        "service_point_id,phase,issue_id,status,status_datetime,reason,event_date,work_order_id"
    ));
    assert!(err.contains("at most 1000 rows"), "{err}");
    let o = run(&[
        "query",
        "--product",
        "hid_work_orders",
        "--status-datetime",
        "yesterday",
    ]);
    assert_eq!(o.status.code(), Some(2));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_of_export_files_matches_sync() {
    use std::collections::BTreeMap;
    let sim = start(quick_sim("")).await;
    let c = client(&sim);
    let sub = sim.state.config().subscription_id.clone();
    let dir = tempfile::tempdir().unwrap();
    let days = days_before_today(2);
    let mut files = Vec::new();
    for (i, ft) in [
        dpss_sync::config::FileType::Orc,
        dpss_sync::config::FileType::Json,
    ]
    .into_iter()
    .enumerate()
    {
        let tokens = BTreeMap::from([("StatusDatetime".to_string(), days[i].to_string())]);
        let job = c.create_batch(&sub, ft, &tokens).await.unwrap();
        let url = loop {
            let j = c.job_status(&sub, &job.job_id).await.unwrap();
            if let Some(u) = j.download_url {
                break u;
            }
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        };
        let f = dir.path().join(format!("export-{i}.zip"));
        c.download(&url, &f, u64::MAX).await.unwrap();
        files.push(f);
    }
    let cfg = write(
        dir.path(),
        "dpss.toml",
        &config_text(&sim, dir.path(), "csv", 2),
    );
    let o = bin()
        .arg("--config")
        .arg(&cfg)
        .args(["import", "--product", "hid_work_orders"])
        .args(&files)
        .output()
        .unwrap();
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(
        lake_rows(dir.path()).await,
        expected(&sim, days.clone(), Utc::now())
    );
    // Importing again replaces, never doubles.
    let o = bin()
        .arg("--config")
        .arg(&cfg)
        .args(["import", "--product", "hid_work_orders"])
        .args(&files)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(
        lake_rows(dir.path()).await,
        expected(&sim, days, Utc::now())
    );
    let o = bin()
        .arg("--config")
        .arg(&cfg)
        .args(["import", "--product", "hid_work_orders", "/nope.csv"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    sim.shutdown().await;
}

#[test]
fn demo_runs_on_embedded_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let o = bin().arg("demo").current_dir(dir.path()).output().unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("1 window(s) committed, 0 failed"), "{out}");
    assert!(out.contains("duckdb -c"));
    assert!(dir.path().join("lake/hid_work_orders").is_dir());
    assert!(dir.path().join("state/state.db").is_file());
    // Standard error is a pipe here: logs only, no progress line, no per-request lines.
    assert!(
        !err.contains("normalizing:") && !err.contains("\r"),
        "{err}"
    );
    assert!(!err.contains("vendor request"), "{err}");
}

/// Standard error on a pseudo-terminal: the progress line is drawn through every phase, and log
/// lines still arrive whole.
#[test]
fn demo_on_a_terminal_draws_progress() {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut master, slave) = {
        let (mut m, mut s) = (0, 0);
        // SAFETY: openpty fills two descriptors this test then owns.
        let rc = unsafe {
            libc::openpty(
                &mut m,
                &mut s,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        unsafe { (std::fs::File::from_raw_fd(m), OwnedFd::from_raw_fd(s)) }
    };
    let dir = tempfile::tempdir().unwrap();
    let mut child = bin()
        .arg("demo")
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::from(slave))
        .spawn()
        .unwrap();
    // Drained as it comes: a full terminal buffer would stall the child.
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once the child (the last holder of the terminal) has exited.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(child.wait().unwrap().success(), "{out}");
    let terminal = reader.join().unwrap();
    for phase in [
        "waiting for the vendor's export job",
        "downloading:",
        "normalizing:",
        "writing partitions",
    ] {
        assert!(terminal.contains(phase), "no `{phase}` in: {terminal}");
    }
    assert!(
        terminal.contains("vendor job finished"),
        "log lines still print"
    );
    assert!(out.contains("1 window(s) committed"), "{out}");
}

#[test]
fn simulate_serves_the_documented_walkthrough() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = bin()
        .args([
            "simulate",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--job-delay",
            "100ms",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The banner's reader goes away at once: the server keeps serving.
    drop(child.stdout.take());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let outcome = rt.block_on(async {
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let mut token = None;
        for _ in 0..100 {
            if let Ok(r) = http
                .post(format!("{base}/connect/token/"))
                .form(&[("grant_type", "client_credentials"), ("client_id", "dpss-sim-client"), ("client_secret", "dpss-sim-secret"), ("scope", "DPSSSubscriberApi")])
                .send()
                .await
            {
                token = r.json::<serde_json::Value>().await.ok();
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let token = token.expect("simulator answered")["access_token"].as_str().unwrap().to_string();
        let r = http
            .post(format!("{base}/dpss/api/v1/subscriptions/00000000-0000-4000-8000-00000000cafe/batch-request"))
            .bearer_auth(&token)
            .header("Itron-CorrelationId", uuid::Uuid::new_v4().to_string())
            .header("DataSubscriberId", "00000000-0000-4000-8000-00000000beef")
            .json(&serde_json::json!({"FileType": "Json", "Tokens": {"StatusDatetime": "", "WorkOrderId": ""}, "isOhsRequest": false}))
            .send()
            .await
            .unwrap();
        r.status().as_u16()
    });
    assert!(child.try_wait().unwrap().is_none(), "the simulator stopped");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(outcome, 202);
}

/// A simulator, a configuration file pointing at it, yesterday's date and a one-row export file.
struct Setup {
    sim: dpss_sync::sim::SimHandle,
    _dir: tempfile::TempDir,
    cfg: std::path::PathBuf,
    day: String,
    csv: String,
}

async fn setup() -> Setup {
    let sim = sim_with(20, "").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "c.toml",
        &config_text(&sim, dir.path(), "csv", 2),
    );
    let csv = write(
        dir.path(),
        "export.csv",
        "ServicePointId,Phase,IssueId,Status,StatusDatetime,Reason,EventDate,WorkOrderId\n1,1,2,New,2024-06-15T00:00:00Z,r,2024-06-15,3\n",
    );
    Setup {
        sim,
        _dir: dir,
        cfg,
        day: days_before_today(1)[0].to_string(),
        csv: csv.display().to_string(),
    }
}

/// A reader that goes away (`dpss-sync status | head -1`; here it leaves before the first line,
/// so every write the command makes finds the pipe closed): every command that prints ends
/// quietly, by SIGPIPE or with 0, never with a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_leaves_early_ends_each_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let Setup {
        sim,
        cfg,
        day,
        csv,
        _dir: _kept,
    } = setup().await;
    let commands: [&[&str]; 8] = [
        &["backfill", "--from", &day, "--to", &day],
        &["sync"],
        &["status"],
        &["plan"],
        &["check-config"],
        &["import", "--product", "hid_work_orders", &csv],
        &[
            "query",
            "--product",
            "hid_work_orders",
            "--status-datetime",
            &day,
        ],
        &["demo"],
    ];
    let demo_dir = tempfile::tempdir().unwrap();
    for args in commands {
        let mut child = bin()
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .current_dir(demo_dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let (_, err) = text(&out);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
            "{args:?}: {:?} {err}",
            out.status
        );
    }
    sim.shutdown().await;
}

/// The keys of a JSON object, sorted.
fn keys(v: &serde_json::Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

fn json_of(o: &Output, what: &str) -> serde_json::Value {
    let (out, err) = text(o);
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("{what}: not one JSON document ({e}): {out}{err}"))
}

/// Every command that reports prints one JSON document with `--json`, logs kept on stderr; the
/// field names are pinned here, as scripts depend on them (the README shows each shape).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_report_is_one_json_document_with_pinned_fields() {
    let Setup {
        sim,
        cfg,
        day,
        csv,
        _dir: _kept,
    } = setup().await;
    let run = |args: &[&str]| {
        bin()
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .env("RUST_LOG", "info")
            .output()
            .unwrap()
    };
    let run_keys = ["command", "ok", "products"];
    let product_keys = ["notes", "ok", "product", "run_id", "totals", "windows"];
    let total_keys = [
        "rows_duplicate",
        "rows_quarantined",
        "rows_read",
        "rows_written",
        "windows_committed",
        "windows_failed",
    ];
    let window_keys = ["counts", "error", "job_id", "key"];
    let check_run = |doc: &serde_json::Value, command: &str| {
        assert_eq!(keys(doc), run_keys);
        assert_eq!(doc["command"], command);
        assert_eq!(doc["ok"], true);
        let p = &doc["products"][0];
        assert_eq!(keys(p), product_keys);
        assert_eq!(keys(&p["totals"]), total_keys);
        assert_eq!(keys(&p["windows"][0]), window_keys);
        assert_eq!(
            keys(&p["windows"][0]["counts"]),
            ["duplicates", "quarantined", "read", "written"]
        );
    };
    let backfill = run(&["backfill", "--from", &day, "--to", &day, "--json"]);
    assert!(backfill.status.success(), "{:?}", text(&backfill));
    assert!(
        text(&backfill).1.contains("window committed"),
        "logs stay on stderr"
    );
    check_run(&json_of(&backfill, "backfill"), "backfill");
    let sync = run(&["sync", "--json"]);
    check_run(&json_of(&sync, "sync"), "sync");
    let import = run(&["import", "--product", "hid_work_orders", "--json", &csv]);
    check_run(&json_of(&import, "import"), "import");

    let plan = json_of(&run(&["plan", "--json"]), "plan");
    assert_eq!(keys(&plan), ["products"]);
    let p = &plan["products"][0];
    assert_eq!(
        keys(p),
        ["product", "today", "waiting", "watermark", "windows"]
    );
    assert_eq!(
        keys(&p["windows"][0]),
        [
            "attempts",
            "from",
            "key",
            "kind",
            "last_stage",
            "reason",
            "to",
            "tokens"
        ]
    );

    let check = json_of(
        &run(&["check-config", "--online", "--json"]),
        "check-config",
    );
    assert_eq!(keys(&check), ["config", "ok", "online", "state"]);
    assert_eq!(check["ok"], true);
    assert_eq!(
        keys(&check["config"]),
        [
            "api_base_url",
            "lake_format",
            "lake_url",
            "products",
            "state_path",
            "token_url"
        ]
    );
    assert_eq!(keys(&check["online"]), ["checks", "failures"]);

    let status = json_of(&run(&["status", "--json"]), "status");
    assert!(status["state_bytes"].as_u64().unwrap() > 0, "{status}");
    assert_eq!(
        keys(&status),
        [
            "lake",
            "lease",
            "products",
            "runs",
            "state",
            "state_bytes",
            "state_exists",
            "writer"
        ]
    );
    assert_eq!(
        keys(&status["products"][0]),
        [
            "failed",
            "in_flight",
            "partitions",
            "product",
            "recently_committed",
            "table",
            "watermark",
            "watermark_age_days"
        ]
    );
    assert_eq!(status["products"][0]["table"]["format"], "parquet");

    // --quiet: no text report, no logs below errors.
    let quiet = run(&["--quiet", "sync"]);
    assert!(quiet.status.success());
    assert_eq!(text(&quiet), (String::new(), String::new()));

    let demo_dir = tempfile::tempdir().unwrap();
    let demo = bin()
        .args(["demo", "--json"])
        .current_dir(demo_dir.path())
        .output()
        .unwrap();
    let doc = json_of(&demo, "demo");
    assert_eq!(keys(&doc), ["products", "seconds", "simulator"]);
    let names: Vec<&str> = doc["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["product"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["atm_temperature_stats", "hid_work_orders"]);
    for p in doc["products"].as_array().unwrap() {
        assert_eq!(keys(p), ["product", "run", "summary"]);
        assert_eq!(keys(&p["run"]), product_keys);
        assert_eq!(
            keys(&p["summary"]),
            [
                "bytes",
                "delta",
                "first_window_day",
                "lake",
                "last_window_day",
                "objects",
                "partitions",
                "quarantined",
                "rows",
                "seconds",
                "state",
                "watermark",
                "window_days"
            ]
        );
        assert_eq!(p["summary"]["delta"], false);
        assert!(p["summary"]["rows"].as_u64().unwrap() > 0, "{p}");
        assert!(p["summary"]["quarantined"].as_u64().unwrap() > 0, "{p}");
    }
    sim.shutdown().await;
}

/// Completion scripts and the manual come from the same definitions the binary parses with: the
/// bash script is valid bash and completes every command; the manual names them all.
#[test]
fn completions_and_the_manual_cover_every_command() {
    let commands = [
        "run",
        "sync",
        "backfill",
        "plan",
        "status",
        "check-config",
        "query",
        "import",
        "simulate",
        "demo",
        "trigger",
        "completions",
        "man",
    ];
    let bash = bin().args(["completions", "bash"]).output().unwrap();
    let (script, err) = text(&bash);
    assert!(bash.status.success(), "{err}");
    for c in commands {
        assert!(script.contains(c), "bash completion lacks `{c}`");
    }
    assert!(script.contains("--wait") && script.contains("--product"));
    let mut check = Command::new("bash")
        .args(["-n", "/dev/stdin"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(check.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    assert!(
        check.wait().unwrap().success(),
        "bash -n rejects the script"
    );
    for (shell, marker) in [
        ("zsh", "#compdef dpss-sync"),
        ("fish", "complete -c dpss-sync"),
    ] {
        let o = bin().args(["completions", shell]).output().unwrap();
        assert!(text(&o).0.contains(marker), "{shell}");
    }
    let refused = bin().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let man = bin().arg("man").output().unwrap();
    let (page, _) = text(&man);
    assert!(page.contains(".TH dpss-sync 1"), "{page}");
    for c in commands {
        // roff writes a hyphen as `\-`.
        let escaped = c.replace('-', "\\-");
        assert!(page.contains(&escaped), "the manual lacks `{c}`");
    }
    let dir = tempfile::tempdir().unwrap();
    let o = bin()
        .arg("man")
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success());
    for c in commands {
        let page = dir.path().join(format!("dpss-sync-{c}.1"));
        assert!(page.exists(), "{}", page.display());
    }
}
