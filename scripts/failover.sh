#!/usr/bin/env bash
# Failover figures for docs/reliability.md: two `run` replicas on one PostgreSQL state (a
# throwaway cluster, as scripts/test starts) against the simulator; the leader is killed mid-job
# RUNS times (default 20) and the standby's takeover is timed. Each run is the end-to-end test
# tests/failover.rs::a_killed_leader_is_replaced_within_the_lease_and_its_job_resumed, which
# also asserts the lake exact and a single vendor POST; this script collects its figures and
# rewrites the "Failover" section of docs/reliability.md (between its markers).
# Usage: scripts/failover.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
# shellcheck source=scripts/postgres.sh
source scripts/postgres.sh
trap stop_postgres EXIT
start_postgres >&2
report=$(mktemp)
cargo build --locked --quiet --tests
failed=0
for i in $(seq 1 "$runs"); do
  echo "failover run $i of $runs" >&2
  DPSS_FAILOVER_REPORT="$report" cargo test --locked --quiet --test failover \
    a_killed_leader_is_replaced_within_the_lease_and_its_job_resumed >/dev/null 2>&1 || failed=$((failed + 1))
done
python3 - "$report" "$runs" "$failed" docs/reliability.md <<'PY'
import json, statistics, subprocess, sys
report, runs, failed, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rows = [json.loads(l) for l in open(report) if l.strip()]
take = sorted(r["takeover_ms"] for r in rows)
done = sorted(r["commit_ms"] for r in rows)
q = lambda xs, p: xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
section = [
    "<!-- failover:begin (scripts/failover.sh rewrites this section) -->",
    "## Failover (`scripts/failover.sh`, PostgreSQL state, two replicas)",
    "",
    f"{runs} runs at {commit}: two `dpss-sync run` replicas share one PostgreSQL 15 state and one lake;",
    "the simulator holds each export job 4 s; the leader is SIGKILLed once its job is recorded, and",
    "the standby takes the lease (`state.lease_ttl = \"2s\"`), resumes the job and commits. Each run",
    "asserts one POST for the window and the lake's rows exactly once.",
    "",
    "| measure | median | p95 | max |",
    "|---|---|---|---|",
    f"| kill to takeover (ms) | {statistics.median(take) if take else 'n/a'} | {q(take, .95)} | {max(take) if take else 'n/a'} |",
    f"| kill to the window committed (ms) | {statistics.median(done) if done else 'n/a'} | {q(done, .95)} | {max(done) if done else 'n/a'} |",
    "",
    f"- Runs passing every assertion: {len(rows)} of {runs} ({failed} failed).",
    f"- Windows resumed with their recorded job: {sum(r['windows_resumed'] for r in rows)}.",
    f"- Duplicate POSTs: {sum(r['posts'] - 1 for r in rows)}.",
    "- A killed leader's connection closes, so PostgreSQL frees its advisory lock at once and the",
    "  takeover does not wait for the lease to expire; a paused one is cut off once its lease",
    "  expires (`tests/failover.rs::a_leader_paused_past_its_lease_is_fenced_off`).",
    "<!-- failover:end -->",
]
text = open(out).read()
begin, end = text.find("<!-- failover:begin"), text.find("<!-- failover:end -->")
if begin >= 0 and end >= 0:
    text = text[:begin] + "\n".join(section) + text[end + len("<!-- failover:end -->"):]
else:
    text = text.rstrip("\n") + "\n\n" + "\n".join(section) + "\n"
open(out, "w").write(text)
print("\n".join(section))
PY
