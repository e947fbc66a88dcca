//! What commands print: run summaries, `status`, `check-config`.

use std::process::ExitCode;

use serde_json::json;

use super::CliError;
use crate::api::DpssClient;
use crate::config::Settings;
use crate::lake::Lake;
use crate::lake::delta::TableKind;
use crate::product::Product;
use crate::sync::{Pipeline, RunReport};

/// A run's totals, as `--json` shows them.
#[derive(Debug, serde::Serialize)]
pub struct Totals {
    pub windows_committed: i64,
    pub windows_failed: i64,
    pub rows_read: u64,
    pub rows_written: u64,
    pub rows_quarantined: u64,
    pub rows_duplicate: u64,
}

/// One product's run, as `--json` shows it.
#[derive(Debug, serde::Serialize)]
pub struct ProductRun<'a> {
    pub product: &'static str,
    pub run_id: i64,
    pub ok: bool,
    pub notes: &'a [String],
    pub totals: Totals,
    pub windows: &'a [crate::sync::WindowReport],
}

impl<'a> ProductRun<'a> {
    pub fn new(product: Product, report: &'a RunReport) -> Self {
        let t = report.totals();
        Self {
            product: product.config_name(),
            run_id: report.run_id,
            ok: report.ok(),
            notes: &report.notes,
            totals: Totals {
                windows_committed: t.committed,
                windows_failed: t.failed,
                rows_read: t.counts.read,
                rows_written: t.counts.written,
                rows_quarantined: t.counts.quarantined,
                rows_duplicate: t.counts.duplicates,
            },
            windows: &report.windows,
        }
    }
}

/// How a command reports: text for people, one JSON document for scripts, or (`--quiet`) no
/// text at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
    Quiet,
}

/// The reports of `sync`, `backfill` and `import`: per product in text, or one document
/// `{"command", "ok", "products": [...]}`.
pub fn print_runs(command: &str, runs: &[(Product, RunReport)], output: Output) {
    crate::progress::finish();
    match output {
        Output::Quiet => {}
        Output::Json => {
            let products: Vec<ProductRun> =
                runs.iter().map(|(p, r)| ProductRun::new(*p, r)).collect();
            let doc = json!({
                "command": command,
                "ok": runs.iter().all(|(_, r)| r.ok()),
                "products": products,
            });
            println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
        }
        Output::Text => {
            for (product, report) in runs {
                print_run(*product, report);
            }
        }
    }
}

pub fn print_run(product: Product, report: &RunReport) {
    for n in &report.notes {
        println!("note: {n}");
    }
    let t = report.totals();
    println!(
        "{product}: run {} — {} window(s) committed, {} failed; rows read {}, written {}, quarantined {}, duplicates collapsed {}",
        report.run_id,
        t.committed,
        t.failed,
        t.counts.read,
        t.counts.written,
        t.counts.quarantined,
        t.counts.duplicates
    );
    for w in &report.windows {
        match (&w.error, &w.counts) {
            (None, Some(c)) => println!(
                "  {:<24} committed  read {:>9} written {:>9} quarantined {:>6} duplicates {:>5}  job {}",
                w.key,
                c.read,
                c.written,
                c.quarantined,
                c.duplicates,
                w.job_id.as_deref().unwrap_or("-")
            ),
            (Some(e), _) => println!("  {:<24} FAILED     {e}", w.key),
            (None, None) => println!("  {:<24} (nothing)", w.key),
        }
    }
}

/// What `plan` shows of one product: `{"product", "watermark", "today", "windows": [...],
/// "waiting": [...]}`.
pub fn plan_doc(
    product: Product,
    watermark: Option<chrono::NaiveDate>,
    today: chrono::NaiveDate,
    preview: &crate::sync::Preview,
) -> serde_json::Value {
    let windows: Vec<_> = preview
        .windows
        .iter()
        .map(|(plan, existing)| {
            json!({
                "key": plan.key,
                "kind": plan.kind,
                "from": plan.from,
                "to": plan.to,
                "tokens": plan.tokens,
                "reason": plan.reason,
                "last_stage": existing.as_ref().map(|w| w.stage),
                "attempts": existing.as_ref().map(|w| w.attempts).unwrap_or(0),
            })
        })
        .collect();
    let waiting: Vec<_> = preview
        .deferred
        .iter()
        .map(|(d, w)| {
            json!({
                "key": d.key,
                "until": d.until,
                "failures": w.failures,
                "error": w.error,
            })
        })
        .collect();
    json!({
        "product": product.config_name(),
        "watermark": watermark,
        "today": today,
        "windows": windows,
        "waiting": waiting,
    })
}

