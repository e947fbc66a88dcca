//! The vendor's JSON shapes, read tolerantly.
//!
//! The docs mix key casing (`jobId`/`JobId`, `downloadUrl`/`DownloadUri`) and document only two
//! job states, so the models are read from a JSON object with case-insensitive key lookup, and
//! the status is classified by what it contains rather than by an exhaustive enum.

use serde_json::{Map, Value};

use crate::model::{OnDemandRow, scalar_text};

/// What a job status string means for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobPhase {
    Pending,
    Succeeded,
    Failed,
}

impl JobPhase {
    /// `Success` is done; fail/error/cancel/expire are terminal failures; anything else
    /// (New, InProgress, Queued, …) means keep polling.
    pub fn classify(status: &str) -> JobPhase {
        let s = status.trim().to_ascii_lowercase();
        if s == "success" || s == "succeeded" || s == "completed" {
            JobPhase::Succeeded
        } else if ["fail", "error", "cancel", "expire"]
            .iter()
            .any(|w| s.contains(w))
        {
            JobPhase::Failed
        } else {
            JobPhase::Pending
        }
    }
}

/// A batch job as create and status return it.
#[derive(Debug, Clone)]
pub struct BatchJob {
    pub job_id: String,
    pub status: String,
    pub download_url: Option<String>,
    pub file_format: Option<String>,
    /// Any message the vendor attaches to a failure, under whatever key it uses.
    pub message: Option<String>,
}

impl BatchJob {
    pub fn phase(&self) -> JobPhase {
        JobPhase::classify(&self.status)
    }

    pub fn from_json(value: &Value) -> Result<Self, String> {
        let obj = value
            .as_object()
            .ok_or_else(|| "expected a JSON object".to_string())?;
        let job_id = get_str(obj, &["jobId", "id"])
            .filter(|s| !s.is_empty())
            .ok_or_else(|| "no jobId in the response".to_string())?;
        Ok(BatchJob {
            job_id,
            status: get_str(obj, &["status", "jobStatus", "state"]).unwrap_or_default(),
            download_url: get_str(obj, &["downloadUrl", "downloadUri"]).filter(|s| !s.is_empty()),
            file_format: get_str(obj, &["fileFormat", "filetype"]),
            message: get_str(obj, &["message", "error", "errorMessage", "detail"]),
        })
    }
}

/// A token the batch endpoint accepts, from parameter discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpec {
    pub name: String,
    pub kind: String,
    pub is_list: bool,
    pub default: Option<String>,
    pub description: Option<String>,
}

impl TokenSpec {
    pub fn required(&self) -> bool {
        self.default.as_deref() == Some("__REQUIRED__")
    }

    pub fn parse_list(value: &Value) -> Result<Vec<TokenSpec>, String> {
        let tokens = match value {
            Value::Array(a) => a.clone(),
            Value::Object(o) => match lookup(o, "tokens") {
                Some(Value::Array(a)) => a.clone(),
                _ => return Err("no `tokens` array in the discovery response".into()),
            },
            _ => return Err("expected a JSON object with `tokens`".into()),
        };
        tokens
            .iter()
            .map(|t| {
                let o = t.as_object().ok_or("a token entry is not an object")?;
                Ok(TokenSpec {
                    name: get_str(o, &["name"]).ok_or("a token entry has no name")?,
                    kind: get_str(o, &["type"]).unwrap_or_default(),
                    is_list: matches!(lookup(o, "isList"), Some(Value::Bool(true)))
                        || get_str(o, &["isList"]).is_some_and(|s| s.eq_ignore_ascii_case("true")),
                    default: get_str(o, &["default"]),
                    description: get_str(o, &["description"]),
                })
            })
            .collect()
    }
}

/// Keys are matched case-insensitively; values become text as [`scalar_text`] says.
pub fn row_from_json(value: &Value) -> Result<OnDemandRow, String> {
    let obj = value.as_object().ok_or("a row is not a JSON object")?;
    Ok(obj
        .iter()
        .map(|(k, v)| (k.clone(), scalar_text(v)))
        .collect())
}

fn lookup<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

fn get_str(obj: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    keys.iter()
        .find_map(|k| lookup(obj, k))
        .and_then(scalar_text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_classification() {
        for s in ["New", "InProgress", "Processing", "Queued", "Running", ""] {
            assert_eq!(JobPhase::classify(s), JobPhase::Pending, "{s}");
        }
        for s in ["Success", "SUCCESS", " success "] {
            assert_eq!(JobPhase::classify(s), JobPhase::Succeeded, "{s}");
        }
        for s in ["Failed", "Error", "Cancelled", "Expired", "JobFailure"] {
            assert_eq!(JobPhase::classify(s), JobPhase::Failed, "{s}");
        }
    }

    #[test]
    fn job_keys_in_any_casing() {
        let j = BatchJob::from_json(
            &json!({"JobId": "a", "Status": "Success", "DownloadUri": "http://x/y"}),
        )
        .unwrap();
        assert_eq!(j.job_id, "a");
        assert_eq!(j.phase(), JobPhase::Succeeded);
        assert_eq!(j.download_url.as_deref(), Some("http://x/y"));
        let j = BatchJob::from_json(&json!({"jobId": "b", "status": "New", "downloadUrl": null}))
            .unwrap();
        assert_eq!(j.download_url, None);
        assert!(BatchJob::from_json(&json!({"status": "New"})).is_err());
    }

    #[test]
    fn discovery_tokens() {
        let t = TokenSpec::parse_list(&json!({"tokens": [
            {"name": "StatusDatetime", "type": "TIMESTAMP", "isList": false, "default": "__REMOVEIFNOTSUPPLIED__"},
            {"Name": "WorkOrderId", "Type": "STRING", "IsList": true, "Default": "__REQUIRED__"}
        ]}))
        .unwrap();
        assert_eq!(t.len(), 2);
        assert!(!t[0].required());
        assert!(t[1].is_list && t[1].required());
    }

    #[test]
    fn rows_tolerate_doc_errors() {
        let r = row_from_json(&json!({"Phase": 1, "Issueid": {}, "Reason": "x"})).unwrap();
        assert_eq!(r["Phase"].as_deref(), Some("1"));
        assert_eq!(r["Issueid"], None);
    }
}
