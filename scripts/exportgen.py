#!/usr/bin/env python3
"""Export files of the HID work-order product in several shapes, written without any of
dpss-sync's code (not the simulator's row generator, not its writers), so the benchmark measures
data this project did not make. Columns as the vendor's data table names them; values vectorized
with numpy, files written by pyarrow (CSV, Parquet) and polars (JSON lines).

Shapes:
  uniform  one timestamp form (ISO 8601 with Z), short reasons, moderate id cardinality, clean
  wide     long free-text reasons with commas and quotes, 32-hex-digit ids (high cardinality),
           millisecond timestamps
  messy    four timestamp forms (Z, .fffZ, the vendor's `YYYY-MM-DD:HH:MM:SS`, no zone), 5% exact
           duplicate rows and 1% bad rows (phase 7, an unreadable timestamp, an empty id)

Usage: exportgen.py SHAPE ROWS FORMAT OUT_FILE [--seed N]
Written in chunks of 500,000 rows (memory stays flat; duplicates repeat rows of their own chunk).
Prints a JSON line: rows, valid distinct rows (within chunks), bytes.
"""
import argparse
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

SHAPES = ("uniform", "wide", "messy")
WORDS = np.array("high impedance detected on secondary neutral feeder meter socket crew dispatched "
                 "loose connection corrosion replaced tightened verified customer notified, \"urgent\" "
                 "service drop transformer pole underground pedestal hot socket voltage sag".split())
STATUSES = np.array(["Open", "Assigned", "InProgress", "Completed", "Cancelled"])


def reasons(rng, n, lo, hi):
    """Free text of lo..hi words: a few thousand distinct phrases, as field crews repeat themselves."""
    phrases = np.array([" ".join(rng.choice(WORDS, size=rng.integers(lo, hi + 1)))
                        for _ in range(4096)])
    return phrases[rng.integers(0, len(phrases), n)]


def hex_ids(rng, n):
    """32 hex digits, as a UUID without its dashes: every id distinct in practice."""
    hi = rng.integers(0, 2**63, n, dtype=np.int64)
    lo = rng.integers(0, 2**63, n, dtype=np.int64)
    return np.char.add(np.char.mod("%016x", hi), np.char.mod("%016x", lo))


def generate(shape, rows, seed, days=395, one_partition=False):
    rng = np.random.default_rng(seed)
    base = 1_764_547_200  # 2025-12-01T00:00:00Z
    secs = base - rng.integers(0, days * 86400, rows)
    if shape == "wide":
        ms = rng.integers(0, 1000, rows)
        stamp = np.datetime_as_string(secs.astype("datetime64[s]") + ms.astype("timedelta64[ms]"),
                                      unit="ms")
        ts = np.char.add(stamp, "Z")
    else:
        iso = np.datetime_as_string(secs.astype("datetime64[s]"), unit="s")
        ts = np.char.add(iso, "Z")
        if shape == "messy":
            form = rng.integers(0, 4, rows)
            frac = np.char.add(np.char.add(iso, "."), np.char.zfill(rng.integers(0, 1000, rows).astype(str), 3))
            ts = np.where(form == 1, np.char.add(frac, "Z"), ts)
            ts = np.where(form == 2, np.char.replace(iso, "T", ":"), ts)
            ts = np.where(form == 3, iso, ts)
    status_day = secs // 86400
    event_day = status_day - rng.integers(0, 30, rows) + (rng.random(rows) < 0.05)
    if one_partition:
        # Every row's event on the first day: one partition holding every status day.
        event_day = np.full(rows, base // 86400 - days)
    event_date = np.datetime_as_string((event_day * 86400).astype("datetime64[s]"), unit="D")
    if shape == "wide":
        sp = hex_ids(rng, rows)
        wo = hex_ids(rng, rows)
        issue = np.char.add("ISS-", rng.integers(0, 10**9, rows).astype(str))
        reason = reasons(rng, rows, 20, 60)
    else:
        sp = np.char.add("SP", np.char.zfill(rng.integers(0, 50_000, rows).astype(str), 7))
        wo = np.char.add("WO", np.char.zfill(rng.integers(0, rows, rows).astype(str), 9))
        issue = np.char.add("I", rng.integers(0, 200_000, rows).astype(str))
        reason = reasons(rng, rows, 2, 8)
    phase = rng.integers(1, 5, rows).astype(str)
    status = STATUSES[rng.integers(0, len(STATUSES), rows)]
    cols = {"ServicePointId": sp, "Phase": phase, "IssueId": issue, "Status": status,
            "StatusDatetime": ts, "Reason": reason, "EventDate": event_date, "WorkOrderId": wo}
    bad = np.zeros(rows, dtype=bool)
    if shape == "messy":
        kind = rng.integers(0, 3, rows)
        bad = rng.random(rows) < 0.01
        cols["Phase"] = np.where(bad & (kind == 0), "7", cols["Phase"])
        cols["StatusDatetime"] = np.where(bad & (kind == 1), "not a time", cols["StatusDatetime"])
        cols["WorkOrderId"] = np.where(bad & (kind == 2), "", cols["WorkOrderId"])
        # Exact copies of 5% of the rows, at random places.
        dup = rng.choice(rows, size=rows // 20, replace=False)
        order = rng.permutation(rows + len(dup))
        cols = {k: np.concatenate([v, v[dup]])[order] for k, v in cols.items()}
        bad = np.concatenate([bad, bad[dup]])[order]
    table = pa.table({k: pa.array(v, pa.string()) for k, v in cols.items()})
    key = np.char.add(np.char.add(np.char.add(cols["WorkOrderId"].astype(str), "|"), cols["IssueId"].astype(str)),
                      np.char.add(np.char.add("|", cols["Status"].astype(str)),
                                  np.char.add("|", cols["StatusDatetime"].astype(str))))
    valid_distinct = len(np.unique(key[~bad]))
    return table, valid_distinct


CHUNK = 500_000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("shape", choices=SHAPES)
    ap.add_argument("rows", type=int)
    ap.add_argument("format", choices=("csv", "json", "parquet"))
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--days", type=int, default=395, help="status days the rows spread over")
    ap.add_argument("--one-partition", action="store_true",
                    help="every row in one event_date partition (the worst case for a rewrite)")
    a = ap.parse_args()
    total = valid = 0
    writer = None
    with open(a.out, "wb") as sink:
        for k, start in enumerate(range(0, a.rows, CHUNK)):
            table, distinct = generate(a.shape, min(CHUNK, a.rows - start), a.seed + k, a.days,
                                       a.one_partition)
            total += table.num_rows
            valid += distinct
            if a.format == "csv":
                writer = writer or pacsv.CSVWriter(sink, table.schema,
                                                   write_options=pacsv.WriteOptions(quoting_style="needed"))
                writer.write_table(table)
            elif a.format == "parquet":
                writer = writer or pq.ParquetWriter(sink, table.schema, compression="snappy")
                writer.write_table(table)
            else:
                import polars as pl
                pl.from_arrow(table).write_ndjson(sink)
        if writer:
            writer.close()
    print(json.dumps({"rows": total, "valid_distinct": valid, "bytes": os.path.getsize(a.out)}))


if __name__ == "__main__":
    main()
