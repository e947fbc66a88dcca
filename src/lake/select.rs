//! Which partitions a job's result rewrites. The rule is the lake's: a status day replaced whole
//! leaves every partition that holds rows of it, and rows delivered for a day the job does not
//! replace (a vendor serving a row outside the asked-for day) replace only their own identity,
//! so the partitions holding such days are rewritten too.

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;

/// Which status days a job's result replaces whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replace {
    /// Exactly these days (a day window); rows it delivers for other days merge by identity.
    Days(BTreeSet<NaiveDate>),
    /// These days and every day the result holds (an unfiltered export, an import).
    DaysAndDelivered(BTreeSet<NaiveDate>),
}

/// The rewrite a result asks of the lake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Status days whose rows are replaced whole.
    pub replaced: BTreeSet<NaiveDate>,
    /// Status days the result delivers rows of without replacing them: merged by identity.
    pub merged_days: BTreeSet<NaiveDate>,
    /// The one day a day window asked for, where quarantined rows that name no day belong.
    pub default_day: Option<NaiveDate>,
    /// Partitions (event dates) to rewrite.
    pub partitions: BTreeSet<NaiveDate>,
}

impl Replace {
    /// `delivered` holds the status days of the result's valid rows, `arriving` the partitions
    /// they fall in, and `held` the status days each partition of the lake holds now.
    pub fn select(
        self,
        delivered: &BTreeSet<NaiveDate>,
        arriving: impl IntoIterator<Item = NaiveDate>,
        held: &BTreeMap<NaiveDate, BTreeSet<NaiveDate>>,
    ) -> Selection {
        let (replaced, default_day) = match self {
            Replace::Days(days) => {
                let only = (days.len() == 1).then(|| days.first().copied()).flatten();
                (days, only)
            }
            Replace::DaysAndDelivered(mut days) => {
                days.extend(delivered.iter().copied());
                (days, None)
            }
        };
        let merged_days: BTreeSet<NaiveDate> = delivered.difference(&replaced).copied().collect();
        let touched: BTreeSet<NaiveDate> = replaced.union(&merged_days).copied().collect();
        let mut partitions: BTreeSet<NaiveDate> = held
            .iter()
            .filter(|(_, days)| !days.is_disjoint(&touched))
            .map(|(p, _)| *p)
            .collect();
        partitions.extend(arriving);
        Selection {
            replaced,
            merged_days,
            default_day,
            partitions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn set(days: &[&str]) -> BTreeSet<NaiveDate> {
        days.iter().map(|s| d(s)).collect()
    }

    #[test]
    fn a_day_window_rewrites_the_partitions_holding_its_day_and_merges_stray_days() {
        let held = BTreeMap::from([
            (d("2026-01-01"), set(&["2026-01-01", "2026-01-03"])),
            (d("2026-01-02"), set(&["2026-01-02"])),
            (d("2026-01-03"), set(&["2026-01-03"])),
            (d("2026-01-04"), set(&["2026-01-04"])),
        ]);
        let s = Replace::Days(set(&["2026-01-03"])).select(
            &set(&["2026-01-02", "2026-01-03"]),
            [d("2026-01-05")],
            &held,
        );
        assert_eq!(s.replaced, set(&["2026-01-03"]));
        assert_eq!(s.merged_days, set(&["2026-01-02"]));
        assert_eq!(s.default_day, Some(d("2026-01-03")));
        assert_eq!(
            s.partitions,
            set(&["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-05"]),
            "2026-01-04 holds neither day and receives no row"
        );
    }

    #[test]
    fn an_unfiltered_result_replaces_every_day_it_delivers() {
        let held = BTreeMap::from([
            (d("2026-01-01"), set(&["2026-01-01"])),
            (d("2026-01-02"), set(&["2026-01-02"])),
        ]);
        let s = Replace::DaysAndDelivered(set(&["2026-01-01"])).select(
            &set(&["2026-01-02"]),
            [d("2026-01-02")],
            &held,
        );
        assert_eq!(s.replaced, set(&["2026-01-01", "2026-01-02"]));
        assert!(s.merged_days.is_empty());
        assert_eq!(s.default_day, None);
        assert_eq!(s.partitions, set(&["2026-01-01", "2026-01-02"]));
    }
}
