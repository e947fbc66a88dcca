#!/usr/bin/env bash
# Makes tests/data/legacy-hid.tar.gz: a HID lake (Hive Parquet and Delta) and its SQLite state,
# written by a dpss-sync from before products became declarations, for tests/legacy.rs to sync
# further with the current code. Usage: scripts/legacy-fixture.sh OLD_BINARY
# (OLD_BINARY: `git worktree add /tmp/old d86c318 && cargo build --release` there).
set -euo pipefail
old=${1:?usage: scripts/legacy-fixture.sh OLD_BINARY}
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'kill "$sim" 2>/dev/null || true; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$old" simulate --listen "127.0.0.1:$port" --rows-per-day 3 --job-delay 100ms --quiet &
sim=$!
sleep 1
for format in parquet delta; do
  mkdir -p "$work/$format"
  cat > "$work/$format.toml" <<TOML
[api]
base_url = "http://127.0.0.1:$port"
subscriber_id = "00000000-0000-4000-8000-00000000beef"
poll_interval = "100ms"
poll_max = "200ms"
[auth]
token_url = "http://127.0.0.1:$port/connect/token"
client_id = "dpss-sim-client"
client_secret = "dpss-sim-secret"
[lake]
url = "file://$work/$format/lake"
format = "$format"
[state]
url = "sqlite://$work/$format/state.db"
[products.hid_work_orders]
subscription_id = "00000000-0000-4000-8000-00000000cafe"
file_type = "csv"
lookback_days = 2
TOML
  "$old" --quiet --config "$work/$format.toml" sync
done
tar -C "$work" -czf tests/data/legacy-hid.tar.gz parquet delta
ls -l tests/data/legacy-hid.tar.gz
