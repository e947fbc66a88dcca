//! Any product's table read back by the independent readers, as JSON rows keyed by column:
//! DuckDB for the Hive layout, the Python `deltalake` package for a Delta table. Timestamps are
//! µs since the epoch, dates `YYYY-MM-DD`, so a test compares them with the simulator's rows.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

/// A row as the readers give it: column name to value.
pub type JsonRow = BTreeMap<String, Value>;

/// What a reader saw of one table: each column's type as DuckDB names it, and the rows.
pub struct TableRead {
    pub types: BTreeMap<String, String>,
    pub rows: Vec<JsonRow>,
}

impl TableRead {
    /// The rows less the lineage columns, each as one canonical JSON text, sorted: what the
    /// table holds, for comparing with what it should hold.
    pub fn content(&self) -> Vec<String> {
        canonical(self.rows.iter().map(|r| {
            r.iter()
                .filter(|(k, _)| k.as_str() != "_job_id" && k.as_str() != "_ingested_at")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }))
    }
}

/// Rows as sorted canonical JSON texts.
pub fn canonical(rows: impl Iterator<Item = JsonRow>) -> Vec<String> {
    let mut out: Vec<String> = rows.map(|r| serde_json::to_string(&r).unwrap()).collect();
    out.sort();
    out
}

/// How a table is laid out for its reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Hive-partitioned Parquet, the partition column read from the path.
    Hive,
    /// Parquet files read without the path's columns (the quarantine, whose rows of no day sit
    /// a level deeper).
    Files,
    Delta,
}

/// The table at `<lake>/<table>`, or `None` outside CI when Python lacks the readers (in CI a
/// missing reader fails the test).
pub fn read_table(lake: &Path, table: &str, layout: Layout) -> Option<TableRead> {
    let script = r#"
import os, sys, json
lake, table, layout = sys.argv[1], sys.argv[2], sys.argv[3]
import duckdb
con = duckdb.connect()
if layout == "delta":
    import deltalake
    con.register("t", deltalake.DeltaTable(os.path.join(lake, table)).to_pyarrow_table())
    src = "t"
else:
    hive = "true" if layout == "hive" else "false"
    src = f"read_parquet('{lake}/{table}/**/*.parquet', hive_partitioning = {hive})"
cols = con.sql(f"DESCRIBE SELECT * FROM {src}").fetchall()
exprs = []
for c in cols:
    name, typ = c[0], c[1]
    if typ.startswith("TIMESTAMP"):
        exprs.append(f'epoch_us("{name}") AS "{name}"')
    elif typ == "DATE":
        exprs.append(f'CAST("{name}" AS VARCHAR) AS "{name}"')
    else:
        exprs.append(f'"{name}"')
print(json.dumps({c[0]: c[1] for c in cols}))
rel = con.sql(f"SELECT {', '.join(exprs)} FROM {src}")
names = rel.columns
for r in rel.fetchall():
    print(json.dumps(dict(zip(names, r)), ensure_ascii=False))
# Skip the interpreter's teardown, where pyarrow's threads now and then abort after the work.
sys.stdout.flush()
os._exit(0)
"#;
    let layout = match layout {
        Layout::Hive => "hive",
        Layout::Files => "files",
        Layout::Delta => "delta",
    };
    let out = std::process::Command::new("python3")
        .args(["-c", script, &lake.display().to_string(), table, layout])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8(o.stdout).unwrap();
            let mut lines = text.lines();
            let types = serde_json::from_str(lines.next().unwrap()).unwrap();
            let rows = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
            Some(TableRead { types, rows })
        }
        other => {
            let why = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            if std::env::var_os("CI").is_some() {
                panic!("the independent readers (DuckDB, deltalake) failed on {table}: {why}");
            }
            eprintln!("skipping the read-back of {table}: {why}");
            None
        }
    }
}
