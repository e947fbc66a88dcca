//! What commands print: run summaries, `status`, `check-config`.

use std::process::ExitCode;

use serde_json::json;

use super::CliError;
use crate::api::DpssClient;
use crate::config::Settings;
use crate::lake::Lake;
use crate::product::Product;
use crate::sync::{Pipeline, RunReport};

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
        products.push(json!({
            "product": product.config_name(),
            "watermark": watermark,
            "watermark_age_days": watermark.map(|w| (chrono::Utc::now().date_naive() - w).num_days()),
            "partitions": partitions,
            "in_flight": in_flight,
            "failed": failed,
            "recently_committed": recent,
        }));
    }
    let runs = p.state.recent_runs(5).await?;
    let db = &p.settings.state.path;
    let writer = crate::state::lease::is_held(db)
        .then(|| crate::state::lease::last_holder(db))
        .flatten();
    let doc = json!({
        "lake": p.lake.location(),
        "state": db,
        "state_exists": !p.state.is_missing(),
        "writer": writer,
        "products": products,
        "runs": runs,
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
        return Ok(());
    }
    println!("lake:  {}", p.lake.location());
    println!(
        "state: {}{}",
        db.display(),
        if p.state.is_missing() {
            " (does not exist yet: nothing has run)"
        } else {
            ""
        }
    );
    match &writer {
        Some(h) => println!("writer: {h} holds the writer lease"),
        None => println!("writer: none running"),
    }
    for prod in doc["products"].as_array().expect("array") {
        println!(
            "\n{}: watermark {} ({} day(s) old), {} partition(s)",
            prod["product"].as_str().unwrap_or_default(),
            prod["watermark"].as_str().unwrap_or("none"),
            prod["watermark_age_days"],
            prod["partitions"]
        );
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

/// Offline: every key parsed (already done by loading). Online: a token, discovery with the
/// configured tokens checked against it, and a write-read-delete probe in the lake.
pub async fn check_config(settings: Settings, online: bool) -> Result<ExitCode, CliError> {
    println!("configuration OK");
    println!("  api.base_url   {}", settings.api.base_url);
    println!("  auth.token_url {}", settings.auth.token_url);
    println!("  lake.url       {}", settings.lake.url);
    println!("  state          {}", settings.state.path.display());
    for (p, s) in &settings.products {
        println!(
            "  products.{p} (data product {}): file_type {}, schedule \"{}\", lookback {} day(s)",
            p.data_product_id(),
            s.file_type,
            s.schedule,
            s.lookback_days
        );
    }
    // Read-only, as every reader: it migrates nothing and works beside a running daemon.
    match crate::state::State::open_reader(&settings.state.path).await {
        Ok(st) if st.is_missing() => {
            println!("  state: does not exist yet (the first writer command creates it)")
        }
        Ok(_) => println!("  state: readable, schema current"),
        Err(e) => return Err(CliError::Failed(e.to_string())),
    }
    if !online {
        return Ok(ExitCode::SUCCESS);
    }
    settings.require_api()?;
    let client = DpssClient::from_settings(&settings)?;
    let mut failures = Vec::new();
    for (product, p) in &settings.products {
        let sub = p.subscription_id.as_deref().unwrap_or_default();
        match client.parameters(sub).await {
            Ok(tokens) => {
                let names: Vec<&str> = tokens.iter().map(|t| t.name.as_str()).collect();
                println!(
                    "  {product}: token and discovery OK; the API accepts tokens {}",
                    names.join(", ")
                );
                if !names
                    .iter()
                    .any(|n| n.eq_ignore_ascii_case(product.day_token()))
                {
                    failures.push(format!(
                        "{product}: discovery does not list the `{}` token this product filters days with",
                        product.day_token()
                    ));
                }
                for t in tokens
                    .iter()
                    .filter(|t| t.required() && !t.name.eq_ignore_ascii_case(product.day_token()))
                {
                    failures.push(format!(
                        "{product}: the API requires token `{}`, which dpss-sync does not send",
                        t.name
                    ));
                }
            }
            Err(e) => failures.push(format!("{product}: {e}")),
        }
    }
    match Lake::open(&settings.lake) {
        Ok(lake) => match lake.probe().await {
            Ok(()) => println!("  lake: write-read-delete probe OK"),
            Err(e) => failures.push(format!("lake: {e}")),
        },
        Err(e) => failures.push(format!("lake: {e}")),
    }
    if failures.is_empty() {
        println!("online checks OK");
        Ok(ExitCode::SUCCESS)
    } else {
        Err(CliError::Failed(format!(
            "online checks failed:\n  {}",
            failures.join("\n  ")
        )))
    }
}
