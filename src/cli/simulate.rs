//! `simulate`: the built-in DPSS simulator as a server, for curl or any other client.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::CliError;
use crate::sim::{self, Faults, SimConfig};

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Seed of the generated data; the same seed serves the same rows.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Status rows per day (about).
    #[arg(long, default_value_t = 300)]
    rows_per_day: u64,
    /// Faults to inject, e.g. "429=3,5xx=4,token-expiry=5,slow-jobs=20s,failed-jobs=2,truncated=2,expired-links=2".
    #[arg(long, default_value = "")]
    faults: String,
    #[arg(long, default_value = "dpss-sim-client")]
    client_id: String,
    #[arg(long, default_value = "dpss-sim-secret")]
    client_secret: String,
    #[arg(long, default_value = "00000000-0000-4000-8000-00000000beef")]
    subscriber_id: String,
    /// HID work orders' subscription.
    #[arg(long, default_value = "00000000-0000-4000-8000-00000000cafe")]
    subscription_id: String,
    /// Advanced Temperature Statistics' subscription.
    #[arg(long, default_value = "00000000-0000-4000-8000-00000000f00d")]
    temperature_subscription_id: String,
    /// A configuration file whose `[catalog.<name>]` declarations `--serve` may name.
    #[arg(long, value_name = "FILE")]
    catalog: Option<std::path::PathBuf>,
    /// Serve a declared product (of `--catalog`, or a built-in one) at a subscription of its
    /// own, with generated values of its declared types: NAME=SUBSCRIPTION_ID (repeat).
    #[arg(long, value_name = "NAME=SUBSCRIPTION_ID")]
    serve: Vec<String>,
    /// How long a job takes from New to Success.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    job_delay: Duration,
    /// Lifetime of issued access tokens.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    token_ttl: Duration,
    /// Most part files in one export zip (each job gets 1..=N).
    #[arg(long, default_value_t = 3)]
    max_parts: usize,
}

pub async fn run(a: SimulateArgs) -> Result<ExitCode, CliError> {
    let faults = Faults::parse(&a.faults).map_err(|e| CliError::Usage(format!("--faults: {e}")))?;
    if a.max_parts == 0 {
        return Err(CliError::Usage("--max-parts must be at least 1".into()));
    }
    let catalog = match &a.catalog {
        Some(file) => {
            crate::config::Settings::load(&crate::config::Sources {
                files: vec![file.clone()],
                ..Default::default()
            })?
            .catalog
        }
        None => crate::product::Catalog::default(),
    };
    let mut declared = Vec::new();
    for s in &a.serve {
        let (name, sub) = s
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("--serve `{s}` is not NAME=SUBSCRIPTION_ID")))?;
        let product = catalog.get(name.trim()).ok_or_else(|| {
            CliError::Usage(format!(
                "--serve: no product `{name}` (known: {})",
                catalog.names().join(", ")
            ))
        })?;
        declared.push((sub.trim().to_string(), product));
    }
    let cfg = SimConfig {
        temperature_subscription_id: a.temperature_subscription_id,
        declared,
        seed: a.seed,
        rows_per_day: a.rows_per_day,
        client_id: a.client_id,
        client_secret: a.client_secret,
        subscriber_id: a.subscriber_id,
        subscription_id: a.subscription_id,
        job_delay: a.job_delay,
        token_ttl: a.token_ttl,
        link_ttl: Duration::from_secs(3600),
        max_parts: a.max_parts,
        faults,
    };
    let handle = sim::spawn(cfg.clone(), a.listen)
        .await
        .map_err(|e| CliError::Failed(format!("cannot listen on {}: {e}", a.listen)))?;
    let base = handle.base_url();
    let banner = format!(
        "DPSS simulator listening on {base}\n  token URL        {base}/connect/token\n  \
         API base         {base}/dpss/api/v1\n  client_id        {}\n  client_secret    {}\n  \
         DataSubscriberId {}\n  SubscriptionId   {} (hid_work_orders), {} (atm_temperature_stats){}\n  \
         seed {}, ~{} rows/day, job delay {}, faults: {}\n\
         Ctrl-C stops it.\n",
        cfg.client_id,
        cfg.client_secret,
        cfg.subscriber_id,
        cfg.subscription_id,
        cfg.temperature_subscription_id,
        cfg.declared
            .iter()
            .map(|(sub, p)| format!(", {sub} ({p})"))
            .collect::<String>(),
        cfg.seed,
        cfg.rows_per_day,
        humantime::format_duration(cfg.job_delay),
        if a.faults.is_empty() {
            "none"
        } else {
            &a.faults
        }
    );
    // The banner is for a person; a reader that went away (`simulate | head -1`) must not stop
    // the server, so a failed write is let go.
    let mut out = std::io::stdout();
    let _ = std::io::Write::write_all(&mut out, banner.as_bytes())
        .and_then(|_| std::io::Write::flush(&mut out));
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| CliError::Failed(format!("waiting for Ctrl-C: {e}")))?;
    handle.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
