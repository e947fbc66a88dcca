//! Reading one commit of a table's log: the partitions it touched, the `txn` it carries and
//! whether it was this tool's (its `commitInfo.dpss_sync.commit_id`), which is all a writer that
//! lost a race to it, or a repair looking for its own commit, needs to know.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

use super::COMMIT_INFO_KEY;

/// The actions of one commit that matter to a writer that lost a race to it.
#[derive(Debug, Default)]
pub(super) struct SeenCommit {
    pub(super) commit_id: Option<String>,
    pub(super) txns: HashMap<String, i64>,
    pub(super) partitions: BTreeSet<String>,
    pub(super) metadata: bool,
}

impl SeenCommit {
    /// Reads the newline-delimited actions of a commit file; lines it does not know are skipped.
    pub(super) fn parse(bytes: &[u8], column: &str) -> Self {
        let mut seen = SeenCommit::default();
        for line in bytes.split(|b| *b == b'\n') {
            let Ok(Value::Object(action)) = serde_json::from_slice::<Value>(line) else {
                continue;
            };
            for (kind, body) in action {
                match kind.as_str() {
                    "add" | "remove" => {
                        if let Some(v) = body
                            .get("partitionValues")
                            .and_then(|p| p.get(column))
                            .and_then(Value::as_str)
                        {
                            seen.partitions.insert(v.to_string());
                        }
                    }
                    "txn" => {
                        if let (Some(app), Some(v)) = (
                            body.get("appId").and_then(Value::as_str),
                            body.get("version").and_then(Value::as_i64),
                        ) {
                            seen.txns.insert(app.to_string(), v);
                        }
                    }
                    "metaData" | "protocol" => seen.metadata = true,
                    "commitInfo" => {
                        seen.commit_id = body
                            .get(COMMIT_INFO_KEY)
                            .and_then(|i| i.get("commit_id"))
                            .and_then(Value::as_str)
                            .map(str::to_string);
                    }
                    _ => {}
                }
            }
        }
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_file_says_its_partitions_txn_and_author() {
        let log = br#"{"commitInfo":{"timestamp":1,"operation":"WRITE","dpss_sync":{"commit_id":"c-1","txn":7}}}
{"txn":{"appId":"hid_work_orders","version":7,"lastUpdated":1}}
{"remove":{"path":"event_date=2024-06-01/a.parquet","dataChange":true,"partitionValues":{"event_date":"2024-06-01"}}}
{"add":{"path":"event_date=2024-06-02/b.parquet","partitionValues":{"event_date":"2024-06-02"},"size":1,"modificationTime":1,"dataChange":true}}
"#;
        let seen = SeenCommit::parse(log, "event_date");
        assert_eq!(seen.commit_id.as_deref(), Some("c-1"));
        assert_eq!(seen.txns.get("hid_work_orders"), Some(&7));
        assert_eq!(
            seen.partitions,
            BTreeSet::from(["2024-06-01".to_string(), "2024-06-02".to_string()])
        );
        assert!(!seen.metadata);
        assert!(SeenCommit::parse(br#"{"metaData":{}}"#, "event_date").metadata);
    }
}
