#!/usr/bin/env python3
"""Crash harness: SIGKILL `dpss-sync backfill` at seeded random moments against the built-in
simulator (slow jobs, flaky downloads), restart it until a run finishes, and check what the lake
and the state hold against a clean reference run. Also crashes once at every stage boundary
(the failpoints). Every other round, and a second pass of the failpoints, runs with a
lake.target_file_size so small that every partition has several objects, so kills land between
the puts of one partition (the `between-puts` failpoint does so on purpose); after each round
the lake must hold exactly the objects the state records. Prints a JSON summary; exit code 1 if
any invariant broke.

Usage: scripts/crash-test.py [--kills 100] [--seed 1] [--days 20] [--rows-per-day 200]
                             [--small-target 2KiB]
"""
import argparse
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta

import duckdb

FAILPOINTS = ["after-submit", "after-download", "between-puts", "mid-write", "after-write",
              "after-commit"]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def config(work, port, target):
    target_line = f'target_file_size = "{target}"' if target else ""
    return f"""
[api]
base_url = "http://127.0.0.1:{port}"
subscriber_id = "00000000-0000-4000-8000-00000000beef"
poll_interval = "100ms"
poll_max = "400ms"
max_concurrent_jobs = 4
[auth]
token_url = "http://127.0.0.1:{port}/connect/token"
client_id = "dpss-sim-client"
client_secret = "dpss-sim-secret"
[lake]
url = "file://{work}/lake"
{target_line}
[state]
url = "sqlite://{work}/state/state.db"
[products.hid_work_orders]
subscription_id = "00000000-0000-4000-8000-00000000cafe"
file_type = "csv"
"""


