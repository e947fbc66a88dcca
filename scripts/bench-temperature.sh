#!/usr/bin/env bash
# The temperature product's import benchmark (docs/performance-temperature.md): dpss-sync against
# DuckDB and Polars on scripts/exportgen.py's temperature exports (installs both from PyPI if
# missing). Arguments go to scripts/bench_temperature.py, e.g. --rows 1000000 --runs 1
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import duckdb, polars, pyarrow, numpy' 2>/dev/null ||
  python3 -m pip install --quiet 'duckdb==1.4.4' polars pyarrow numpy
cargo build --release --locked --quiet
exec python3 scripts/bench_temperature.py "$@"
