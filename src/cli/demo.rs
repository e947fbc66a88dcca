//! `demo`: the embedded simulator and a full first sync into ./lake, then a summary.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Duration;

use chrono::NaiveDate;

use super::CliError;
use super::report::{Output, ProductRun};
use crate::config::{DEMO_TOML, Settings, Sources};
use crate::product::Product;
use crate::sim::{self, SimConfig};
use crate::state::LeaseRequest;
use crate::sync::{Access, Pipeline};

/// Text (see [`Summary::print`]), or with `--json` one document:
/// `{"simulator", "seconds", "products": [{"product", "run": {...}, "summary": {...}}]}`.
pub async fn run(output: Output, lake_format: &str) -> Result<ExitCode, CliError> {
    let sim_cfg = SimConfig {
        job_delay: Duration::from_secs(1),
        ..SimConfig::default()
    };
    let handle = sim::spawn(sim_cfg, "127.0.0.1:0".parse().expect("addr"))
        .await
        .map_err(|e| CliError::Failed(format!("cannot start the simulator: {e}")))?;
    if output == Output::Text {
        crate::progress::println(&format!(
            "simulator on {} (seed 42, ~300 rows/day, 13 months, every built-in product)",
            handle.base_url()
        ));
    }
    let overrides = format!(
        "[api]\nbase_url = \"{}\"\n[auth]\ntoken_url = \"{}\"\n[lake]\nformat = \"{lake_format}\"\n",
        handle.base_url(),
        handle.token_url()
    );
    let settings = Settings::load(&Sources {
        files: Vec::new(),
        inline: vec![DEMO_TOML.to_string(), overrides],
        env: false,
    })?;
    let started = std::time::Instant::now();
    let lease = Access::Write(LeaseRequest::new("demo", None));
    let pipeline = Pipeline::open(settings, true, lease).await?;
    // Every built-in product, each a table of its own (`config/demo.toml` configures them all).
    let products: Vec<Product> = pipeline.settings.products.keys().copied().collect();
    let mut runs = Vec::new();
    for product in products {
        let report = pipeline.sync(product).await?;
        crate::progress::finish();
        if output == Output::Text {
            super::report::print_run(product, &report);
        }
        let summary = summarize(&pipeline, product, started.elapsed()).await?;
        runs.push((product, report, summary));
    }
    match output {
        Output::Json => {
            let products: Vec<_> = runs
                .iter()
                .map(|(p, report, summary)| {
                    serde_json::json!({
                        "product": p.config_name(),
                        "run": ProductRun::new(*p, report),
                        "summary": summary,
                    })
                })
                .collect();
            let doc = serde_json::json!({
                "simulator": handle.base_url(),
                "seconds": started.elapsed().as_secs_f64(),
                "products": products,
            });
            println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
        }
        Output::Text => {
            println!();
            println!("demo finished in {:.1}s", started.elapsed().as_secs_f64());
            for (p, _, summary) in &runs {
                summary.print(*p);
            }
        }
        Output::Quiet => {}
    }
    handle.shutdown().await;
    Ok(if runs.iter().all(|(_, r, _)| r.ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// What one product's table holds after the demo's sync.
async fn summarize(
    pipeline: &Pipeline,
    product: Product,
    elapsed: Duration,
) -> Result<Summary, CliError> {
    let failed = |e: crate::lake::LakeError| CliError::Failed(e.to_string());
    let lake = &pipeline.lake;
    let table = lake.read_table(product).await.map_err(failed)?;
    let rows: usize = table.iter().map(|(_, b)| b.num_rows()).sum();
    let partitions: BTreeSet<_> = table.iter().map(|(d, _)| *d).collect();
    let window_days = crate::lake::count_by_window_day(product, &table);
    let objects = lake.objects(product).await.map_err(failed)?;
    let quarantined: usize = lake
        .read_quarantine(product)
        .await
        .map_err(failed)?
        .iter()
        .map(|b| b.num_rows())
        .sum();
    Ok(Summary {
        seconds: elapsed.as_secs_f64(),
        first_window_day: window_days.keys().next().copied(),
        last_window_day: window_days.keys().last().copied(),
        window_days: window_days.len(),
        watermark: pipeline.state.watermark(product).await?,
        rows,
        partitions: partitions.len(),
        objects: objects.len(),
        bytes: objects.iter().map(|(_, s)| s).sum(),
        quarantined,
        lake: "./lake",
        state: "./state/state.db",
        delta: lake.is_delta(),
    })
}

/// What the demo did with one product, for people and for `--json`.
#[derive(Debug, serde::Serialize)]
struct Summary {
    seconds: f64,
    /// The first and last window days the table holds, and how many.
    first_window_day: Option<NaiveDate>,
    last_window_day: Option<NaiveDate>,
    window_days: usize,
    watermark: Option<NaiveDate>,
    rows: usize,
    partitions: usize,
    objects: usize,
    bytes: u64,
    quarantined: usize,
    lake: &'static str,
    state: &'static str,
    /// A Delta Lake table rather than the Hive layout.
    delta: bool,
}

impl Summary {
    fn print(&self, product: Product) {
        let day = |d: Option<NaiveDate>| d.map(|d| d.to_string()).unwrap_or_default();
        let name = product.config_name();
        println!(
            "{name}: days {} .. {} ({} days), watermark {}",
            day(self.first_window_day),
            day(self.last_window_day),
            self.window_days,
            self.watermark
                .map(|d| d.to_string())
                .unwrap_or_else(|| "none".into())
        );
        println!(
            "  rows in the lake {} in {} {} partitions, {} objects, {:.1} MiB; quarantined {} (./lake/_quarantine/{name}/)",
            self.rows,
            self.partitions,
            product.partition_name,
            self.objects,
            self.bytes as f64 / 1048576.0,
            self.quarantined
        );
        let window = product.window_name();
        let partition = &product.partition_name;
        if self.delta {
            println!(
                "  a Delta table (./lake/{name}/_delta_log/ says which files are current); read it with DuckDB's delta extension or Polars:"
            );
            println!(
                "    duckdb -c \"SELECT {partition}, count(*), min({window}), max({window}) FROM delta_scan('lake/{name}') GROUP BY ALL ORDER BY ALL\""
            );
            println!(
                "    python -c \"import polars as pl; print(pl.scan_delta('lake/{name}').collect())\""
            );
            return;
        }
        println!(
            "  ./lake/{name}/{partition}=YYYY-MM-DD/part-00000.parquet; read it with DuckDB or Polars:"
        );
        println!(
            "    duckdb -c \"SELECT {partition}, count(*), min({window}), max({window}) FROM read_parquet('lake/{name}/**/*.parquet', hive_partitioning = true) GROUP BY ALL ORDER BY ALL\""
        );
        println!(
            "    python -c \"import polars as pl; print(pl.scan_parquet('lake/{name}/**/*.parquet', hive_partitioning=True).collect())\""
        );
    }
}
