//! The simulator's data: HID work orders, deterministic from a seed, generated one status day at
//! a time so that any export (one day, or all 13 months) streams without being held in memory.
//!
//! A work order is raised for an HID event on its event day and then moves through statuses over
//! the following days; the rows of status day S are the statuses of work orders whose events were
//! a few days around S. A small share of rows is invalid on purpose, and now and then a row is
//! served twice (the later copy wins), as real exports do.

use chrono::{DateTime, Datelike, Duration, Months, NaiveDate, TimeZone, Utc};

/// How many days after its event a work order may still change, and before (time zones).
const MAX_OFFSET_DAYS: i64 = 3;
const MIN_OFFSET_DAYS: i64 = -1;
const STATUSES: [&str; 4] = ["New", "Accepted", "Active", "Closed"];
const REASONS: [&str; 8] = [
    "Investigating premises",
    "Gathering data",
    "Customer said \"no power\", checked meter",
    "Crew dispatched; line 1 of note\nline 2 of note",
    "Zählerprüfung durchgeführt – Phase ok",
    "Replaced connector, torque 25 Nm",
    "設備点検済み",
    "Resolved, no further action",
];

/// Why a generated row is invalid; `None` for a good row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defect {
    PhaseOutOfRange,
    EmptyServicePoint,
    BadTimestamp,
    EventAfterStatus,
}

/// How a row's StatusDatetime is written, mixing the forms the vendor's examples show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeForm {
    IsoZ,
    IsoMillisZ,
    ColonSeparated,
    NoZone,
    ColonMillisZ,
}

#[derive(Debug, Clone)]
pub struct SimRow {
    pub service_point_id: String,
    pub phase: i64,
    pub issue_id: String,
    pub status: &'static str,
    pub status_datetime: DateTime<Utc>,
    pub time_form: TimeForm,
    pub reason: String,
    pub event_date: NaiveDate,
    pub work_order_id: String,
    pub defect: Option<Defect>,
}

impl SimRow {
    pub fn status_day(&self) -> NaiveDate {
        self.status_datetime.date_naive()
    }

    /// The StatusDatetime text as served; unparseable for a `BadTimestamp` row.
    pub fn status_datetime_text(&self) -> String {
        if self.defect == Some(Defect::BadTimestamp) {
            return format!("{}T25:61:00Z", self.status_datetime.format("%Y-%m-%d"));
        }
        let t = &self.status_datetime;
        match self.time_form {
            TimeForm::IsoZ => t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            TimeForm::IsoMillisZ => t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            TimeForm::ColonSeparated => t.format("%Y-%m-%d:%H:%M:%S").to_string(),
            TimeForm::NoZone => t.format("%Y-%m-%dT%H:%M:%S").to_string(),
            TimeForm::ColonMillisZ => {
                format!(
                    "{}:{:03}Z",
                    t.format("%Y-%m-%dT%H:%M:%S"),
                    t.timestamp_subsec_millis()
                )
            }
        }
    }

    pub fn event_date_text(&self) -> String {
        self.event_date.format("%Y-%m-%d").to_string()
    }

    pub fn is_valid(&self) -> bool {
        self.defect.is_none()
    }

    /// The identity of DESIGN.md: (work_order_id, issue_id, status, status_datetime).
    pub fn identity(&self) -> (String, String, String, i64) {
        (
            self.work_order_id.clone(),
            self.issue_id.clone(),
            self.status.to_string(),
            self.status_datetime.timestamp_micros(),
        )
    }
}

/// splitmix64: a fast, well-mixed hash, so any row can be derived from its coordinates alone.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub seed: u64,
    /// Work orders raised per event day; each yields 2..4 status rows.
    pub work_orders_per_day: u64,
    /// One row in this many is invalid (0: none).
    pub invalid_every: u64,
    /// One valid row in this many is served twice (0: never).
    pub duplicate_every: u64,
    /// Work orders are raised on one event day in this many (1: every day): a small utility's
    /// quiet days, most of which have no row at all.
    pub active_every: u64,
}

