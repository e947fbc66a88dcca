#!/usr/bin/env bash
# The import benchmark of docs/performance.md: dpss-sync against DuckDB and polars on the same
# simulator exports (installs both from PyPI if missing). Arguments go to scripts/bench.py,
# e.g. scripts/bench.sh --sizes 1000000 --formats csv --runs 1
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import duckdb, polars' 2>/dev/null || python3 -m pip install --quiet 'duckdb==1.4.4' polars
cargo build --release --locked --quiet
exec python3 scripts/bench.py "$@"
