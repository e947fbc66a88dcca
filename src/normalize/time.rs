//! One tolerant UTC timestamp parser for every form the vendor's docs show:
//! `2024-06-15T00:00:13Z`, `2024-06-15T00:00:12` (no zone: UTC), `2024-06-15 00:00:12`,
//! `2024-06-15:00:00:13` (a colon between date and time), `2023-09-13T00:29:55.55Z`,
//! `2025-12-14T00:30:34:000Z` (a colon before the milliseconds), offsets `+02:00` / `-0500`,
//! and a bare date (midnight). Hand-written over bytes: it runs once per row on the hot path.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, TimeZone, Utc};

fn num(b: &[u8]) -> Option<u32> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0u32, |acc, d| acc * 10 + (d - b'0') as u32))
}

fn date_part(b: &[u8]) -> Option<NaiveDate> {
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    NaiveDate::from_ymd_opt(num(&b[0..4])? as i32, num(&b[5..7])?, num(&b[8..10])?)
}

/// A calendar day: `YYYY-MM-DD`, or the UTC day of any timestamp form.
pub fn parse_date(s: &str) -> Option<NaiveDate> {
    let b = s.trim().as_bytes();
    if b.len() == 10 {
        return date_part(b);
    }
    parse_utc(s).map(|t| t.date_naive())
}

/// Any supported form, as an instant in UTC; `None` when the text is not a timestamp.
pub fn parse_utc(s: &str) -> Option<DateTime<Utc>> {
    let b = s.trim().as_bytes();
    let date = date_part(b)?;
    let mut rest = &b[10..];
    if rest.is_empty() {
        return Some(Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0)?));
    }
    if !matches!(rest[0], b'T' | b't' | b' ' | b':') || rest.len() < 6 {
        return None;
    }
    rest = &rest[1..];
    let hour = num(&rest[0..2])?;
    if rest[2] != b':' {
        return None;
    }
    let minute = num(rest.get(3..5)?)?;
    rest = &rest[5..];
    let mut second = 0;
    if rest.len() >= 3 && rest[0] == b':' && rest[1].is_ascii_digit() && rest[2].is_ascii_digit() {
        second = num(&rest[1..3])?;
        rest = &rest[3..];
    }
    let mut nanos = 0u32;
    if rest.len() >= 2 && matches!(rest[0], b'.' | b',' | b':') && rest[1].is_ascii_digit() {
        let digits = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        let frac = &rest[1..1 + digits];
        let kept = &frac[..digits.min(9)];
        nanos = num(kept)? * 10u32.pow(9 - kept.len() as u32);
        rest = &rest[1 + digits..];
    }
    let local = date.and_hms_nano_opt(hour, minute, second, nanos)?;
    let zone = std::str::from_utf8(rest).ok()?.trim();
    let offset_secs = match zone {
        "" | "Z" | "z" | "UTC" | "GMT" => 0,
        z => parse_offset(z)?,
    };
    let offset = FixedOffset::east_opt(offset_secs)?;
    let t = offset.from_local_datetime(&local).single()?;
    Some(t.with_timezone(&Utc))
}

/// `+02:00`, `-0500`, `+05`.
fn parse_offset(z: &str) -> Option<i32> {
    let b = z.as_bytes();
    let sign = match b.first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits: Vec<u8> = b[1..].iter().copied().filter(|c| *c != b':').collect();
    let (h, m) = match digits.len() {
        2 => (num(&digits)?, 0),
        4 => (num(&digits[0..2])?, num(&digits[2..4])?),
        _ => return None,
    };
    if h > 23 || m > 59 {
        return None;
    }
    Some(sign * (h as i32 * 3600 + m as i32 * 60))
}

/// Microseconds since the epoch, the lake's unit.
pub fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub const MICROS_PER_DAY: i64 = 86_400_000_000;

const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// Days since the epoch of a microsecond timestamp's UTC day: an integer the hot loops can
/// compare and group by, turned into a date only once per distinct day.
pub fn day_number(us: i64) -> i32 {
    us.div_euclid(MICROS_PER_DAY) as i32
}

pub fn date_of_day(days: i32) -> NaiveDate {
    NaiveDate::from_num_days_from_ce_opt(days + UNIX_EPOCH_DAYS_FROM_CE).expect("a valid day")
}

/// A day number from outside (a file's Date32 column) if it is of the years 1 to 9999, which
/// every date column can hold and [`date_of_day`] can convert.
pub fn checked_day(days: i32) -> Option<i32> {
    const FIRST: i32 = 1 - UNIX_EPOCH_DAYS_FROM_CE;
    const LAST: i32 = 3_652_059 - UNIX_EPOCH_DAYS_FROM_CE;
    (FIRST..=LAST).contains(&days).then_some(days)
}

pub fn day_of_date(d: NaiveDate) -> i32 {
    d.num_days_from_ce() - UNIX_EPOCH_DAYS_FROM_CE
}

