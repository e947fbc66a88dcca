#!/usr/bin/env python3
"""The import benchmark: dpss-sync against DuckDB and polars on the same export files.

Exports come in several shapes. `simulator`: the built-in simulator's (the vendor's column names
and quirks: shuffled and re-cased headers, BOM, mixed timestamp forms, JSON arrays and lines,
typed Parquet). `uniform`, `wide`, `messy`: scripts/exportgen.py's, written without any of this
project's code (see there). Each tool turns them into Hive-partitioned zstd Parquet by
event_date, DuckDB and polars with the simplest query that is correct for the shape (a plain
cast where timestamps are uniform; every form, de-duplication and the bad-row filter where they
are not); runs alternate between the tools. On generated exports, a dpss-sync run must write
exactly the generator's count of valid distinct rows, or the benchmark stops. Prints wall seconds, rows/s, MB/s of input, peak RSS
and output size per shape, format and size, and writes docs/performance.md. Also times an
end-to-end `sync` of the largest simulator CSV export.

Then the steady state: lakes of 1x, 10x and 100x rows (`--steady`, uniform shape) each get the
same cycle, the rows of their three latest status days imported again, once unchanged and once
with 1% of those rows edited; from dpss-sync's `lake write cost` line it reports the partitions
rewritten and left alone, rows and bytes rewritten per row delivered, the store requests, and
the cycle's wall time and peak memory. One more lake (`--one-partition`, 2M rows by default)
puts every row in one event_date partition over 30 status days, so the cycle rewrites that one
big partition: its peak memory shows whether a rewrite holds the partition or a row group.

Usage: scripts/bench.sh [--sizes 1000000,10000000] [--formats csv,json,parquet] [--runs 3]
                        [--shapes simulator,uniform,wide,messy] [--steady 100000,1000000,10000000]
                        [--large-formats csv] [--one-partition 2000000]
"""
import argparse
import glob
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import zipfile

# DPSS_BENCH_BIN runs another build (an older one, to compare).
BIN = os.path.abspath(os.environ.get("DPSS_BENCH_BIN", "target/release/dpss-sync"))
SUB = "00000000-0000-4000-8000-00000000cafe"
HDR_SUB = "00000000-0000-4000-8000-00000000beef"

FORMS = ["%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%d:%H:%M:%S", "%Y-%m-%dT%H:%M:%S"]

DUCK_TS = "COALESCE(" + ", ".join(
    [f"try_strptime(StatusDatetime, '{f.replace('%f', '%g')}')" for f in FORMS]
    + ["try_strptime(regexp_replace(StatusDatetime, ':(\\d{3})Z$', '.\\1Z'), '%Y-%m-%dT%H:%M:%S.%gZ')"]
) + ")"

DUCK_SELECT = f"""SELECT ServicePointId::VARCHAR AS service_point_id, TRY_CAST(Phase AS TINYINT) AS phase,
  IssueId::VARCHAR AS issue_id, Status::VARCHAR AS status, {{ts}} AS status_datetime,
  Reason::VARCHAR AS reason, WorkOrderId::VARCHAR AS work_order_id, TRY_CAST(EventDate AS DATE) AS event_date
FROM {{src}}"""

