#!/usr/bin/env bash
# Instruction counts of one import, repeatable on a shared, noisy machine: callgrind counts
# instructions, not seconds. Imports the same 200k-row exports (scripts/exportgen.py's `uniform`
# shape, as CSV and as Parquet, written without this project's code) with each binary named,
# into a fresh lake each time, and prints the totals side by side.
#
# Usage: scripts/callgrind.sh [--rows N] [--shape uniform|wide|messy] BINARY [BINARY...]
#   e.g. scripts/callgrind.sh /tmp/dpss-sync-before target/release/dpss-sync
set -euo pipefail
cd "$(dirname "$0")/.."
rows=200000
shape=uniform
bins=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) rows=$2; shift 2 ;;
    --shape) shape=$2; shift 2 ;;
    *) bins+=("$(realpath "$1")"); shift ;;
  esac
done
[ ${#bins[@]} -gt 0 ] || { echo "usage: $0 [--rows N] [--shape S] BINARY..." >&2; exit 2; }
command -v valgrind >/dev/null || { echo "valgrind is needed (Debian: apt-get install valgrind)" >&2; exit 2; }
python3 -c 'import numpy, pyarrow' 2>/dev/null || python3 -m pip install --quiet numpy 'pyarrow>=15'

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for format in csv parquet; do
  python3 scripts/exportgen.py "$shape" "$rows" "$format" "$work/export.$format" >/dev/null
done
printf '%-8s %-10s %16s  %s\n' format shape instructions binary
for format in csv parquet; do
  for bin in "${bins[@]}"; do
    run="$work/run"
    rm -rf "$run" && mkdir -p "$run"
    cat > "$run/dpss.toml" <<EOF
[lake]
url = "file://$run/lake"
[state]
url = "sqlite://$run/state.db"
[products.hid_work_orders]
EOF
    valgrind --tool=callgrind --callgrind-out-file="$run/out" --trace-children=no \
      "$bin" --config "$run/dpss.toml" --quiet import --product hid_work_orders "$work/export.$format" \
      2> "$run/valgrind.log" >/dev/null
    total=$(sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$run/valgrind.log")
    printf '%-8s %-10s %16s  %s\n' "$format" "$shape" "$total" "$bin"
  done
done
