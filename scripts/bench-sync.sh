#!/usr/bin/env bash
# One first (13-month history) sync from the built-in simulator into a fresh local lake, timed:
# wall seconds, rows/s, peak RSS, lake size and object count.
# Usage: scripts/bench-sync.sh [ROWS] [FORMAT]      (defaults: 1000000 csv)
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-1000000}
format=${2:-csv}
cargo build --release --locked --quiet
bin=$PWD/target/release/dpss-sync
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" simulate --listen "127.0.0.1:$port" --rows-per-day $(( rows / 397 )) --job-delay 1ms >"$work/sim.log" 2>&1 &
sim=$!
trap 'kill $sim 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do curl -s -o /dev/null -X POST "http://127.0.0.1:$port/connect/token" && break; sleep 0.1; done
cat >"$work/dpss.toml" <<TOML
[api]
base_url = "http://127.0.0.1:$port"
subscriber_id = "00000000-0000-4000-8000-00000000beef"
poll_interval = "100ms"
poll_max = "1s"
[auth]
token_url = "http://127.0.0.1:$port/connect/token"
client_id = "dpss-sim-client"
client_secret = "dpss-sim-secret"
[lake]
url = "file://$work/lake"
[state]
url = "sqlite://$work/state/state.db"
[products.hid_work_orders]
subscription_id = "00000000-0000-4000-8000-00000000cafe"
file_type = "$format"
TOML
RUST_LOG=warn /usr/bin/time -v "$bin" --config "$work/dpss.toml" sync >"$work/out.txt" 2>"$work/time.txt"
grep -E "committed" "$work/out.txt" | head -2
python3 - "$work" <<'PY'
import re, sys, os
work = sys.argv[1]
t = open(f"{work}/time.txt").read()
wall = t.split("Elapsed (wall clock) time (h:mm:ss or m:ss): ")[1].split("\n")[0]
parts = [float(x) for x in wall.split(":")]
secs = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1)) / 1024
out = open(f"{work}/out.txt").read()
read = int(re.search(r"rows read (\d+)", out).group(1))
size, objects = 0, 0
for root, _, files in os.walk(f"{work}/lake/hid_work_orders"):
    for f in files:
        size += os.path.getsize(os.path.join(root, f)); objects += 1
print(f"sync of {read:,} rows: {secs:.2f} s wall, {read/secs:,.0f} rows/s, peak RSS {rss:.0f} MiB, lake {size/1e6:.1f} MB in {objects} objects")
PY
