#!/usr/bin/env bash
# How fast the built-in simulator produces an export: a 13-month history job of about
# ROWS rows (default 5,000,000) in FORMAT (default csv), timed from the batch request to Success.
# Usage: scripts/bench-sim.sh [ROWS] [FORMAT]
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-5000000}
format=${2:-csv}
cargo build --release --locked --quiet
bin=target/release/dpss-sync
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
per_day=$(( rows / 397 ))
log=$(mktemp)
"$bin" simulate --listen "127.0.0.1:$port" --rows-per-day "$per_day" --job-delay 1ms >"$log" 2>&1 &
sim=$!
trap 'kill $sim 2>/dev/null; rm -f "$log"' EXIT
base="http://127.0.0.1:$port"
sub=00000000-0000-4000-8000-00000000cafe
for _ in $(seq 50); do curl -s -o /dev/null "$base/connect/token" -X POST && break; sleep 0.1; done
token=$(curl -s -X POST "$base/connect/token" -d grant_type=client_credentials -d client_id=dpss-sim-client \
  -d client_secret=dpss-sim-secret -d scope=DPSSSubscriberApi | python3 -c 'import sys,json; print(json.load(sys.stdin)["access_token"])')
hdr=(-H "Authorization: Bearer $token" -H "DataSubscriberId: 00000000-0000-4000-8000-00000000beef")
cid() { python3 -c 'import uuid; print(uuid.uuid4())'; }
start=$(date +%s.%N)
job=$(curl -s "${hdr[@]}" -H "Itron-CorrelationId: $(cid)" -H 'Content-Type: application/json' \
  -d "{\"filetype\":\"$format\",\"tokens\":{\"StatusDatetime\":\"\"},\"isOhsRequest\":false}" \
  "$base/dpss/api/v1/subscriptions/$sub/batch-request" | python3 -c 'import sys,json; print(json.load(sys.stdin)["jobId"])')
while :; do
  status=$(curl -s "${hdr[@]}" -H "Itron-CorrelationId: $(cid)" "$base/dpss/api/v1/subscriptions/$sub/batch-request/$job" \
    | python3 -c 'import sys,json; print(json.load(sys.stdin)["status"])')
  [ "$status" = Success ] && break
  [ "$status" = Failed ] && { echo "job failed"; exit 1; }
  sleep 0.1
done
end=$(date +%s.%N)
built=$(grep -o 'rows=[0-9]*' "$log" | tail -1 | cut -d= -f2)
size=$(ls -l /tmp 2>/dev/null >/dev/null; curl -sI "$(curl -s "${hdr[@]}" -H "Itron-CorrelationId: $(cid)" "$base/dpss/api/v1/subscriptions/$sub/batch-request/$job" | python3 -c 'import sys,json; print(json.load(sys.stdin)["downloadUrl"])')" | tr -d '\r' | awk -F': ' 'tolower($1)=="content-length"{print $2}')
python3 - "$built" "$start" "$end" "$size" "$format" <<'PY'
import sys
rows, start, end, size, fmt = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4] or 0), sys.argv[5]
secs = end - start
print(f"simulator {fmt} export: {rows:,} rows in {secs:.2f} s = {rows/secs:,.0f} rows/s; zip {size/1e6:.1f} MB")
PY