impl Dataset {
    pub fn new(seed: u64, rows_per_day: u64) -> Self {
        Self {
            seed,
            work_orders_per_day: (rows_per_day / 3).max(1),
            invalid_every: 97,
            duplicate_every: 211,
            active_every: 1,
        }
    }

    /// The vendor's page: "Data availability. Last 13 months", from the current UTC date back.
    /// Stated here, not taken from the client's planner, so a wrong reading of the page fails a test.
    pub fn available_from(today: NaiveDate) -> NaiveDate {
        today - Months::new(13)
    }

    fn h(&self, parts: &[u64]) -> u64 {
        parts.iter().fold(mix(self.seed), |acc, p| mix(acc ^ p))
    }

    /// The rows of one status day, in the order an export serves them, duplicates included.
    /// Rows with a StatusDatetime after `as_of` do not exist yet.
    pub fn rows_for_day(&self, day: NaiveDate, as_of: DateTime<Utc>, mut emit: impl FnMut(SimRow)) {
        let mut rows = Vec::new();
        for offset in MIN_OFFSET_DAYS..=MAX_OFFSET_DAYS {
            let event_day = day - Duration::days(offset);
            if !(event_day.num_days_from_ce() as u64).is_multiple_of(self.active_every.max(1)) {
                continue;
            }
            for j in 0..self.work_orders_per_day {
                self.work_order_rows(event_day, j, day, &mut rows);
            }
        }
        rows.sort_by_key(|r: &SimRow| r.status_datetime);
        for row in rows {
            if row.status_datetime > as_of {
                continue;
            }
            let dup = self.duplicate_every > 0
                && row.defect.is_none()
                && self
                    .h(&[row.status_datetime.timestamp_micros() as u64, 7])
                    .is_multiple_of(self.duplicate_every);
            if dup {
                let mut first = row.clone();
                first.reason = format!("{} (superseded)", row.reason);
                emit(first);
            }
            emit(row);
        }
    }

    /// The statuses of work order `j` of `event_day` that fall on `status_day`.
    fn work_order_rows(
        &self,
        event_day: NaiveDate,
        j: u64,
        status_day: NaiveDate,
        out: &mut Vec<SimRow>,
    ) {
        let ordinal = event_day.num_days_from_ce() as u64;
        let h = self.h(&[ordinal, j]);
        let statuses = 2 + (h % 3) as usize;
        // Days after the event of each status; the first may fall the day before (time zones).
        let mut day_offset: i64 = if h.is_multiple_of(53) { -1 } else { 0 };
        let wo_number = 100_000 + ordinal * self.work_orders_per_day + j;
        let mut second = (h >> 8) % 40_000;
        for (i, status) in STATUSES.iter().take(statuses).enumerate() {
            let hi = self.h(&[ordinal, j, i as u64]);
            if i > 0 {
                day_offset += (hi % 2) as i64;
                second += 1 + (hi >> 4) % 3_000;
            }
            if event_day + Duration::days(day_offset) != status_day {
                continue;
            }
            let time_form = match (hi >> 12) % 5 {
                0 => TimeForm::IsoZ,
                1 => TimeForm::IsoMillisZ,
                2 => TimeForm::ColonSeparated,
                3 => TimeForm::NoZone,
                _ => TimeForm::ColonMillisZ,
            };
            let millis = match time_form {
                TimeForm::IsoMillisZ | TimeForm::ColonMillisZ => (hi >> 20) % 1000,
                _ => 0,
            };
            let day_start =
                Utc.from_utc_datetime(&status_day.and_hms_opt(0, 0, 0).expect("midnight"));
            let status_datetime = day_start
                + Duration::seconds((second % 86_400) as i64)
                + Duration::milliseconds(millis as i64);
            let defect = if self.invalid_every > 0 && (hi >> 24).is_multiple_of(self.invalid_every)
            {
                Some(match (hi >> 40) % 4 {
                    0 => Defect::PhaseOutOfRange,
                    1 => Defect::EmptyServicePoint,
                    2 => Defect::BadTimestamp,
                    _ => Defect::EventAfterStatus,
                })
            } else {
                None
            };
            let phase = match defect {
                Some(Defect::PhaseOutOfRange) => [0, 5, 9][(hi % 3) as usize],
                _ => 1 + (h % 4) as i64,
            };
            let event_date = match defect {
                Some(Defect::EventAfterStatus) => status_day + Duration::days(3),
                _ => event_day,
            };
            out.push(SimRow {
                service_point_id: if defect == Some(Defect::EmptyServicePoint) {
                    String::new()
                } else {
                    format!("90{:08}", (h >> 20) % 100_000_000)
                },
                phase,
                issue_id: format!("{}", 19_000 + wo_number * 3 + (h % 3)),
                status,
                status_datetime,
                time_form,
                reason: REASONS[((hi >> 32) % REASONS.len() as u64) as usize].to_string(),
                event_date,
                work_order_id: wo_number.to_string(),
                defect,
            });
        }
    }
}

