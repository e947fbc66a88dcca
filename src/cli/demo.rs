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

/// Text (see [`Summary::print`]), or with `--json` one document: `{"simulator", "run": {...}, "summary": {...}}`.
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
            "simulator on {} (seed 42, ~300 rows/day, 13 months)",
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
    let product = Product::HidWorkOrders;
    let started = std::time::Instant::now();
    let lease = Access::Write(LeaseRequest::new("demo", None));
    let pipeline = Pipeline::open(settings, true, lease).await?;
    let report = pipeline.sync(product).await?;
    crate::progress::finish();
    if output == Output::Text {
        super::report::print_run(product, &report);
    }
    let elapsed = started.elapsed();
    let lake = &pipeline.lake;
    let table = lake
        .read_table(product)
        .await
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let rows: usize = table.iter().map(|(_, b)| b.num_rows()).sum();
    let partitions: BTreeSet<_> = table.iter().map(|(d, _)| *d).collect();
    let status_days = crate::lake::count_by_status_day(&table);
    let objects = lake
        .objects(product)
        .await
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let bytes: u64 = objects.iter().map(|(_, s)| s).sum();
    let quarantined: usize = lake
        .read_quarantine(product)
        .await
        .map_err(|e| CliError::Failed(e.to_string()))?
        .iter()
        .map(|b| b.num_rows())
        .sum();
    let watermark = pipeline.state.watermark(product).await?;
    let summary = Summary {
        seconds: elapsed.as_secs_f64(),
        first_status_day: status_days.keys().next().copied(),
        last_status_day: status_days.keys().last().copied(),
        status_days: status_days.len(),
        watermark,
        rows,
        partitions: partitions.len(),
        objects: objects.len(),
        bytes,
        quarantined,
        lake: "./lake",
        state: "./state/state.db",
        delta: lake.is_delta(),
    };
    match output {
        Output::Json => {
            let doc = serde_json::json!({
                "simulator": handle.base_url(),
                "run": ProductRun::new(product, &report),
                "summary": summary,
            });
            println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
        }
        Output::Text => summary.print(),
        Output::Quiet => {}
    }
    handle.shutdown().await;
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// What the demo did, for people and for `--json`.
#[derive(Debug, serde::Serialize)]
struct Summary {
    seconds: f64,
    first_status_day: Option<NaiveDate>,
    last_status_day: Option<NaiveDate>,
    status_days: usize,
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
    fn print(&self) {
        let day = |d: Option<NaiveDate>| d.map(|d| d.to_string()).unwrap_or_default();
        println!();
        println!("demo finished in {:.1}s", self.seconds);
        println!(
            "  status days {} .. {} ({} days), watermark {}",
            day(self.first_status_day),
            day(self.last_status_day),
            self.status_days,
            self.watermark
                .map(|d| d.to_string())
                .unwrap_or_else(|| "none".into())
        );
        println!(
            "  rows in the lake {} in {} event_date partitions, {} objects, {:.1} MiB",
            self.rows,
            self.partitions,
            self.objects,
            self.bytes as f64 / 1048576.0
        );
        println!(
            "  rows quarantined {} (see ./lake/_quarantine/hid_work_orders/)",
            self.quarantined
        );
        if self.delta {
            println!(
                "  lake ./lake/hid_work_orders (a Delta table: _delta_log/ says which files are current), state ./state/state.db"
            );
            println!("read it with DuckDB (the delta extension):");
            println!(
                "  duckdb -c \"SELECT event_date, status, count(*) FROM delta_scan('lake/hid_work_orders') GROUP BY ALL ORDER BY ALL\""
            );
            println!("or Polars:");
            println!(
                "  python -c \"import polars as pl; print(pl.scan_delta('lake/hid_work_orders').collect())\""
            );
            return;
        }
        println!(
            "  lake ./lake/hid_work_orders/event_date=YYYY-MM-DD/part-00000.parquet, state ./state/state.db"
        );
        println!("read it with DuckDB:");
        println!(
            "  duckdb -c \"SELECT event_date, status, count(*) FROM read_parquet('lake/hid_work_orders/**/*.parquet', hive_partitioning = true) GROUP BY ALL ORDER BY ALL\""
        );
        println!("or Polars:");
        println!(
            "  python -c \"import polars as pl; print(pl.scan_parquet('lake/hid_work_orders/**/*.parquet', hive_partitioning=True).collect())\""
        );
    }
}