# What each generated shape needs for a correct result: how to read its timestamps, and whether
# it has duplicates and bad rows to drop (dpss-sync always does both).
SHAPE_TS = {"uniform": "%Y-%m-%dT%H:%M:%SZ", "wide": "%Y-%m-%dT%H:%M:%S%.3fZ"}
MESSY = "messy"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Sim:
    def __init__(self, rows):
        self.port = free_port()
        self.proc = subprocess.Popen([BIN, "simulate", "--listen", f"127.0.0.1:{self.port}", "--rows-per-day",
                                      str(rows // 397), "--job-delay", "1ms", "--max-parts", "2"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        body = b"grant_type=client_credentials&client_id=dpss-sim-client&client_secret=dpss-sim-secret&scope=DPSSSubscriberApi"
        self.token = json.load(urllib.request.urlopen(self.base + "/connect/token", body))["access_token"]

    def call(self, path, body=None):
        req = urllib.request.Request(self.base + "/dpss/api/v1/subscriptions/" + SUB + path,
                                     data=json.dumps(body).encode() if body else None,
                                     headers={"Authorization": "Bearer " + self.token, "DataSubscriberId": HDR_SUB,
                                              "Itron-CorrelationId": str(uuid.uuid4()),
                                              "Content-Type": "application/json"})
        return json.load(urllib.request.urlopen(req))

    def export(self, fmt, dest):
        job = self.call("/batch-request", {"filetype": fmt, "tokens": {"StatusDatetime": ""}, "isOhsRequest": False})
        while True:
            st = self.call("/batch-request/" + job["jobId"])
            if st["status"] == "Success":
                break
            time.sleep(0.2)
        urllib.request.urlretrieve(st["downloadUrl"], dest)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def timed(cmd, cwd=None, env=None, log=False):
    """Runs cmd under /usr/bin/time -v: (wall seconds, peak RSS MiB, stdout[, stderr])."""
    out = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed: {out.stderr[-2000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", out.stderr).group(1)
    secs = sum(float(p) * 60 ** i for i, p in enumerate(reversed(wall.split(":"))))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1)) / 1024
    return (secs, rss, out.stdout, out.stderr) if log else (secs, rss, out.stdout)


def size_of(path):
    return sum(os.path.getsize(f) for f in glob.glob(path + "/**/*", recursive=True) if os.path.isfile(f))


def run_dpss(files, out, lake_format="parquet"):
    cfg = out + ".toml"
    with open(cfg, "w") as f:
        f.write(f'[lake]\nurl = "file://{out}"\nformat = "{lake_format}"\n'
                f'[state]\nurl = "sqlite://{out}-state/state.db"\n[products.hid_work_orders]\n')
    secs, rss, stdout = timed([BIN, "--config", cfg, "import", "--product", "hid_work_orders", *files],
                              env=dict(os.environ, RUST_LOG="warn"))
    m = re.search(r"rows read (\d+), written (\d+), quarantined (\d+)", stdout)
    return secs, rss, int(m.group(2))


def run_duckdb(files, out, fmt, shape):
    src = {"csv": f"read_csv({files!r}, all_varchar = true, header = true)",
           "json": f"read_json({files!r}, format = 'auto')",
           "parquet": f"read_parquet({files!r})"}[fmt]
    if shape == "simulator":
        ts = "StatusDatetime" if fmt == "parquet" else DUCK_TS
    elif shape == MESSY:
        ts = DUCK_TS
    else:
        ts = "StatusDatetime::TIMESTAMPTZ"
    select = DUCK_SELECT.format(ts=ts, src=src)
    if shape == MESSY:
        select = (f"SELECT DISTINCT ON (work_order_id, issue_id, status, status_datetime) * FROM ({select}) "
                  "WHERE phase BETWEEN 1 AND 4 AND status_datetime IS NOT NULL AND work_order_id <> ''")
    sql = (f"COPY ({select}) TO '{out}' "
           f"(FORMAT parquet, PARTITION_BY (event_date), COMPRESSION zstd)")
    script = f"import duckdb; duckdb.connect().execute({sql!r})"
    secs, rss, _ = timed([sys.executable, "-c", script])
    return secs, rss


def run_polars(files, out, shape):
    if shape in SHAPE_TS:
        forms = f"pl.col(c['statusdatetime']).str.to_datetime({SHAPE_TS[shape]!r}, time_zone='UTC')"
    else:
        forms = ", ".join(f"pl.col(c['statusdatetime']).str.to_datetime({f.replace('.%f', '%.f')!r}, strict=False, time_zone='UTC')"
                          for f in FORMS)
    tail = ""
    if shape == MESSY:
        tail = (".filter(pl.col('phase').is_between(1, 4) & pl.col('status_datetime').is_not_null()"
                " & (pl.col('work_order_id') != ''))"
                ".unique(subset=['work_order_id', 'issue_id', 'status', 'status_datetime'], keep='last',"
                " maintain_order=False)")
    script = f"""
import polars as pl
lf = pl.scan_csv({files!r}, infer_schema=False)
c = {{n.lower(): n for n in lf.collect_schema().names()}}
df = lf.select(
    pl.col(c['servicepointid']).alias('service_point_id'),
    pl.col(c['phase']).cast(pl.Int8, strict=False).alias('phase'),
    pl.col(c['issueid']).alias('issue_id'),
    pl.col(c['status']).alias('status'),
    pl.coalesce({forms}).alias('status_datetime'),
    pl.col(c['reason']).alias('reason'),
    pl.col(c['workorderid']).alias('work_order_id'),
    pl.col(c['eventdate']).str.to_date('%Y-%m-%d', strict=False).alias('event_date'),
){tail}.collect()
df.write_parquet({out!r}, compression='zstd', partition_by='event_date')
"""
    secs, rss, _ = timed([sys.executable, "-c", script])
    return secs, rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--formats", default="csv,json,parquet")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--shapes", default="simulator,uniform,wide,messy")
    ap.add_argument("--large-formats", default=None,
                    help="formats the largest size runs (default: all of --formats)")
    ap.add_argument("--steady", default="100000,1000000,10000000", help="lake sizes, or none")
    ap.add_argument("--one-partition", default="2000000",
                    help="rows of a steady-state lake held in one partition, or none")
    ap.add_argument("--delta-formats", default="csv",
                    help="input formats also imported with lake.format = delta (dpss-delta), or none")
    ap.add_argument("--out", default="docs/performance.md")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite --out from the raw runs it already holds, running nothing")
    a = ap.parse_args()
    if a.report_only:
        text = open(a.out).read()
        raw = text[text.index("Raw runs:"):]
        made = re.search(r"^Command: `scripts/bench.sh ([^`]*)`", text, re.M)
        report(json.loads(raw[raw.index("```") + 3:raw.rindex("```")]), a.out,
               made.group(1) if made else "(not recorded)")
        return
    sizes = [int(s) for s in a.sizes.split(",")]
    formats = a.formats.split(",")
    shapes = [] if a.shapes == "none" else a.shapes.split(",")
    work = tempfile.mkdtemp(prefix="dpss-bench-")
    results = []
    try:
        for rows in sizes:
            for shape in shapes:
                sim = Sim(rows) if shape == "simulator" else None
                try:
                    large = a.large_formats.split(",") if a.large_formats and rows == max(sizes) else formats
                    for fmt in [f for f in formats if f in large]:
                        parts_dir = os.path.join(work, f"{shape}-{fmt}-{rows}")
                        os.makedirs(parts_dir)
                        expect = None
                        if sim:
                            z = os.path.join(work, f"{fmt}-{rows}.zip")
                            sim.export(fmt, z)
                            with zipfile.ZipFile(z) as zf:
                                zf.extractall(parts_dir)
                            os.remove(z)
                        else:
                            made = subprocess.run([sys.executable, "scripts/exportgen.py", shape, str(rows), fmt,
                                                   os.path.join(parts_dir, f"part-00000.{fmt}")], check=True,
                                                  capture_output=True, text=True)
                            expect = json.loads(made.stdout)["valid_distinct"]
                        files = sorted(glob.glob(parts_dir + f"/part-*.{fmt}"))
                        delta = a.delta_formats != "none" and fmt in a.delta_formats.split(",")
                        results += compare(files, fmt, rows, shape, a.runs, work, expect, delta)
                        if sim and fmt == "csv" and rows == max(sizes):
                            mb = sum(os.path.getsize(f) for f in files) / 1e6
                            results.append(sync_run(sim, rows, work, mb))
                        shutil.rmtree(parts_dir, ignore_errors=True)
                finally:
                    if sim:
                        sim.stop()
        lakes = [] if a.steady == "none" else [(int(n), False) for n in a.steady.split(",")]
        if a.one_partition != "none":
            lakes.append((int(a.one_partition), True))
        if lakes:
            results += steady_state(lakes, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(results, a.out, " ".join(sys.argv[1:]))


def cycle_files(lake_csv, out_dir):
    """The rows of the lake export's three latest status days, as served again unchanged and
    with 1% of their reasons edited."""
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    names = ["ServicePointId", "Phase", "IssueId", "Status", "StatusDatetime", "Reason", "EventDate", "WorkOrderId"]
    import pyarrow as pa
    t = pacsv.read_csv(lake_csv, convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names}))
    day = pc.utf8_slice_codeunits(t["StatusDatetime"], 0, 10)
    latest = sorted(set(day.to_pylist()))[-3:]
    same = t.filter(pc.is_in(day, pa.array(latest)))
    edited = same.column("Reason").to_pylist()
    for i in range(0, len(edited), 100):
        edited[i] = edited[i] + " (edited)"
    changed = same.set_column(names.index("Reason"), "Reason", pa.array(edited, pa.string()))
    paths = {}
    for label, table in [("unchanged", same), ("1% edited", changed)]:
        paths[label] = os.path.join(out_dir, f"cycle-{label.split()[0].replace('%', '')}.csv")
        pacsv.write_csv(table, paths[label])
    return paths, same.num_rows


def steady_state(lakes, work):
    """The same cycle into lakes of each (rows, all in one partition): what it rewrites, requests,
    takes and holds in memory."""
    results = []
    for rows, one in lakes:
        d = os.path.join(work, f"steady-{rows}-{one}")
        os.makedirs(d)
        lake_csv = os.path.join(d, "lake.csv")
        spread = ["--days", "30", "--one-partition"] if one else []
        subprocess.run([sys.executable, "scripts/exportgen.py", "uniform", str(rows), "csv", lake_csv, *spread],
                       check=True, stdout=subprocess.DEVNULL)
        cfg = os.path.join(d, "dpss.toml")
        with open(cfg, "w") as f:
            f.write(f'[lake]\nurl = "file://{d}/lake"\n[state]\nurl = "sqlite://{d}/state/state.db"\n'
                    "[products.hid_work_orders]\n")
        timed([BIN, "--config", cfg, "import", "--product", "hid_work_orders", lake_csv],
              env=dict(os.environ, RUST_LOG="warn"))
        cycles, delivered = cycle_files(lake_csv, d)
        os.remove(lake_csv)
        for label, path in cycles.items():
            secs, rss, _, log = timed([BIN, "--config", cfg, "import", "--product", "hid_work_orders", path],
                                      env=dict(os.environ, RUST_LOG="info", NO_COLOR="1"), log=True)
            line = next(l for l in log.splitlines() if "lake write cost" in l)
            cost = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
            r = {"tool": "steady", "lake_rows": rows, "one_partition": one, "cycle": label, "secs": secs,
                 "rss": rss, **cost}
            results.append(r)
            print(f"steady lake {rows:>11,}{' (one partition)' if one else ''} {label:10}: {secs:5.2f} s, "
                  f"{rss:.0f} MiB, {cost['partitions_rewritten']} partitions "
                  f"rewritten, {cost['partitions_unchanged']} unchanged, {cost['rows_rewritten']:,} rows rewritten "
                  f"for {cost['delivered']:,} delivered; lists {cost['lists']} gets {cost['gets']} puts {cost['puts']}",
                  flush=True)
        shutil.rmtree(d, ignore_errors=True)
    return results


def compare(files, fmt, rows, shape, runs, work, expect=None, delta=False):
    """Every tool on the same files, alternating, `runs` times. With `expect` (the generator's
    count of valid distinct rows), a dpss-sync run that wrote any other number stops the
    benchmark: a fast wrong import is no result. With `delta`, dpss-sync also imports into a
    Delta table (dpss-delta)."""
    mb = sum(os.path.getsize(f) for f in files) / 1e6
    tools = ["dpss-sync"] + (["dpss-delta"] if delta else []) + ["duckdb"] + (["polars"] if fmt == "csv" else [])
    results = []
    for run in range(runs):
        for tool in tools:
            out = os.path.join(work, f"out-{tool}-{shape}-{fmt}-{rows}-{run}")
            if tool in ("dpss-sync", "dpss-delta"):
                secs, rss, written = run_dpss(files, out, "delta" if tool == "dpss-delta" else "parquet")
                if expect is not None and written != expect:
                    raise SystemExit(f"{shape} {fmt} {rows:,}: dpss-sync wrote {written:,} rows, "
                                     f"the generator made {expect:,} valid distinct rows")
            elif tool == "duckdb":
                secs, rss = run_duckdb(files, out, fmt, shape)
            else:
                secs, rss = run_polars(files, out, shape)
            results.append({"rows": rows, "shape": shape, "format": fmt, "tool": tool, "run": run, "secs": secs,
                            "rss": rss, "mb": mb, "out_mb": size_of(out) / 1e6})
            print(f"{shape:9} {fmt:8} {rows:>11,} {tool:10} run {run}: {secs:6.2f} s  {rows / secs:>10,.0f} rows/s  "
                  f"{mb / secs:6.1f} MB/s  RSS {rss:6.0f} MiB  out {size_of(out) / 1e6:6.1f} MB", flush=True)
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(out + "-state", ignore_errors=True)
    return results


def sync_run(sim, rows, work, mb):
    out = os.path.join(work, "sync")
    cfg = out + ".toml"
    with open(cfg, "w") as f:
        f.write(f"""[api]
base_url = "{sim.base}"
subscriber_id = "{HDR_SUB}"
poll_interval = "100ms"
poll_max = "500ms"
[auth]
token_url = "{sim.base}/connect/token"
client_id = "dpss-sim-client"
client_secret = "dpss-sim-secret"
[lake]
url = "file://{out}/lake"
[state]
url = "sqlite://{out}/state/state.db"
[products.hid_work_orders]
subscription_id = "{SUB}"
file_type = "csv"
""")
    secs, rss, _, log = timed([BIN, "--config", cfg, "sync"], env=dict(os.environ, RUST_LOG="info"), log=True)
    # The simulator builds the export while sync polls: that is the vendor's time, not ours.
    vendor = float(re.search(r"vendor job finished.*?seconds=([0-9.]+)", log).group(1))
    own = secs - vendor
    print(f"csv      {rows:>9,} sync       run 0: {secs:6.2f} s total, of which the vendor's export job {vendor:.2f} s; "
          f"sync's own {own:.2f} s = {rows / own:,.0f} rows/s  RSS {rss:6.0f} MiB", flush=True)
    r = {"rows": rows, "shape": "simulator", "format": "csv", "tool": "sync", "run": 0, "secs": own, "total_secs": secs,
         "vendor_job_secs": vendor, "rss": rss, "mb": mb, "out_mb": size_of(out + "/lake") / 1e6}
    shutil.rmtree(out, ignore_errors=True)
    return r


KEPT = "## Why the engine is shaped as it is"


def kept_section(path):
    """The hand-kept section of the document: the A/B figures behind the code's choices, which a
    benchmark rerun does not measure and so must not erase."""
    try:
        text = open(path).read()
    except FileNotFoundError:
        return []
    if KEPT not in text:
        return []
    section = text[text.index(KEPT):]
    end = section.find("\nRaw runs:")
    return (section[:end] if end >= 0 else section).rstrip("\n").split("\n") + [""]


def report(results, path, command):
    def best(rows, fmt, tool, shape):
        xs = [r for r in results if r.get("rows") == rows and r.get("format") == fmt and r["tool"] == tool
              and r.get("shape", "simulator") == shape]
        return min(xs, key=lambda r: r["secs"]) if xs else None

    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True,
                         text=True).stdout.strip()
    shapes = [s for s in ["simulator", "uniform", "wide", "messy"] if any(r.get("shape") == s for r in results)]
    lines = ["# Performance", "",
             f"Generated by `scripts/bench.sh` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
             f"{os.cpu_count()} cores ({cpu}), {round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB, "
             f"{platform.system()} {platform.release()}. Best of the runs per tool; runs alternate between tools.", "",
             f"Command: `scripts/bench.sh {command}`. `dpss-delta` is the `dpss-sync` import into "
             "`lake.format = \"delta\"`.", "",
             "Shapes: `simulator` is the built-in simulator's exports; `uniform`, `wide` and `messy` come from",
             "`scripts/exportgen.py`, written without this project's code (uniform ISO timestamps and short",
             "reasons; long quoted free text and 32-hex-digit ids; four timestamp forms with 5% duplicates",
             "and 1% bad rows). DuckDB and polars get the simplest query correct for each shape; for",
             "`simulator` they read every timestamp form but keep its duplicates and bad rows, which spares",
             "them work dpss-sync does.", "",
             "| shape | format | rows | tool | wall s | rows/s | input MB/s | peak RSS MiB | output MB | vs DuckDB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for shape in shapes:
        for rows in sorted({r["rows"] for r in results if "rows" in r}):
            for fmt in ["csv", "json", "parquet"]:
                duck = best(rows, fmt, "duckdb", shape)
                for tool in ["dpss-sync", "dpss-delta", "duckdb", "polars", "sync"]:
                    r = best(rows, fmt, tool, shape)
                    if not r:
                        continue
                    ratio = f"{duck['secs'] / r['secs']:.2f}x" if duck else "-"
                    lines.append(f"| {shape} | {fmt} | {rows:,} | {tool} | {r['secs']:.2f} | {rows / r['secs']:,.0f} | "
                                 f"{r['mb'] / r['secs']:.1f} | {r['rss']:.0f} | {r['out_mb']:.1f} | {ratio} |")
    lines += ["", "## Against the targets", ""]
    sizes = sorted({r["rows"] for r in results if "rows" in r})
    small, large = (sizes[0], sizes[-1]) if sizes else (0, 0)
    goals = {"csv": 1.5, "json": 1.5, "parquet": 1.0}
    for shape in shapes:
        for fmt in ["csv", "json", "parquet"]:
            # Each format at the largest size it was run at (--large-formats may leave some out).
            large = max((r["rows"] for r in results
                         if r.get("format") == fmt and r.get("shape", "simulator") == shape), default=0)
            ours, duck = best(large, fmt, "dpss-sync", shape), best(large, fmt, "duckdb", shape)
            if not (ours and duck):
                continue
            speed = duck["secs"] / ours["secs"]
            verdict = "met" if speed >= goals[fmt] else "**not met**"
            line = (f"- {shape} {fmt} {large:,} rows: {speed:.2f}x DuckDB's throughput (target {goals[fmt]}x, "
                    f"{verdict})")
            polars = best(large, fmt, "polars", shape)
            if polars:
                ahead = polars["secs"] / ours["secs"]
                line += f"; {ahead:.2f}x polars' (target above 1, {'met' if ahead > 1 else '**not met**'})"
            line += f"; peak RSS {ours['rss']:.0f} MiB (target 300)"
            first = best(small, fmt, "dpss-sync", shape)
            if first and small != large:
                line += f", {ours['rss'] / first['rss']:.2f}x the {small:,}-row run's"
            lines.append(line + ".")
    for shape in shapes:
        for fmt in ["csv", "json", "parquet"]:
            large = max((r["rows"] for r in results if r.get("format") == fmt and r["tool"] == "dpss-delta"
                         and r.get("shape", "simulator") == shape), default=0)
            hive, delta = best(large, fmt, "dpss-sync", shape), best(large, fmt, "dpss-delta", shape)
            if not (hive and delta):
                continue
            ratio = delta["secs"] / hive["secs"]
            lines.append(f"- lake.format = delta, {shape} {fmt} {large:,} rows: {ratio:.2f}x the parquet layout's time "
                         f"(target at most 1.15, {'met' if ratio <= 1.15 else '**not met**'}); peak RSS "
                         f"{delta['rss']:.0f} MiB against {hive['rss']:.0f} (target 300).")
    large = max(sizes, default=0)
    sync, imp = best(large, "csv", "sync", "simulator"), best(large, "csv", "dpss-sync", "simulator")
    if sync and imp:
        lines.append(f"- sync of the simulator's csv {large:,}-row export: {sync['secs'] / imp['secs']:.2f}x the "
                     f"import's time (target 1.3), besides {sync['vendor_job_secs']:.1f} s of the simulator building "
                     "the export.")
    steady = [r for r in results if r.get("tool") == "steady"]
    if steady:
        lines += ["", "## Steady state", "",
                  "The same cycle into lakes of three sizes (uniform shape): the rows of the three latest status",
                  "days imported again, unchanged, then with 1% of them edited. Rewritten rows and bytes are",
                  "those of the partitions the cycle rewrote, per row it delivered; requests are to the object",
                  "store (a local directory here). The lake marked *one partition* holds all its rows in one",
                  "event_date over 30 status days, so the cycle rewrites one big partition: its peak memory is",
                  "what a rewrite holds.", "",
                  "| lake rows | cycle | rows delivered | partitions rewritten | unchanged | rows rewritten / row "
                  "delivered | bytes rewritten / row delivered | lists | gets | puts | deletes | wall s | peak RSS MiB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in steady:
            n = max(r["delivered"], 1)
            lake = f"{r['lake_rows']:,}" + (" (one partition)" if r.get("one_partition") else "")
            lines.append(f"| {lake} | {r['cycle']} | {r['delivered']:,} | {r['partitions_rewritten']} | "
                         f"{r['partitions_unchanged']} | {r['rows_rewritten'] / n:.2f} | {r['bytes_rewritten'] / n:.1f} | "
                         f"{r['lists']} | {r['gets']} | {r['puts']} | {r['deletes']} | {r['secs']:.2f} | "
                         f"{r['rss']:.0f} |")
    lines += ["", "`vs DuckDB` is DuckDB's wall time over the tool's: above 1 is faster than DuckDB.",
              "`sync` is a first sync of the same export served by `dpss-sync simulate`: its wall time less the",
              "vendor's export job (the simulator building the zip while sync polls, taken from sync's own",
              "`vendor job finished` log line), so download, unzip, import and the state's bookkeeping;",
              "`sync / import` compares it with the best `import` of the same size and format.", "",
              ""]
    lines += kept_section(path)
    lines += ["Raw runs:", "", "```", json.dumps(results, indent=1), "```", ""]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