/// The rows a consumer should end up with: valid ones, each identity once, the last served copy.
pub fn expected_valid(rows: impl IntoIterator<Item = SimRow>) -> Vec<SimRow> {
    let mut by_identity = std::collections::HashMap::new();
    for r in rows.into_iter().filter(SimRow::is_valid) {
        by_identity.insert(r.identity(), r);
    }
    let mut out: Vec<SimRow> = by_identity.into_values().collect();
    out.sort_by_key(|r| r.identity());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn deterministic_and_on_the_asked_day() {
        let ds = Dataset::new(7, 300);
        let far = Utc::now() + Duration::days(3650);
        let mut a = Vec::new();
        ds.rows_for_day(day("2026-03-10"), far, |r| a.push(r));
        let mut b = Vec::new();
        ds.rows_for_day(day("2026-03-10"), far, |r| b.push(r));
        assert!(a.len() > 200, "{}", a.len());
        assert_eq!(a.len(), b.len());
        assert!(a.iter().all(|r| r.status_day() == day("2026-03-10")));
        assert!(a.iter().zip(&b).all(|(x, y)| x.identity() == y.identity()));
        let invalid = a.iter().filter(|r| !r.is_valid()).count();
        assert!(invalid > 0 && invalid < a.len() / 20, "{invalid}");
    }

    #[test]
    fn work_orders_span_several_days() {
        let ds = Dataset::new(1, 300);
        let far = Utc::now() + Duration::days(3650);
        let mut wo_days =
            std::collections::HashMap::<String, std::collections::BTreeSet<NaiveDate>>::new();
        for d in ["2026-03-10", "2026-03-11", "2026-03-12", "2026-03-13"] {
            ds.rows_for_day(day(d), far, |r| {
                wo_days
                    .entry(r.work_order_id.clone())
                    .or_default()
                    .insert(r.status_day());
            });
        }
        assert!(wo_days.values().any(|d| d.len() > 1));
    }

    #[test]
    fn a_sparse_dataset_has_days_without_any_row() {
        let mut ds = Dataset::new(5, 300);
        ds.active_every = 12;
        let far = Utc::now() + Duration::days(3650);
        let counts: Vec<usize> = day("2026-03-01")
            .iter_days()
            .take(36)
            .map(|d| {
                let mut n = 0;
                ds.rows_for_day(d, far, |_| n += 1);
                n
            })
            .collect();
        let empty = counts.iter().filter(|n| **n == 0).count();
        assert!(empty > 18 && empty < 36, "{counts:?}");
    }

    #[test]
    fn as_of_hides_the_future() {
        let ds = Dataset::new(1, 300);
        let noon = Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 0).unwrap();
        let mut n = 0;
        ds.rows_for_day(day("2026-03-10"), noon, |r| {
            assert!(r.status_datetime <= noon);
            n += 1;
        });
        assert!(n > 0);
    }

    #[test]
    fn duplicates_keep_the_last_copy() {
        let ds = Dataset::new(3, 3000);
        let far = Utc::now() + Duration::days(3650);
        let mut rows = Vec::new();
        ds.rows_for_day(day("2026-03-10"), far, |r| rows.push(r));
        let valid = rows.iter().filter(|r| r.is_valid()).count();
        let expected = expected_valid(rows);
        assert!(expected.len() < valid, "some identity must be served twice");
        assert!(expected.iter().all(|r| !r.reason.ends_with("(superseded)")));
    }
}
