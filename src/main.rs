//! The `dpss-sync` binary: parse the command line, load the configuration, set up logging, run.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use dpss_sync::cli::{Cli, execute, load_settings};
use dpss_sync::config::{LogFormat, LogSettings};

fn init_logging(log: Option<&LogSettings>) {
    let level = log.map(|l| l.level.as_str()).unwrap_or("info");
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colour only for a person at a terminal; journald, files and log shippers get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if log.is_some_and(|l| l.format == LogFormat::Json) {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    dpss_sync::alloc::limit_arenas();
    let cli = Cli::parse();
    let settings = if cli.command.needs_config() {
        match load_settings(&cli) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    init_logging(settings.as_ref().map(|s| &s.log));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let outcome: anyhow::Result<ExitCode> = runtime.block_on(async {
        match execute(cli, settings).await {
            Ok(code) => Ok(code),
            Err(e) => {
                eprintln!("error: {e}");
                Ok(e.exit_code())
            }
        }
    });
    outcome.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(1)
    })
}
