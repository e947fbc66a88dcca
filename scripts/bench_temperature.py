#!/usr/bin/env python3
"""The temperature statistics import benchmark (atm_temperature_stats): dpss-sync against DuckDB
and Polars on the same exports, made by scripts/exportgen.py's `temperature` shape (hourly rows,
the vendor's three timestamp forms, `--` ids, re-delivered hours, invalid rows; typed Parquet).
Each tool turns them into Hive-partitioned zstd Parquet by measurement_date with the simplest
query that is correct for the product: read the three timestamp forms, drop the invalid rows
(no time, no meter or service point, a temperature that is not a finite number), keep one row per
(meter_id, measurement_time), the one received last. A dpss-sync run must write exactly the
generator's count of valid distinct rows, or the benchmark stops. Prints wall seconds, rows/s and
peak RSS per format and tool, alternating the tools, and writes docs/performance-temperature.md.

Usage: scripts/bench-temperature.sh [--rows 10000000] [--formats csv,parquet] [--runs 2]
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from bench import BIN, size_of, timed  # noqa: E402

PRODUCT = "atm_temperature_stats"
# The vendor's three forms: `…:34:000Z`, `….000Z`, `…Z`.
DUCK_FORMS = ["%Y-%m-%dT%H:%M:%S:%gZ", "%Y-%m-%dT%H:%M:%S.%gZ", "%Y-%m-%dT%H:%M:%SZ"]
POLARS_FORMS = ["%Y-%m-%dT%H:%M:%S:%3fZ", "%Y-%m-%dT%H:%M:%S%.3fZ", "%Y-%m-%dT%H:%M:%SZ"]
TEXT = ["ServicePointID", "MeterID", "MeterNumber", "ElectronicSerialNumber", "TransformerId",
        "PremiseId", "FeederId"]


def run_dpss(files, out):
    cfg = out + ".toml"
    with open(cfg, "w") as f:
        f.write(f'[lake]\nurl = "file://{out}"\n[state]\nurl = "sqlite://{out}-state/state.db"\n'
                f'[products.{PRODUCT}]\n')
    secs, rss, stdout = timed([BIN, "--config", cfg, "import", "--product", PRODUCT, *files],
                              env=dict(os.environ, RUST_LOG="warn"))
    written = int(stdout.split("written ")[1].split(",")[0])
    return secs, rss, written


def run_duckdb(files, out, fmt):
    if fmt == "csv":
        src = f"read_csv({files!r}, all_varchar = true, header = true)"
        ts = lambda c: "COALESCE(" + ", ".join(f"try_strptime({c}, '{f}')" for f in DUCK_FORMS) + ")"
        num = lambda c: f"TRY_CAST({c} AS DOUBLE)"
    else:
        src = f"read_parquet({files!r})"
        ts = lambda c: f"{c}::TIMESTAMP"
        num = lambda c: c
    text = ", ".join(f"NULLIF({c}, '') AS {snake(c)}" for c in TEXT)
    sql = f"""
SET TimeZone = 'UTC';
COPY (
  SELECT *, CAST(measurement_time AS DATE) AS measurement_date FROM (
    SELECT {ts('ReceivedTime')} AS received_time, {text},
      {ts('MeasurementTime')} AS measurement_time, {num('AvgTemp')} AS avg_temp,
      {num('MaxTemp')} AS max_temp
    FROM {src})
  WHERE received_time IS NOT NULL AND measurement_time IS NOT NULL AND meter_id IS NOT NULL
    AND service_point_id IS NOT NULL AND isfinite(avg_temp) AND isfinite(max_temp)
  QUALIFY row_number() OVER (PARTITION BY meter_id, measurement_time ORDER BY received_time DESC) = 1
) TO '{out}' (FORMAT parquet, PARTITION_BY (measurement_date), COMPRESSION zstd)
""".replace("NULLIF(TransformerId, '')", "NULLIF(NULLIF(TransformerId, '--'), '')")
    secs, rss, _ = timed([sys.executable, "-c", f"import duckdb; duckdb.connect().execute({sql!r})"])
    return secs, rss


def snake(name):
    return {"ServicePointID": "service_point_id", "MeterID": "meter_id", "MeterNumber": "meter_number",
            "ElectronicSerialNumber": "electronic_serial_number", "TransformerId": "transformer_id",
            "PremiseId": "premise_id", "FeederId": "feeder_id"}[name]


def run_polars(files, out, fmt):
    if fmt == "csv":
        scan = f"pl.scan_csv({files!r}, infer_schema=False)"
        ts = lambda c: ("pl.coalesce(" + ", ".join(
            f"pl.col({c!r}).str.to_datetime({f!r}, strict=False, time_zone='UTC')" for f in POLARS_FORMS)
            + f").alias({snake_any(c)!r})")
        num = lambda c: f"pl.col({c!r}).cast(pl.Float64, strict=False).alias({snake_any(c)!r})"
    else:
        scan = f"pl.scan_parquet({files!r})"
        ts = lambda c: f"pl.col({c!r}).alias({snake_any(c)!r})"
        num = lambda c: f"pl.col({c!r}).alias({snake_any(c)!r})"
    texts = ", ".join(
        f"pl.col({c!r}).replace('--', None).replace('', None).alias({snake(c)!r})" if c == "TransformerId"
        else f"pl.col({c!r}).replace('', None).alias({snake(c)!r})" for c in TEXT)
    script = f"""