/// `plan`'s documents as text, or as one `{"products": [...]}`.
pub fn print_plan(docs: &[serde_json::Value], output: Output) {
    match output {
        Output::Quiet => {}
        Output::Json => {
            let doc = json!({ "products": docs });
            println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
        }
        Output::Text => {
            for d in docs {
                println!(
                    "{}: watermark {}, today {} (UTC)",
                    d["product"].as_str().unwrap_or_default(),
                    d["watermark"].as_str().unwrap_or("none"),
                    d["today"].as_str().unwrap_or_default()
                );
                for w in d["windows"].as_array().into_iter().flatten() {
                    let last = w["last_stage"]
                        .as_str()
                        .map(|s| format!(" [last: {s}, {} attempt(s)]", w["attempts"]))
                        .unwrap_or_default();
                    println!(
                        "  {:<10} {}..{} tokens {}{last}\n             {}",
                        w["key"].as_str().unwrap_or_default(),
                        w["from"].as_str().unwrap_or_default(),
                        w["to"].as_str().unwrap_or_default(),
                        w["tokens"],
                        w["reason"].as_str().unwrap_or_default()
                    );
                }
                for w in d["waiting"].as_array().into_iter().flatten() {
                    println!(
                        "  {:<10} waiting until {}: failed {} run(s) in a row; last error: {}",
                        w["key"].as_str().unwrap_or_default(),
                        w["until"].as_str().unwrap_or_default(),
                        w["failures"],
                        w["error"].as_str().unwrap_or("-")
                    );
                }
            }
        }
    }
}

/// What `status` says of a product's table: its format and, for Delta, the version readers see
/// and the last commit. Reading the log changes nothing, so it runs beside the daemon.
async fn table_status(lake: &Lake, product: Product) -> serde_json::Value {
    if !lake.is_delta() {
        return json!({ "format": "parquet" });
    }
    match lake.open_table(product, TableKind::Data).await {
        Ok(None) => json!({ "format": "delta", "version": null }),
        Ok(Some(t)) => json!({
            "format": "delta",
            "location": t.display(),
            "version": t.version(),
            "committed_at": t.committed_at(),
            "txn": t.txn_version(product).await.ok().flatten(),
            "files": t.all_files().count(),
        }),
        Err(e) => json!({ "format": "delta", "error": e.to_string() }),
    }
}

