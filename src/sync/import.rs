//! `import`: local export files into the lake, as one job.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{Pipeline, RunReport, SyncError, WindowReport};
use crate::lake::Replace;
use crate::product::Product;

impl Pipeline {
    /// `import`: local export files into the lake, replacing the status days they hold. The
    /// files are one job, as the part files of one export are: each part holds some of a day's
    /// rows, so importing them one by one would let each part replace the day the previous one
    /// wrote. An identity in several files keeps its copy from the last file named.
    pub async fn import(
        &self,
        product: Product,
        files: Vec<PathBuf>,
        force: bool,
    ) -> Result<RunReport, SyncError> {
        let run_id = self.state.start_run("import", Some(product)).await?;
        let first = files.first().expect("import needs a file");
        let more = match files.len() {
            1 => String::new(),
            n => format!("+{}", n - 1),
        };
        let key = format!("import-{}{more}", sanitize(first));
        let job_id = format!("import:{}{more}", first.display());
        let result = async {
            let normalized = self.normalize_files(product, &job_id, files).await?;
            let _lake = self.lake_lock.lock().await;
            let written = self
                .write(
                    product,
                    &key,
                    normalized,
                    Replace::DaysAndDelivered(BTreeSet::new()),
                    force,
                )
                .await?;
            let counts = written.counts;
            self.commit(product, &job_id, &key, written, None).await?;
            Ok::<_, SyncError>(counts)
        }
        .await;
        let (counts, error, refused) = match result {
            Ok(c) => (Some(c), None, false),
            Err(e) => (
                None,
                Some(crate::model::cut(&e.to_string()).into_owned()),
                e.refuses_request(),
            ),
        };
        let window = WindowReport {
            key,
            job_id: Some(job_id),
            counts,
            error,
            refused,
        };
        let report = RunReport {
            run_id,
            windows: vec![window],
            ..Default::default()
        };
        let error = report.windows[0].error.as_deref();
        self.state
            .finish_run(run_id, report.totals(), error)
            .await?;
        Ok(report)
    }
}

/// A file name as a quarantine window key: only characters safe in any object store path.
pub(super) fn sanitize(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
