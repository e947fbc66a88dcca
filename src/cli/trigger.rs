//! `trigger`: ask the running daemon to sync or backfill now. With one writer at a time, a second
//! process cannot do it; the daemon can, in its own turn, through its loopback admin endpoint.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;

use clap::Subcommand;

use super::daemon::Triggered;
use super::report;
use super::{BackfillArgs, CliError, JsonArg, ProductArg, outcome};
use crate::config::Settings;
use crate::product::Product;

#[derive(Debug, Subcommand)]
pub enum TriggerWhat {
    /// An incremental cycle now (after the one in flight, if any).
    Sync {
        #[command(flatten)]
        product: ProductArg,
        #[command(flatten)]
        format: JsonArg,
    },
    /// Reload a range of days now, as `backfill` would.
    Backfill {
        #[command(flatten)]
        days: BackfillArgs,
        #[command(flatten)]
        product: ProductArg,
        #[command(flatten)]
        format: JsonArg,
    },
}

/// Where this host reaches the daemon's listener: a wildcard address means its loopback.
fn daemon_address(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, listen.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, listen.port()).into(),
        _ => listen,
    }
}

pub async fn run(
    settings: &Settings,
    what: TriggerWhat,
    quiet: bool,
) -> Result<ExitCode, CliError> {
    let base = format!("http://{}", daemon_address(settings.server.listen));
    let (command, mut query, product, json) = match what {
        TriggerWhat::Sync { product, format } => ("sync", Vec::new(), product.product, format),
        TriggerWhat::Backfill {
            days: BackfillArgs { from, to, force },
            product,
            format,
        } => (
            "backfill",
            vec![
                ("from", from.to_string()),
                ("to", to.to_string()),
                ("force", force.to_string()),
            ],
            product.product,
            format,
        ),
    };
    let output = json.output(quiet);
    if let Some(name) = product {
        let p = settings.configured(&name)?;
        query.push(("product", p.config_name().to_string()));
    }
    let url = format!("{base}/admin/trigger/{command}");
    let token = super::admin::read(&settings.admin_token_file())?;
    // No timeout: the answer comes when the run ends, which is what the caller waits for.
    let resp = reqwest::Client::new()
        .post(&url)
        .bearer_auth(token.expose())
        .query(&query)
        .send()
        .await
        .map_err(|e| {
            CliError::Failed(format!(
                "no daemon answers at {base} (server.listen): is `dpss-sync run` running with this configuration? ({})",
                crate::api::error_chain(&e)
            ))
        })?;
    let status = resp.status();
    let body: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| CliError::Failed(format!("{url} answered {status} with no JSON: {e}")))?;
    if !status.is_success() {
        let error = body["error"].as_str().unwrap_or("no reason given");
        return Err(CliError::Failed(format!(
            "the daemon refused: {error} (HTTP {status})"
        )));
    }
    let triggered: Triggered = serde_json::from_value(body)
        .map_err(|e| CliError::Failed(format!("{url} answered an unexpected document: {e}")))?;
    let runs: Vec<(Product, crate::sync::RunReport)> = triggered
        .runs
        .into_iter()
        .filter_map(|(name, report)| settings.catalog.get(&name).map(|p| (p, report)))
        .collect();
    report::print_runs(command, &runs, output);
    Ok(outcome(&runs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listener_is_reached_on_loopback() {
        let at = |s: &str| daemon_address(s.parse().unwrap()).to_string();
        assert_eq!(at("0.0.0.0:9464"), "127.0.0.1:9464");
        assert_eq!(at("[::]:9464"), "[::1]:9464");
        assert_eq!(at("127.0.0.1:9000"), "127.0.0.1:9000");
    }
}