class Round:
    """One lake + state, killed and restarted until a backfill run finishes."""

    def __init__(self, root, name, port, binary, days, target=None):
        self.work = os.path.join(root, name)
        os.makedirs(self.work)
        self.cfg = os.path.join(self.work, "dpss.toml")
        with open(self.cfg, "w") as f:
            f.write(config(self.work, port, target))
        self.binary = binary
        self.args = ["backfill", "--from", days[0].isoformat(), "--to", days[-1].isoformat()]

    def start(self, env=None):
        e = dict(os.environ, RUST_LOG="error")
        e.update(env or {})
        return subprocess.Popen([self.binary, "--config", self.cfg, *self.args], env=e,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def finish(self):
        p = self.start()
        _, err = p.communicate(timeout=600)
        if p.returncode != 0:
            raise SystemExit(f"final run failed: {err.decode(errors='replace')}")

    def jobs_per_window(self):
        con = sqlite3.connect(os.path.join(self.work, "state/state.db"))
        rows = con.execute("SELECT window_key, count(*) FROM jobs GROUP BY window_key").fetchall()
        con.close()
        return dict(rows)

    def lake(self):
        src = f"read_parquet('{self.work}/lake/hid_work_orders/**/*.parquet', hive_partitioning = true)"
        q = (f"SELECT service_point_id, phase, issue_id, status, epoch_us(status_datetime), reason, "
             f"CAST(event_date AS VARCHAR), work_order_id FROM {src}")
        return duckdb.sql(q).fetchall()

    def quarantine_rows(self):
        path = f"{self.work}/lake/_quarantine/hid_work_orders"
        if not os.path.isdir(path):
            return 0
        return duckdb.sql(f"SELECT count(*) FROM read_parquet('{path}/**/*.parquet')").fetchone()[0]

    def manifest(self):
        """The data objects the state records, relative to the lake root."""
        con = sqlite3.connect(os.path.join(self.work, "state/state.db"))
        rows = con.execute("SELECT objects FROM partitions WHERE rows > 0").fetchall()
        con.close()
        return {o for (objects,) in rows for o in json.loads(objects)}

    def objects_per_partition(self):
        lake = os.path.join(self.work, "lake/hid_work_orders")
        counts = [len(files) for _, _, files in os.walk(lake) if files]
        return max(counts) if counts else 0

    def orphans(self):
        found = []
        downloads = os.path.join(self.work, "state/downloads")
        for name in os.listdir(downloads) if os.path.isdir(downloads) else []:
            found.append(os.path.join(downloads, name))
        lake = os.path.join(self.work, "lake")
        recorded = self.manifest()
        for root, _, files in os.walk(lake):
            for f in files:
                path = os.path.join(root, f)
                rel = os.path.relpath(path, lake)
                data = rel.startswith("hid_work_orders/")
                if not f.endswith(".parquet") or (data and rel not in recorded):
                    found.append(path)
        return found


def check(rnd, reference, ref_quarantine, problems, label):
    rows = rnd.lake()
    identities = [(r[7], r[2], r[3], r[4]) for r in rows]
    dupes = len(identities) - len(set(identities))
    missing = len(set(reference) - set(rows))
    extra = len(set(rows) - set(reference))
    jobs = rnd.jobs_per_window()
    twice = {k: n for k, n in jobs.items() if n != 1}
    orphans = rnd.orphans()
    quarantine = rnd.quarantine_rows()
    for what, bad in [("duplicate identities", dupes), ("missing rows", missing), ("unexpected rows", extra),
                      ("windows submitted more than once", len(twice)),
                      (f"orphan files ({', '.join(os.path.basename(o) for o in orphans[:3])})", len(orphans)),
                      ("quarantine rows differing from the reference", abs(quarantine - ref_quarantine))]:
        if bad:
            problems.append(f"{label}: {bad} {what}")
    return dupes, missing, extra, len(twice), len(orphans)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--days", type=int, default=20)
    ap.add_argument("--rows-per-day", type=int, default=200)
    ap.add_argument("--binary", default="target/release/dpss-sync")
    ap.add_argument("--small-target", default="2KiB",
                    help="lake.target_file_size of the multi-object rounds")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    root = tempfile.mkdtemp(prefix="dpss-crash-")
    port = free_port()
    sim = subprocess.Popen([a.binary, "simulate", "--listen", f"127.0.0.1:{port}", "--rows-per-day",
                            str(a.rows_per_day), "--job-delay", "800ms", "--faults", "truncated=4"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        today = date.today()
        days = [today - timedelta(days=k) for k in range(a.days, 0, -1)]
        ref = Round(root, "reference", port, a.binary, days)
        ref.finish()
        reference = ref.lake()
        ref_quarantine = ref.quarantine_rows()
        problems, kills, rounds, killed_runs_total = [], 0, 0, 0
        multi_object_rounds, max_objects = 0, 0
        started = time.time()
        while kills < a.kills:
            rounds += 1
            target = a.small_target if rounds % 2 == 0 else None
            rnd = Round(root, f"round-{rounds}", port, a.binary, days, target)
            completed = False
            while kills < a.kills:
                p = rnd.start()
                time.sleep(rng.uniform(0.05, 2.5))
                if p.poll() is None:
                    p.send_signal(signal.SIGKILL)
                    p.wait()
                    kills += 1
                    killed_runs_total += 1
                    over = {k: n for k, n in rnd.jobs_per_window().items() if n > 1}
                    if over:
                        problems.append(f"round {rounds}: windows submitted twice after a kill: {over}")
                else:
                    completed = p.communicate() is not None and p.returncode == 0
                    break
            # Restarted until a run gets to finish, as an operator (or systemd) would.
            if not completed:
                rnd.finish()
            check(rnd, reference, ref_quarantine, problems, f"round {rounds}")
            if target:
                multi_object_rounds += 1
                max_objects = max(max_objects, rnd.objects_per_partition())
            shutil.rmtree(rnd.work)
        failpoint_runs = 0
        for target in [None, a.small_target]:
            for point in FAILPOINTS:
                if point == "between-puts" and not target:
                    continue
                failpoint_runs += 1
                label = f"failpoint {point} (target {target or 'default'})"
                rnd = Round(root, f"failpoint-{point}-{target}", port, a.binary, days, target)
                p = rnd.start({"DPSS_SYNC_FAILPOINT": point})
                p.communicate(timeout=600)
                if p.returncode == 0:
                    problems.append(f"{label} did not fire")
                rnd.finish()
                check(rnd, reference, ref_quarantine, problems, label)
                shutil.rmtree(rnd.work)
        summary = {
            "kills": kills,
            "kills_survived": kills if not problems else None,
            "rounds": rounds,
            "failpoints": failpoint_runs,
            "multi_object_rounds": multi_object_rounds,
            "small_target": a.small_target,
            "max_objects_per_partition": max_objects,
            "days": a.days,
            "reference_rows": len(reference),
            "reference_quarantined": ref_quarantine,
            "problems": problems,
            "rows_lost": sum(1 for p in problems if "missing rows" in p),
            "duplicates": sum(1 for p in problems if "duplicate" in p),
            "seconds": round(time.time() - started, 1),
            "seed": a.seed,
        }
        print(json.dumps(summary, indent=2))
        return 1 if problems else 0
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
