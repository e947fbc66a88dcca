//! The command line of DESIGN.md. Each command loads the configuration, opens what it needs and
//! reports in words an operator can act on. Exit codes: 0 ok, 1 a run failed, 2 bad usage or
//! configuration.

mod admin;
mod daemon;
mod demo;
mod query;
mod report;
mod shell;
mod simulate;
mod trigger;

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{NaiveDate, Utc};
use clap::{Args, Parser, Subcommand};

use crate::config::{ConfigError, Settings, Sources};
use crate::product::Product;
use crate::state::LeaseRequest;
use crate::sync::{Access, Pipeline, SyncError};

/// What every command's `--help` ends with.
pub const EXIT_CODES: &str = "Exit codes: 0 ok; 1 a run failed, or another writer holds the state (the message names it); \
2 bad usage or configuration (the message names the key); 141 (killed by SIGPIPE) when the reader of its output went away.";

#[derive(Debug, Parser)]
#[command(
    name = "dpss-sync",
    version,
    about = "Keeps a data lake in sync with Itron DPSS data products",
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// Configuration file (TOML); repeat to layer several, later ones win. Environment variables
    /// DPSS_SYNC__SECTION__KEY override any file.
    #[arg(long = "config", global = true, value_name = "FILE")]
    pub config: Vec<PathBuf>,
    /// Only errors on stderr, and no text report on stdout (a --json document is still printed).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon: scheduler plus metrics and health server, until SIGTERM/SIGINT.
    #[command(after_help = EXIT_CODES)]
    Run(WaitArg),
    /// One incremental cycle now, then exit (0 = every window committed).
    #[command(after_help = EXIT_CODES)]
    Sync {
        #[command(flatten)]
        product: ProductArg,
        #[command(flatten)]
        wait: WaitArg,
        #[command(flatten)]
        format: JsonArg,
    },
    /// (Re)load a range of days; clamps to the 13-month availability and says so.
    #[command(after_help = EXIT_CODES)]
    Backfill {
        #[command(flatten)]
        days: BackfillArgs,
        #[command(flatten)]
        product: ProductArg,
        #[command(flatten)]
        wait: WaitArg,
        #[command(flatten)]
        format: JsonArg,
    },
    /// Dry run: the windows and jobs the next cycle would run, and why.
    #[command(after_help = EXIT_CODES)]
    Plan {
        #[command(flatten)]
        product: ProductArg,
        #[command(flatten)]
        format: JsonArg,
    },
    /// Watermarks, in-flight jobs, last runs, lake location.
    #[command(after_help = EXIT_CODES)]
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Validate the configuration (with --online, also reach the API and the lake).
    #[command(after_help = EXIT_CODES)]
    CheckConfig {
        #[arg(long)]
        online: bool,
        #[command(flatten)]
        format: JsonArg,
    },
    /// The on-demand endpoint, for ad-hoc look-ups (1,000 rows at most).
    #[command(after_help = EXIT_CODES)]
    Query(query::QueryArgs),
    /// Normalize local export files (zip, csv, json, parquet, orc) into the lake.
    #[command(after_help = EXIT_CODES)]
    Import {
        /// The product the files are an export of (a configured one).
        #[arg(long, value_name = "NAME")]
        product: String,
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Replace days even where the files hold far fewer rows than the lake (lake.max_shrink).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        wait: WaitArg,
        #[command(flatten)]
        format: JsonArg,
    },
    /// Serve the built-in DPSS simulator (token endpoint included).
    #[command(after_help = EXIT_CODES)]
    Simulate(simulate::SimulateArgs),
    /// Simulator + one full sync into ./lake with the embedded defaults.
    #[command(after_help = EXIT_CODES)]
    Demo {
        #[command(flatten)]
        format: JsonArg,
        /// The lake's table format: the Hive layout (`parquet`) or a Delta Lake table (`delta`).
        #[arg(long, value_name = "FORMAT", default_value = "parquet", value_parser = ["parquet", "delta"])]
        lake_format: String,
    },
    /// Ask the running daemon to sync or backfill now, wait for it, and print its report (the
    /// daemon holds the writer lease, so a second process could not).
    #[command(after_help = EXIT_CODES)]
    Trigger {
        #[command(subcommand)]
        what: trigger::TriggerWhat,
    },
    /// A shell completion script on stdout, e.g. `dpss-sync completions bash >
    /// /etc/bash_completion.d/dpss-sync`.
    #[command(after_help = EXIT_CODES)]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// The manual page (roff) on stdout, e.g. `dpss-sync man | man -l -`; with --dir, one page
    /// per command written there.
    #[command(after_help = EXIT_CODES)]
    Man {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// For commands that report: text for people, or one JSON document for scripts.
#[derive(Debug, Args)]
pub struct JsonArg {
    /// Print one JSON document on stdout instead of text (logs stay on stderr); the README
    /// shows its shape.
    #[arg(long)]
    pub json: bool,
}

impl JsonArg {
    fn output(&self, quiet: bool) -> report::Output {
        match (self.json, quiet) {
            (true, _) => report::Output::Json,
            (false, true) => report::Output::Quiet,
            (false, false) => report::Output::Text,
        }
    }
}

/// For commands that write: one process holds the writer lease at a time.
#[derive(Debug, Args)]
pub struct WaitArg {
    /// If another process holds the writer lease, wait up to this long for it (e.g. "10m")
    /// instead of exiting 1 at once.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub wait: Option<std::time::Duration>,
}

impl WaitArg {
    fn lease(&self, command: &str) -> Access {
        Access::Write(LeaseRequest::new(command, self.wait))
    }
}

/// The days a backfill reloads, the same for `backfill` and `trigger backfill`.
#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// First UTC day, YYYY-MM-DD.
    #[arg(long)]
    pub from: NaiveDate,
    /// Last UTC day, YYYY-MM-DD (inclusive).
    #[arg(long)]
    pub to: NaiveDate,
    /// Reload every day even if the same backfill finished in the last 10 minutes (a re-run
    /// that soon otherwise resumes it, as after a crash), and replace days even where the
    /// result holds far fewer rows than the lake (lake.max_shrink).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ProductArg {
    /// Only this product (default: every configured product).
    #[arg(long, value_name = "NAME")]
    pub product: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Sync(SyncError),
    #[error("{0}")]
    Failed(String),
}

