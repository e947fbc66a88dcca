//! Switchable faults: `--faults 429=3,5xx=4,token-expiry=5,slow-jobs=20s,failed-jobs=2,truncated=2,expired-links=2`,
//! and export shapes (`gzip-parts`, `bz2-parts`, `empty-exports`).
//!
//! Every fault fires on a counter, not at random, so a test can say exactly what the client must
//! have seen (the third request got a 429, the first job failed) and assert on it.

use std::time::Duration;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Each token is accepted for this many DPSS requests, then answered 401 as expired.
    pub token_expiry: Option<u64>,
    /// Every Nth DPSS request is answered 429 with `Retry-After: 1`.
    pub too_many_requests: Option<u64>,
    /// Every Nth DPSS request is answered 500, 502 or 503 in turn.
    pub server_errors: Option<u64>,
    /// Jobs take this long instead of `--job-delay`.
    pub slow_jobs: Option<Duration>,
    /// Jobs number 1, 1+N, 1+2N… end `Failed`.
    pub failed_jobs: Option<u64>,
    /// Every Nth download is cut off halfway.
    pub truncated_downloads: Option<u64>,
    /// Every Nth download link is issued already expired.
    pub expired_links: Option<u64>,
    /// A day's export also serves a few rows of the day before, as a vendor filtering by local
    /// time would.
    pub stray_rows: bool,
    /// Batch requests without a StatusDatetime are refused (400), as a vendor might.
    pub no_history: bool,
    /// Jobs number 1, 1+N, 1+2N… are forgotten by the vendor: their status answers 404.
    pub lost_jobs: Option<u64>,
    /// Every Nth DPSS request has its connection reset after the status line.
    pub resets: Option<u64>,
    /// Every Nth download serves bytes that are not a zip.
    pub corrupt_zips: Option<u64>,
    /// Every job for this `StatusDatetime` day ends `Failed`: a day the vendor cannot export.
    pub failing_day: Option<chrono::NaiveDate>,
    /// Every Nth batch request creates its job, then the connection breaks before the answer:
    /// the client cannot know the job exists.
    pub lost_responses: Option<u64>,
    /// Every download announces a Content-Length of 100 TiB (no disk here has room for it) and
    /// then stalls after the real bytes: a client must refuse it from the header, before
    /// writing anything.
    pub huge_downloads: bool,
    /// How exports pack their parts (`gzip-parts`, `bz2-parts`, `empty-exports`); the test can
    /// change it while the simulator runs, as a vendor changes its export job.
    pub packaging: super::export::Packaging,
    /// `sparse=N`: work orders are raised on one event day in N, so most days have no row.
    pub sparse: Option<u64>,
    /// `markers-when-empty`: an export without a row is a zip of `_SUCCESS` alone, as Spark 2
    /// writes an empty result.
    pub markers_when_empty: bool,
}

impl Faults {
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut f = Faults::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, value) = match item.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (item, None),
            };
            let every = |default: u64| -> Result<Option<u64>, String> {
                match value {
                    None => Ok(Some(default)),
                    Some(v) => match v.parse::<u64>() {
                        Ok(n) if n > 0 => Ok(Some(n)),
                        _ => Err(format!("fault `{name}`: `{v}` is not a positive count")),
                    },
                }
            };
            match name {
                "token-expiry" => f.token_expiry = every(5)?,
                "429" => f.too_many_requests = every(3)?,
                "5xx" => f.server_errors = every(3)?,
                "failed-jobs" => f.failed_jobs = every(2)?,
                "truncated" => f.truncated_downloads = every(2)?,
                "expired-links" => f.expired_links = every(2)?,
                "stray-rows" => f.stray_rows = true,
                "huge-downloads" => f.huge_downloads = true,
                "no-history" => f.no_history = true,
                "lost-jobs" => f.lost_jobs = every(2)?,
                "reset" => f.resets = every(3)?,
                "corrupt-zips" => f.corrupt_zips = every(2)?,
                "lost-responses" => f.lost_responses = every(2)?,
                "fail-day" => {
                    f.failing_day = Some(value.and_then(|v| v.parse().ok()).ok_or_else(|| {
                        "fault `fail-day` needs a day: fail-day=YYYY-MM-DD".to_string()
                    })?)
                }
                "gzip-parts" => f.packaging = super::export::Packaging::Gzip,
                "bz2-parts" => f.packaging = super::export::Packaging::Bzip2Named,
                "empty-exports" => f.packaging = super::export::Packaging::Empty,
                "sparse" => f.sparse = every(10)?,
                "markers-when-empty" => f.markers_when_empty = true,
                "slow-jobs" => {
                    f.slow_jobs = Some(match value {
                        None => Duration::from_secs(30),
                        Some(v) => humantime::parse_duration(v)
                            .map_err(|e| format!("fault `slow-jobs`: `{v}`: {e}"))?,
                    })
                }
                other => {
                    return Err(format!(
                        "unknown fault `{other}` (known: token-expiry, 429, 5xx, slow-jobs, failed-jobs, truncated, expired-links, stray-rows, no-history, lost-jobs, reset, corrupt-zips, fail-day, lost-responses, huge-downloads, gzip-parts, bz2-parts, empty-exports, sparse, markers-when-empty)"
                    ));
                }
            }
        }
        Ok(f)
    }
}

/// Whether the `n`th event (1-based) is one that fires under "every Nth".
pub fn fires(every: Option<u64>, n: u64) -> bool {
    every.is_some_and(|e| n.is_multiple_of(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spec() {
        let f = Faults::parse("429=2, 5xx, slow-jobs=5s,failed-jobs=1").unwrap();
        assert_eq!(f.too_many_requests, Some(2));
        assert_eq!(f.server_errors, Some(3));
        assert_eq!(f.slow_jobs, Some(Duration::from_secs(5)));
        assert_eq!(f.failed_jobs, Some(1));
        assert!(Faults::parse("gremlins").unwrap_err().contains("gremlins"));
        assert!(Faults::parse("429=0").is_err());
        assert_eq!(Faults::parse("").unwrap(), Faults::default());
        let f = Faults::parse("fail-day=2026-11-20,lost-responses=1,gzip-parts").unwrap();
        assert_eq!(f.failing_day, "2026-11-20".parse().ok());
        assert_eq!(f.lost_responses, Some(1));
        assert_eq!(f.packaging, crate::sim::export::Packaging::Gzip);
        let f = Faults::parse("sparse=7,markers-when-empty").unwrap();
        assert_eq!((f.sparse, f.markers_when_empty), (Some(7), true));
        assert!(
            Faults::parse("fail-day=soon")
                .unwrap_err()
                .contains("fail-day")
        );
    }

    #[test]
    fn counters() {
        assert!(!fires(None, 3));
        assert!(fires(Some(3), 3) && fires(Some(3), 6) && !fires(Some(3), 4));
    }
}
