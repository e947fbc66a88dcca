//! Progress of long work on a terminal: one line that says what a command is doing now (waiting
//! for the vendor's export jobs, downloading with bytes and rate, normalizing with rows and
//! rows/s, writing partitions n of N), so a person at a terminal is not left staring at nothing
//! for a minute. Off a terminal nothing is drawn and every call here is a no-op: logs stay as
//! they are for files, journald and shippers.
//!
//! The stages report into one global display, enabled once by `main`; log lines are written
//! through [`LogWriter`], which lifts the progress line out of the way while they print.

use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, HumanCount, ProgressBar, ProgressDrawTarget, ProgressStyle};

static DISPLAY: OnceLock<Display> = OnceLock::new();

struct Display {
    bar: ProgressBar,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    jobs: i64,
    download: Option<Counter>,
    rows: Option<Counter>,
    partitions: Option<(u64, u64)>,
}

/// A quantity growing since a moment, for its rate.
struct Counter {
    done: u64,
    total: Option<u64>,
    since: Instant,
}

impl Counter {
    fn new(total: Option<u64>) -> Self {
        Self {
            done: 0,
            total,
            since: Instant::now(),
        }
    }

    fn per_second(&self) -> f64 {
        self.done as f64 / self.since.elapsed().as_secs_f64().max(1e-3)
    }
}

impl State {
    /// The line for the latest phase.
    fn line(&self) -> String {
        if let Some((done, total)) = self.partitions {
            return format!("writing partitions {done}/{total}");
        }
        if let Some(r) = &self.rows {
            return format!(
                "normalizing: {} rows ({}/s)",
                HumanCount(r.done),
                HumanCount(r.per_second() as u64)
            );
        }
        if let Some(d) = &self.download {
            let total = d
                .total
                .map(|t| format!(" of {}", HumanBytes(t)))
                .unwrap_or_default();
            return format!(
                "downloading: {}{total} ({}/s)",
                HumanBytes(d.done),
                HumanBytes(d.per_second() as u64)
            );
        }
        if self.jobs > 0 {
            return format!(
                "waiting for the vendor's export job ({} in flight)",
                self.jobs
            );
        }
        "starting".into()
    }
}

/// Draws progress on standard error from now on. Call once, before any work, only when standard
/// error is a terminal.
pub fn enable() {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .expect("a valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let _ = DISPLAY.set(Display {
        bar,
        state: Mutex::default(),
    });
}

fn update(change: impl FnOnce(&mut State)) {
    if let Some(d) = DISPLAY.get() {
        let mut state = d.state.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut state);
        d.bar.set_message(state.line());
    }
}

/// A vendor job started (`1`) or ended (`-1`) being waited on.
pub fn jobs_in_flight(delta: i64) {
    update(|s| s.jobs += delta);
}

/// A download of `total` bytes (if announced) begins.
pub fn download_started(total: Option<u64>) {
    update(|s| s.download = Some(Counter::new(total)));
}

pub fn downloaded(bytes: u64) {
    update(|s| {
        if let Some(d) = &mut s.download {
            d.done += bytes;
        }
    });
}

/// `rows` more rows normalized.
pub fn rows(rows: u64) {
    update(|s| {
        s.partitions = None;
        s.rows.get_or_insert_with(|| Counter::new(None)).done += rows;
    });
}

/// `total` partitions are about to be written.
pub fn writing(total: u64) {
    update(|s| s.partitions = Some((0, total)));
}

pub fn partition_written() {
    update(|s| {
        if let Some((done, _)) = &mut s.partitions {
            *done += 1;
        }
    });
}

/// A line for standard output while the progress line is drawn, printed above it.
pub fn println(line: &str) {
    match DISPLAY.get() {
        Some(d) => d.bar.suspend(|| println!("{line}")),
        None => println!("{line}"),
    }
}

/// Clears the line when the command is done; its report follows on standard output.
pub fn finish() {
    if let Some(d) = DISPLAY.get() {
        d.bar.finish_and_clear();
    }
}

/// Standard error for log lines: with progress drawn, each line is printed above it.
pub struct LogWriter(Vec<u8>);

impl LogWriter {
    pub fn new() -> Self {
        Self(Vec::new())
    }
}

impl Default for LogWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let bytes = std::mem::take(&mut self.0);
        if bytes.is_empty() {
            return Ok(());
        }
        match DISPLAY.get() {
            Some(d) => d.bar.suspend(|| std::io::stderr().write_all(&bytes)),
            None => std::io::stderr().write_all(&bytes),
        }
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_the_latest_phase() {
        let mut s = State::default();
        assert_eq!(s.line(), "starting");
        s.jobs = 2;
        assert!(
            s.line()
                .contains("waiting for the vendor's export job (2 in flight)")
        );
        s.download = Some(Counter::new(Some(2 << 20)));
        s.download.as_mut().unwrap().done = 1 << 20;
        assert!(
            s.line().starts_with("downloading: 1.00 MiB of 2.00 MiB"),
            "{}",
            s.line()
        );
        s.rows = Some(Counter::new(None));
        s.rows.as_mut().unwrap().done = 1_234_567;
        assert!(
            s.line().starts_with("normalizing: 1,234,567 rows"),
            "{}",
            s.line()
        );
        s.partitions = Some((3, 40));
        assert_eq!(s.line(), "writing partitions 3/40");
    }
}