impl From<SyncError> for CliError {
    fn from(e: SyncError) -> Self {
        match e {
            SyncError::Config(c) => CliError::Config(c),
            SyncError::Usage(u) => CliError::Usage(u),
            other => CliError::Sync(other),
        }
    }
}

impl From<crate::state::StateError> for CliError {
    fn from(e: crate::state::StateError) -> Self {
        CliError::Sync(e.into())
    }
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Config(_) | CliError::Usage(_) => ExitCode::from(2),
            CliError::Sync(_) | CliError::Failed(_) => ExitCode::from(1),
        }
    }
}

pub fn load_settings(cli: &Cli) -> Result<Settings, ConfigError> {
    Settings::load(&Sources {
        files: cli.config.clone(),
        inline: Vec::new(),
        env: true,
    })
}

/// The products a command runs for: the one `--product` names, else every configured one.
fn products(settings: &Settings, only: Option<&str>) -> Result<Vec<Product>, CliError> {
    match only {
        Some(name) => Ok(vec![settings.configured(name)?]),
        None if settings.products.is_empty() => Err(ConfigError::Missing {
            key: "products".into(),
            hint: format!(
                "configure at least one [products.<name>] (known: {})",
                settings.catalog.names().join(", ")
            ),
        }
        .into()),
        None => Ok(settings.products.keys().copied().collect()),
    }
}

impl Command {
    /// `simulate` and `demo` run on their own embedded defaults.
    /// Long work whose report goes to a person: worth a progress line on a terminal.
    pub fn shows_progress(&self) -> bool {
        match self {
            Command::Sync { format, .. }
            | Command::Backfill { format, .. }
            | Command::Import { format, .. }
            | Command::Demo { format, .. } => !format.json,
            _ => false,
        }
    }

