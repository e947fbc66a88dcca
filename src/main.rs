//! The `dpss-sync` binary: parse the command line, load the configuration, set up logging, run.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use dpss_sync::cli::{Cli, Command, execute, load_settings};
use dpss_sync::config::{LogFormat, LogSettings};
use dpss_sync::progress;

/// `--quiet` leaves errors only, whatever RUST_LOG says; otherwise RUST_LOG, when set, decides.
/// With `progress`, log lines print above the progress line instead of through it.
fn init_logging(log: Option<&LogSettings>, quiet: bool, progress: bool) {
    let level = log.map(|l| l.level.as_str()).unwrap_or("info");
    // The Delta kernel logs every snapshot it builds at info, and at error what it returns to us
    // anyway (which our own events report, once, with context): quiet unless RUST_LOG asks.
    let level = format!("{level},buoyant_kernel=off,buoyant_kernel_engine=off,deltalake_core=warn");
    let filter = if quiet {
        tracing_subscriber::EnvFilter::new("error")
    } else {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&level))
    };
    // Colour only for a person at a terminal who has not asked for none (NO_COLOR, any value);
    // journald, files and log shippers get plain text.
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour);
    let json = log.is_some_and(|l| l.format == LogFormat::Json);
    match (json, progress) {
        (true, _) => builder
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .init(),
        (false, true) => builder.with_writer(progress::LogWriter::new).init(),
        (false, false) => builder.with_writer(std::io::stderr).init(),
    }
}

/// A one-shot command whose reader goes away (`dpss-sync status | head -1`) ends as Unix tools
/// do: quietly, by SIGPIPE. Rust ignores SIGPIPE, which turns the write into an error and
/// `println!` into a panic with a backtrace. The daemon and the simulator keep it ignored: they
/// write to sockets, where a peer that left must not end the process.
fn end_quietly_on_a_closed_pipe(command: &Command) {
    if !matches!(command, Command::Run(_) | Command::Simulate(_)) {
        // SAFETY: restores the default disposition of one signal before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
}

fn main() -> ExitCode {
    dpss_sync::alloc::limit_arenas();
    let cli = Cli::parse();
    end_quietly_on_a_closed_pipe(&cli.command);
    let settings = if cli.command.needs_config() {
        match load_settings(&cli) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("error: {}", dpss_sync::model::cut(&e.to_string()));
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    let log = settings.as_ref().map(|s| &s.log);
    // A progress line for a person at a terminal; never in JSON logs or for scripts.
    let progress = cli.command.shows_progress()
        && !cli.quiet
        && std::io::stderr().is_terminal()
        && !log.is_some_and(|l| l.format == LogFormat::Json);
    if progress {
        progress::enable();
    }
    init_logging(log, cli.quiet, progress);
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
        let result = execute(cli, settings).await;
        progress::finish();
        match result {
            Ok(code) => Ok(code),
            Err(e) => {
                eprintln!("error: {}", dpss_sync::model::cut(&e.to_string()));
                Ok(e.exit_code())
            }
        }
    });
    outcome.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(1)
    })
}
