//! What an operator's shell needs from the command line: completion scripts and manual pages,
//! generated from the same clap definitions the binary parses with, so they never drift.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::CommandFactory;

use super::{Cli, CliError};

/// The completion script for `shell`, on `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) -> ExitCode {
    clap_complete::generate(shell, &mut Cli::command(), "dpss-sync", out);
    ExitCode::SUCCESS
}

/// The manual: the top page on `out`, or with `dir` one page per command there
/// (`dpss-sync.1`, `dpss-sync-run.1`, …), ready for `MANPATH`.
pub fn manual(dir: Option<&Path>, out: &mut dyn Write) -> Result<ExitCode, CliError> {
    let failed = |e: std::io::Error| CliError::Failed(format!("writing the manual: {e}"));
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| CliError::Failed(format!("cannot create {}: {e}", dir.display())))?;
            clap_mangen::generate_to(Cli::command(), dir).map_err(failed)?;
        }
        None => clap_mangen::Man::new(Cli::command())
            .render(out)
            .map_err(failed)?,
    }
    Ok(ExitCode::SUCCESS)
}