    pub fn needs_config(&self) -> bool {
        !matches!(
            self,
            Command::Simulate(_)
                | Command::Demo { .. }
                | Command::Completions { .. }
                | Command::Man { .. }
        )
    }
}

/// Runs a parsed command line; `settings` were loaded by the caller (logging needs them first)
/// for every command that [`Command::needs_config`].
/// 0 when every window of every run committed, else 1.
fn outcome(runs: &[(Product, crate::sync::RunReport)]) -> ExitCode {
    if runs.iter().all(|(_, r)| r.ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

pub async fn execute(cli: Cli, settings: Option<Settings>) -> Result<ExitCode, CliError> {
    let quiet = cli.quiet;
    let need = || {
        settings
            .clone()
            .ok_or_else(|| CliError::Usage("no configuration loaded".into()))
    };
    match cli.command {
        Command::Run(wait) => daemon::run(need()?, wait.lease("run")).await,
        Command::Sync {
            product,
            wait,
            format,
        } => {
            let settings = need()?;
            let products = products(&settings, product.product.as_deref())?;
            settings.require_api()?;
            let pipeline = Pipeline::open(settings, true, wait.lease("sync")).await?;
            let mut runs = Vec::new();
            for product in products {
                runs.push((product, pipeline.sync(product).await?));
            }
            report::print_runs("sync", &runs, format.output(quiet));
            Ok(outcome(&runs))
        }
        Command::Backfill {
            days: BackfillArgs { from, to, force },
            product,
            wait,
            format,
        } => {
            let settings = need()?;
            let products = products(&settings, product.product.as_deref())?;
            settings.require_api()?;
            let pipeline = Pipeline::open(settings, true, wait.lease("backfill")).await?;
            let mut runs = Vec::new();
            for product in products {
                runs.push((product, pipeline.backfill(product, from, to, force).await?));
            }
            report::print_runs("backfill", &runs, format.output(quiet));
            Ok(outcome(&runs))
        }
        Command::Plan { product, format } => {
            let settings = need()?;
            let products = products(&settings, product.product.as_deref())?;
            let pipeline = Pipeline::open(settings, false, Access::Read).await?;
            let today = Utc::now().date_naive();
            let mut docs = Vec::new();
            for product in products {
                let watermark = pipeline.state.watermark(product).await?;
                let preview = pipeline.preview(product, today).await?;
                docs.push(report::plan_doc(product, watermark, today, &preview));
            }
            report::print_plan(&docs, format.output(quiet));
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => {
            let settings = need()?;
            let pipeline = Pipeline::open(settings, false, Access::Read).await?;
            report::print_status(&pipeline, json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { online, format } => {
            report::check_config(need()?, online, format.output(quiet)).await
        }
        Command::Query(args) => query::run(need()?, args).await,
        Command::Import {
            product,
            files,
            force,
            wait,
            format,
        } => {
            let settings = need()?;
            for f in &files {
                if !f.exists() {
                    return Err(CliError::Usage(format!("{}: no such file", f.display())));
                }
            }
            let product = settings.configured(&product)?;
            let pipeline = Pipeline::open(settings, false, wait.lease("import")).await?;
            let runs = [(product, pipeline.import(product, files, force).await?)];
            report::print_runs("import", &runs, format.output(quiet));
            Ok(outcome(&runs))
        }
        Command::Simulate(args) => simulate::run(args).await,
        Command::Demo {
            format,
            lake_format,
        } => demo::run(format.output(quiet), &lake_format).await,
        Command::Trigger { what } => trigger::run(&need()?, what, quiet).await,
        Command::Completions { shell } => Ok(shell::completions(shell, &mut std::io::stdout())),
        Command::Man { dir } => shell::manual(dir.as_deref(), &mut std::io::stdout()),
    }
}