/// The UTC day of a microsecond timestamp.
pub fn day_of_micros(us: i64) -> NaiveDate {
    date_of_day(day_number(us))
}

/// Rows per day of day numbers. Rows mostly come in time order, so a run of one day costs a
/// comparison per row, not a date conversion or a map update.
pub fn rows_per_day(days: &[i32]) -> BTreeMap<NaiveDate, u64> {
    let mut counts: BTreeMap<i32, u64> = BTreeMap::new();
    let mut run: Option<(i32, u64)> = None;
    for &d in days {
        match &mut run {
            Some((day, n)) if *day == d => *n += 1,
            _ => {
                if let Some((day, n)) = run.replace((d, 1)) {
                    *counts.entry(day).or_insert(0) += n;
                }
            }
        }
    }
    if let Some((day, n)) = run {
        *counts.entry(day).or_insert(0) += n;
    }
    counts
        .into_iter()
        .map(|(d, n)| (date_of_day(d), n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_numbers_round_trip_and_rows_per_day_counts_each_day() {
        let d = |s: &str| s.parse::<NaiveDate>().unwrap();
        for day in ["1969-12-31", "1970-01-01", "2024-02-29"] {
            assert_eq!(date_of_day(day_of_date(d(day))), d(day));
        }
        // One microsecond before the epoch is still 1969-12-31, not 1970-01-01.
        assert_eq!(day_of_micros(-1), d("1969-12-31"));
        let noon = |s: &str| {
            parse_utc(&format!("{s}T12:00:00Z"))
                .unwrap()
                .timestamp_micros()
        };
        let times = [
            noon("2024-06-15"),
            noon("2024-06-14"),
            noon("2024-06-15"),
            noon("2024-06-14"),
        ]
        .map(day_number);
        assert_eq!(
            rows_per_day(&times).into_iter().collect::<Vec<_>>(),
            [(d("2024-06-14"), 2), (d("2024-06-15"), 2)]
        );
    }

    fn ts(s: &str) -> String {
        parse_utc(s)
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| "NONE".into())
    }

    #[test]
    fn every_documented_form() {
        assert_eq!(ts("2024-06-15T00:00:13Z"), "2024-06-15T00:00:13+00:00");
        assert_eq!(ts("2024-06-15:00:00:13"), "2024-06-15T00:00:13+00:00");
        assert_eq!(ts("2024-06-15T00:00:12"), "2024-06-15T00:00:12+00:00");
        assert_eq!(ts("2024-06-15 00:00:12"), "2024-06-15T00:00:12+00:00");
        assert_eq!(
            ts("2023-09-13T00:29:55.55Z"),
            "2023-09-13T00:29:55.550+00:00"
        );
        assert_eq!(ts("2025-12-14T00:30:34:000Z"), "2025-12-14T00:30:34+00:00");
        assert_eq!(
            ts("2025-12-14T00:30:34:123Z"),
            "2025-12-14T00:30:34.123+00:00"
        );
        assert_eq!(
            ts("2024-12-31T05:46:14.265Z"),
            "2024-12-31T05:46:14.265+00:00"
        );
        assert_eq!(ts("2020-01-01T00:00:00.0Z"), "2020-01-01T00:00:00+00:00");
        assert_eq!(ts("2024-06-15T02:00:13+02:00"), "2024-06-15T00:00:13+00:00");
        assert_eq!(ts("2024-06-14T19:00:13-0500"), "2024-06-15T00:00:13+00:00");
        assert_eq!(ts(" 2024-06-15T00:00:13Z "), "2024-06-15T00:00:13+00:00");
        assert_eq!(
            ts("2024-06-15T00:00:13.123456789Z"),
            "2024-06-15T00:00:13.123456789+00:00"
        );
        assert_eq!(ts("2024-07-02"), "2024-07-02T00:00:00+00:00");
        assert_eq!(ts("2024-06-15T00:00Z"), "2024-06-15T00:00:00+00:00");
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "not a date",
            "2024-13-01T00:00:00Z",
            "2024-06-15T25:61:00Z",
            "2024-02-30",
            "2024-06-15T00:00:13Zulu",
            "2024/06/15 00:00:13",
            "15-06-2024",
            "2024-06-15T00:00:13+25:00",
            "2024-06-15X00:00:13",
        ] {
            assert!(parse_utc(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn dates() {
        assert_eq!(
            parse_date("2024-06-13"),
            NaiveDate::from_ymd_opt(2024, 6, 13)
        );
        assert_eq!(
            parse_date("2024-06-13T23:00:00-02:00"),
            NaiveDate::from_ymd_opt(2024, 6, 14)
        );
        assert_eq!(parse_date("2024-06-31"), None);
        assert_eq!(
            day_of_micros(-1),
            NaiveDate::from_ymd_opt(1969, 12, 31).unwrap()
        );
    }
}