pub async fn print_status(p: &Pipeline, as_json: bool) -> Result<(), CliError> {
    let mut products = Vec::new();
    for (product, _) in p.settings.products.iter() {
        let watermark = p.state.watermark(*product).await?;
        let windows = p.state.windows(*product).await?;
        let in_flight: Vec<_> = windows
            .iter()
            .filter(|w| w.stage.has_job() || w.stage == crate::state::Stage::Planned)
            .cloned()
            .collect();
        let failed: Vec<_> = windows
            .iter()
            .filter(|w| w.stage == crate::state::Stage::Failed)
            .cloned()
            .collect();
        let recent: Vec<_> = {
            let mut c: Vec<_> = windows
                .iter()
                .filter(|w| w.committed_at.is_some())
                .cloned()
                .collect();
            c.sort_by(|a, b| b.committed_at.cmp(&a.committed_at));
            c.truncate(10);
            c
        };
        let partitions = p.state.partition_days(*product).await?.len();
        let table = table_status(&p.lake, *product).await;
        products.push(json!({
            "product": product.config_name(),
            "table": table,
            "watermark": watermark,
            "watermark_age_days": watermark.map(|w| (chrono::Utc::now().date_naive() - w).num_days()),
            "partitions": partitions,
            "in_flight": in_flight,
            "failed": failed,
            "recently_committed": recent,
        }));
    }
    let runs = p.state.recent_runs(5).await?;
    let db = p.settings.state.url.to_string();
    let lease = p.state.writer().await?;
    let writer = lease.as_ref().filter(|l| l.held).map(|l| l.holder.clone());
    let state_bytes = p.state.size_bytes().await?;
    let doc = json!({
        "lake": p.lake.location(),
        "state": db,
        "state_exists": !p.state.is_missing(),
        "state_bytes": state_bytes,
        "writer": writer,
        "lease": lease,
        "products": products,
        "runs": runs,
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
        return Ok(());
    }
    println!("lake:  {}", p.lake.location());
    if p.state.is_missing() {
        println!("state: {db} (does not exist yet: nothing has run)");
    } else {
        println!(
            "state: {db} ({:.1} MiB; history older than {} is pruned)",
            state_bytes as f64 / (1u64 << 20) as f64,
            humantime::format_duration(p.settings.state.history_retention)
        );
    }
    match (
        &writer,
        lease.as_ref().and_then(|l| l.epoch.zip(l.renewed_secs_ago)),
    ) {
        (Some(h), Some((epoch, age))) => {
            println!("writer: {h} holds the writer lease (epoch {epoch}, renewed {age:.1} s ago)")
        }
        (Some(h), None) => println!("writer: {h} holds the writer lease"),
        (None, _) => println!("writer: none running"),
    }
    for prod in doc["products"].as_array().expect("array") {
        println!(
            "\n{}: watermark {} ({} day(s) old), {} partition(s)",
            prod["product"].as_str().unwrap_or_default(),
            prod["watermark"].as_str().unwrap_or("none"),
            prod["watermark_age_days"],
            prod["partitions"]
        );
        let table = &prod["table"];
        if table["format"] == "delta" {
            match table["error"].as_str() {
                Some(e) => println!("  Delta table: {e}"),
                None if table["version"].is_null() => {
                    println!("  Delta table: not created yet (the first write creates it)")
                }
                None => println!(
                    "  Delta table {} at version {}, last commit {} (txn {}), {} file(s)",
                    table["location"].as_str().unwrap_or_default(),
                    table["version"],
                    table["committed_at"].as_str().unwrap_or("-"),
                    table["txn"],
                    table["files"]
                ),
            }
        }
        for (label, key) in [
            ("in flight", "in_flight"),
            ("failed", "failed"),
            ("recently committed", "recently_committed"),
        ] {
            let list = prod[key].as_array().expect("array");
            if list.is_empty() {
                continue;
            }
            println!("  {label}:");
            for w in list {
                println!(
                    "    {:<12} {:<10} job {:<38} read {} written {} quarantined {} duplicates {}{}",
                    w["key"].as_str().unwrap_or_default(),
                    w["stage"].as_str().unwrap_or_default(),
                    w["job_id"].as_str().unwrap_or("-"),
                    w["counts"]["read"],
                    w["counts"]["written"],
                    w["counts"]["quarantined"],
                    w["counts"]["duplicates"],
                    failing(w)
                );
            }
        }
    }
    println!("\nlast runs:");
    for r in &runs {
        println!(
            "  #{:<4} {:<9} {} → {}  {}  committed {} failed {}  rows read {} written {} quarantined {}{}",
            r.id,
            r.command,
            r.started_at,
            r.finished_at.as_deref().unwrap_or("(running or killed)"),
            r.outcome.as_deref().unwrap_or("-"),
            r.windows_committed,
            r.windows_failed,
            r.rows_read,
            r.rows_written,
            r.rows_quarantined,
            r.error
                .as_deref()
                .map(|e| format!("\n        error: {e}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// A window's error, and for one failing run after run, how often and when it is tried next.
fn failing(w: &serde_json::Value) -> String {
    let mut out = String::new();
    if let Some(n) = w["failures"].as_i64().filter(|n| *n > 0) {
        out.push_str(&format!(
            "\n                 failed {n} run(s) in a row; next try {}",
            w["next_attempt_at"].as_str().unwrap_or("at the next cycle")
        ));
    }
    if let Some(e) = w["error"].as_str() {
        out.push_str(&format!("\n                 error: {e}"));
    }
    out
}

/// Offline: every key parsed (already done by loading) and the state readable. Online: a token,
/// discovery with the configured tokens checked against it, and a write-read-delete probe in the
/// lake. With `--json`: `{"ok", "config": {...}, "state", "online": null | {"checks", "failures"}}`.
pub async fn check_config(
    settings: Settings,
    online: bool,
    output: Output,
) -> Result<ExitCode, CliError> {
    // Read-only, as every reader: it migrates nothing and works beside a running daemon.
    let state = match crate::state::State::open_reader(&settings.state.url).await {
        Ok(st) if st.is_missing() => "does not exist yet (the first writer command creates it)",
        Ok(_) => "readable, schema current",
        Err(e) => return Err(CliError::Failed(e.to_string())),
    };
    let products: Vec<_> = settings
        .products
        .iter()
        .map(|(p, s)| {
            json!({
                "product": p.config_name(),
                "data_product": p.data_product_id(),
                "file_type": s.file_type.as_str(),
                "schedule": s.schedule,
                "lookback_days": s.lookback_days,
            })
        })
        .collect();
    // A URL may carry a password or a signed query: shown without them.
    let shown = |u: &url::Url| crate::api::redact::redact_url(u.as_str());
    let config = json!({
        "api_base_url": shown(&settings.api.base_url),
        "token_url": shown(&settings.auth.token_url),
        "lake_url": shown(&settings.lake.url),
        "lake_format": settings.lake.format.as_str(),
        "state_path": settings.state.url.to_string(),
        "products": products,
    });
    if output == Output::Text {
        println!("configuration OK");
        println!("  api.base_url   {}", shown(&settings.api.base_url));
        println!("  auth.token_url {}", shown(&settings.auth.token_url));
        println!("  lake.url       {}", shown(&settings.lake.url));
        println!("  lake.format    {}", settings.lake.format.as_str());
        println!("  state          {}", settings.state.url);
        for (p, s) in &settings.products {
            println!(
                "  products.{p} (data product {}): file_type {}, schedule \"{}\", lookback {} day(s)",
                p.data_product_id(),
                s.file_type,
                s.schedule,
                s.lookback_days
            );
        }
        println!("  state: {state}");
    }
    let checks = if online {
        Some(online_checks(&settings).await?)
    } else {
        None
    };
    let failed = checks.as_ref().is_some_and(|(_, f)| !f.is_empty());
    match output {
        Output::Json => {
            let doc = json!({
                "ok": !failed,
                "config": config,
                "state": state,
                "online": checks.as_ref().map(|(ok, failures)| json!({
                    "checks": ok,
                    "failures": failures,
                })),
            });
            println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
        }
        Output::Text => {
            for line in checks.iter().flat_map(|(ok, _)| ok) {
                println!("  {line}");
            }
            if checks.is_some() && !failed {
                println!("online checks OK");
            }
        }
        Output::Quiet => {}
    }
    match checks {
        Some((_, failures)) if !failures.is_empty() => Err(CliError::Failed(format!(
            "online checks failed:\n  {}",
            failures.join("\n  ")
        ))),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// Each product's Delta tables: created where missing, refused (the difference named) where
/// their schema or partitioning is not what this tool writes.
async fn delta_checks(
    lake: &Lake,
    settings: &Settings,
    passed: &mut Vec<String>,
    failures: &mut Vec<String>,
) {
    for product in settings.products.keys() {
        for kind in [TableKind::Data, TableKind::Quarantine] {
            match lake.ensure_table(*product, kind).await {
                Ok(t) => passed.push(format!(
                    "{product}: Delta table {} OK at version {}",
                    t.display(),
                    t.version()
                )),
                Err(e) => failures.push(format!("{product}: {e}")),
            }
        }
    }
}

/// The online checks: what passed, and what failed.
async fn online_checks(settings: &Settings) -> Result<(Vec<String>, Vec<String>), CliError> {
    settings.require_api()?;
    let client = DpssClient::from_settings(settings)?;
    let (mut passed, mut failures) = (Vec::new(), Vec::new());
    for (product, p) in &settings.products {
        let sub = p.subscription_id.as_deref().unwrap_or_default();
        match client.parameters(sub).await {
            Ok(tokens) => {
                let names: Vec<&str> = tokens.iter().map(|t| t.name.as_str()).collect();
                passed.push(format!(
                    "{product}: token and discovery OK; the API accepts tokens {}",
                    names.join(", ")
                ));
                let sent = |name: &str| {
                    product
                        .window_tokens
                        .iter()
                        .any(|w| w.name.eq_ignore_ascii_case(name))
                };
                for w in &product.window_tokens {
                    if !names.iter().any(|n| n.eq_ignore_ascii_case(&w.name)) {
                        failures.push(format!(
                            "{product}: discovery does not list the `{}` token this product selects days with",
                            w.name
                        ));
                    }
                }
                for f in &product.filters {
                    if !names.iter().any(|n| n.eq_ignore_ascii_case(&f.token)) {
                        failures.push(format!(
                            "{product}: discovery does not list the `{}` token of the declared filter `{}`",
                            f.token, f.flag
                        ));
                    }
                }
                for t in tokens.iter().filter(|t| t.required() && !sent(&t.name)) {
                    failures.push(format!(
                        "{product}: the API requires token `{}`, which dpss-sync does not send",
                        t.name
                    ));
                }
            }
            Err(e) => failures.push(format!("{product}: {e}")),
        }
    }
    match Lake::open(&settings.lake, &settings.work_dir()) {
        Ok(lake) => match lake.probe().await {
            Ok(()) => {
                passed.push("lake: write-read-delete probe OK".into());
                if lake.is_delta() {
                    delta_checks(&lake, settings, &mut passed, &mut failures).await;
                }
            }
            Err(e) => failures.push(format!("lake: {e}")),
        },
        Err(e) => failures.push(format!("lake: {e}")),
    }
    Ok((passed, failures))
}
