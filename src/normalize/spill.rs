//! Arrow IPC files on local disk for what does not fit in memory: valid rows past the budget,
//! and quarantined rows past theirs. Each spill is one file of record batches, read back one
//! batch at a time; the files live in a private scratch directory removed when the spill is
//! dropped, so a finished or failed job leaves nothing behind.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use arrow::record_batch::RecordBatch;

#[derive(Debug, thiserror::Error)]
#[error("spill file {path}: {detail}")]
pub struct SpillError {
    pub path: String,
    pub detail: String,
}

impl SpillError {
    fn at(path: &Path) -> impl Fn(String) -> Self + '_ {
        |detail| Self {
            path: path.display().to_string(),
            detail,
        }
    }
}

/// Where a spilled batch is: (file, batch index within it).
pub type Spilled = (usize, usize);

pub struct Spill {
    scratch: PathBuf,
    /// Created on the first spill: most jobs never need one.
    dir: Option<tempfile::TempDir>,
    files: Vec<PathBuf>,
    name: &'static str,
}

impl Spill {
    /// Files go in a fresh directory under `scratch`, named `<name>-N.arrow`.
    pub fn new(scratch: &Path, name: &'static str) -> Self {
        Self {
            scratch: scratch.to_path_buf(),
            dir: None,
            files: Vec::new(),
            name,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    #[cfg(test)]
    pub fn files(&self) -> usize {
        self.files.len()
    }

    /// Names the next file and counts it as written: the caller writes it with
    /// [`write_file`] (on another thread, if it likes) before anything reads it.
    pub fn next_file(&mut self) -> Result<(usize, PathBuf), SpillError> {
        if self.dir.is_none() {
            let dir = tempfile::Builder::new()
                .prefix(crate::decode::SCRATCH_PREFIX)
                .tempdir_in(&self.scratch)
                .map_err(|e| SpillError::at(&self.scratch)(e.to_string()))?;
            self.dir = Some(dir);
        }
        let dir = self.dir.as_ref().expect("created above").path();
        let index = self.files.len();
        let path = dir.join(format!("{}-{index}.arrow", self.name));
        self.files.push(path.clone());
        Ok((index, path))
    }

    /// Writes `batches` to a new file and returns where each went, in order.
    pub fn write(
        &mut self,
        schema: &SchemaRef,
        batches: impl IntoIterator<Item = RecordBatch>,
    ) -> Result<Vec<Spilled>, SpillError> {
        let (index, path) = self.next_file()?;
        let count = write_file(&path, schema, batches)?;
        Ok((0..count).map(|n| (index, n)).collect())
    }

    pub fn read(&self, (file, index): Spilled) -> Result<RecordBatch, SpillError> {
        let path = &self.files[file];
        let fail = SpillError::at(path);
        let file = File::open(path).map_err(|e| fail(e.to_string()))?;
        let mut reader =
            FileReader::try_new(BufReader::new(file), None).map_err(|e| fail(e.to_string()))?;
        reader.set_index(index).map_err(|e| fail(e.to_string()))?;
        reader
            .next()
            .ok_or_else(|| fail(format!("record batch {index} is missing")))?
            .map_err(|e| fail(e.to_string()))
    }
}

/// Writes `batches` as the file at `path`; returns how many there were.
pub fn write_file(
    path: &Path,
    schema: &SchemaRef,
    batches: impl IntoIterator<Item = RecordBatch>,
) -> Result<usize, SpillError> {
    let fail = SpillError::at(path);
    // Owner-only, as downloads are: these are the export's rows.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| fail(e.to_string()))?;
    let mut w =
        FileWriter::try_new(BufWriter::new(file), schema).map_err(|e| fail(e.to_string()))?;
    let mut count = 0;
    for batch in batches {
        w.write(&batch).map_err(|e| fail(e.to_string()))?;
        count += 1;
    }
    w.finish().map_err(|e| fail(e.to_string()))?;
    Ok(count)
}