import polars as pl
df = {scan}.select({ts('ReceivedTime')}, {texts}, {ts('MeasurementTime')}, {num('AvgTemp')},
    {num('MaxTemp')}).filter(
    pl.col('received_time').is_not_null() & pl.col('measurement_time').is_not_null()
    & pl.col('meter_id').is_not_null() & pl.col('service_point_id').is_not_null()
    & pl.col('avg_temp').is_finite() & pl.col('max_temp').is_finite()
).sort('received_time').unique(subset=['meter_id', 'measurement_time'], keep='last',
    maintain_order=False).with_columns(pl.col('measurement_time').dt.date().alias('measurement_date')).collect()
df.write_parquet({out!r}, compression='zstd', partition_by='measurement_date')
"""
    secs, rss, _ = timed([sys.executable, "-c", script])
    return secs, rss


def snake_any(name):
    return {"ReceivedTime": "received_time", "MeasurementTime": "measurement_time", "AvgTemp": "avg_temp",
            "MaxTemp": "max_temp"}[name]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--formats", default="csv,parquet")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--out", default="docs/performance-temperature.md")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="dpss-bench-temperature-")
    results = []
    try:
        for fmt in a.formats.split(","):
            part = os.path.join(work, f"part-00000.{fmt}")
            made = json.loads(subprocess.run(
                [sys.executable, "scripts/exportgen.py", "temperature", str(a.rows), fmt, part],
                check=True, capture_output=True, text=True).stdout)
            mb = made["bytes"] / 1e6
            for run in range(a.runs):
                for tool in ["dpss-sync", "duckdb", "polars"]:
                    out = os.path.join(work, f"out-{tool}-{fmt}-{run}")
                    if tool == "dpss-sync":
                        secs, rss, written = run_dpss([part], out)
                        if written != made["valid_distinct"]:
                            raise SystemExit(f"{fmt}: dpss-sync wrote {written:,} rows, the generator "
                                             f"made {made['valid_distinct']:,} valid distinct hours")
                    elif tool == "duckdb":
                        secs, rss = run_duckdb([part], out, fmt)
                    else:
                        secs, rss = run_polars([part], out, fmt)
                    r = {"format": fmt, "tool": tool, "run": run, "rows": made["rows"], "secs": secs,
                         "rss": rss, "mb": mb, "out_mb": size_of(out) / 1e6}
                    results.append(r)
                    print(f"{fmt:8} {tool:10} run {run}: {secs:6.2f} s  {made['rows'] / secs:>10,.0f} rows/s  "
                          f"RSS {rss:6.0f} MiB  out {r['out_mb']:6.1f} MB", flush=True)
                    shutil.rmtree(out, ignore_errors=True)
                    shutil.rmtree(out + "-state", ignore_errors=True)
            os.remove(part)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(results, a)


def report(results, a):
    lines = ["# Import performance: Advanced Temperature Statistics", "",
             f"Made by `scripts/bench-temperature.sh {' '.join(sys.argv[1:])}` on {platform.machine()}, "
             f"{os.cpu_count()} cores; exports from `scripts/exportgen.py temperature` (not the simulator). "
             "Best of the runs per tool; every tool writes Hive-partitioned zstd Parquet by "
             "measurement_date with the same rows (dpss-sync's count is checked against the generator's).",
             "", "| input | rows | MB | tool | seconds | rows/s | peak RSS MiB | output MB |",
             "|---|---|---|---|---|---|---|---|"]
    for fmt in a.formats.split(","):
        for tool in ["dpss-sync", "duckdb", "polars"]:
            runs = [r for r in results if r["format"] == fmt and r["tool"] == tool]
            if not runs:
                continue
            best = min(runs, key=lambda r: r["secs"])
            lines.append(f"| {fmt} | {best['rows']:,} | {best['mb']:.0f} | {tool} | {best['secs']:.2f} | "
                         f"{best['rows'] / best['secs']:,.0f} | {max(r['rss'] for r in runs):.0f} | "
                         f"{best['out_mb']:.1f} |")
    lines += ["", "Raw runs:", "", "```", json.dumps(results, indent=1), "```", ""]
    with open(a.out, "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
