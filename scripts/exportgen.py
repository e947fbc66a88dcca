#!/usr/bin/env python3
"""Export files of the HID work-order and the temperature statistics products in several shapes,
written without any of dpss-sync's code (not the simulator's row generator, not its writers), so
the benchmark measures data this project did not make. Columns as the vendor's data table names
them; values vectorized with numpy, files written by pyarrow (CSV, Parquet) and polars (JSON lines).

Shapes (HID work orders):
  uniform  one timestamp form (ISO 8601 with Z), short reasons, moderate id cardinality, clean
  wide     long free-text reasons with commas and quotes, 32-hex-digit ids (high cardinality),
           millisecond timestamps
  messy    four timestamp forms (Z, .fffZ, the vendor's `YYYY-MM-DD:HH:MM:SS`, no zone), 5% exact
           duplicate rows and 1% bad rows (phase 7, an unreadable timestamp, an empty id)
Shape (Advanced Temperature Statistics, atm_temperature_stats):
  temperature  hourly rows of ~1,150 meters (MeasurementTime the hour's end, HH:59:59), the
           vendor's three timestamp forms (`…:34:000Z`, `….000Z`, `…Z`), `--` or empty
           transformer ids, mostly empty feeder ids, temperatures as numbers (typed doubles and
           timestamps in Parquet, as Spark writes them); 1% of hours re-delivered with a later
           ReceivedTime and a corrected AvgTemp, 0.5% invalid (NaN, an unreadable time, no meter)

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

SHAPES = ("uniform", "wide", "messy", "temperature")
METERS = 1150
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


def vendor_times(rng, secs):
    """Instants in the temperature product's three printed forms, chosen per row."""
    iso = np.datetime_as_string(secs.astype("datetime64[s]"), unit="s")
    form = rng.integers(0, 3, len(secs))
    out = np.char.add(iso, ":000Z")
    out = np.where(form == 1, np.char.add(iso, ".000Z"), out)
    return np.where(form == 2, np.char.add(iso, "Z"), out)


def generate_temperature(rows, seed, first, typed):
    """Rows `first`..`first + rows` of the hourly series: row i is meter i % METERS, hour
    i // METERS back from 2025-12-01, so identities never repeat across chunks; re-deliveries are
    appended to their own chunk. `typed`: times as timestamps and temperatures as doubles."""
    rng = np.random.default_rng(seed)
    i = np.arange(first, first + rows)
    meter = i % METERS
    base = 1_764_547_200  # 2025-12-01T00:00:00Z
    measured = base - (i // METERS) * 3600 - 1  # the hour's end, HH:59:59
    received = measured + 1800 + rng.integers(0, 5400, rows)
    late = rng.random(rows) < 0.05
    received = np.where(late, received + 86400 + rng.integers(0, 86400, rows), received)
    avg = np.round((38 + 8 * np.sin(measured / 86400 * 2 * np.pi) + meter % 7) * 2) / 2
    mx = avg + rng.integers(0, 6, rows) * 0.5
    ids = np.char.zfill(meter.astype(str), 7)
    meter_id = np.char.add("J", ids)
    transformer = np.char.add("LABTX", (meter % 9).astype(str))
    transformer = np.where(meter % 5 == 0, "--", np.where(meter % 7 == 3, "", transformer))
    cols = {
        "ServicePointID": np.char.add("MF0-", ids),
        "MeterID": meter_id,
        "MeterNumber": np.where(meter % 6 == 5, "", meter_id),
        "ElectronicSerialNumber": np.char.add("2.16.840.1.114416.34.", (357_478_112 + meter).astype(str)),
        "TransformerId": transformer,
        "PremiseId": np.char.add("T50-D", ids),
        "FeederId": np.where(meter % 4 == 1, np.char.add("FDR-", (meter % 3).astype(str)), ""),
    }
    bad = rng.random(rows) < 0.005
    kind = rng.integers(0, 3, rows)
    avg = np.where(bad & (kind == 0), np.nan, avg)
    cols["MeterID"] = np.where(bad & (kind == 2), "", cols["MeterID"])
    # 1% of the valid hours again, received six hours later, half a degree warmer.
    again = np.flatnonzero(~bad & (rng.random(rows) < 0.01))
    take = lambda v, extra: np.concatenate([v, extra])
    cols = {k: take(v, v[again]) for k, v in cols.items()}
    measured, received = take(measured, measured[again]), take(received, received[again] + 21600)
    avg, mx = take(avg, avg[again] + 0.5), take(mx, mx[again])
    broken = take(bad & (kind == 1), np.zeros(len(again), dtype=bool))
    if typed:
        stamp = lambda s: pa.array(s * 1000, pa.timestamp("ms", tz="UTC"))
        measured_col = pa.array(np.where(broken, None, measured * 1000).tolist(), pa.timestamp("ms", tz="UTC"))
        columns = {"ReceivedTime": stamp(received), **{k: pa.array(v, pa.string()) for k, v in cols.items()},
                   "MeasurementTime": measured_col, "AvgTemp": pa.array(avg), "MaxTemp": pa.array(mx)}
    else:
        mt = np.where(broken, np.char.add(np.datetime_as_string(measured.astype("datetime64[s]"), unit="D"),
                                          "T24:59:59:000Z"), vendor_times(rng, measured))
        columns = {"ReceivedTime": vendor_times(rng, received), **cols, "MeasurementTime": mt,
                   "AvgTemp": np.char.mod("%g", avg), "MaxTemp": np.char.mod("%g", mx)}
        columns = {k: pa.array(v, pa.string()) for k, v in columns.items()}
    order = ["ReceivedTime", "ServicePointID", "MeterID", "MeterNumber", "ElectronicSerialNumber",
             "TransformerId", "PremiseId", "FeederId", "MeasurementTime", "AvgTemp", "MaxTemp"]
    table = pa.table({k: columns[k] for k in order})
    return table, int(rows - bad.sum())


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
            n = min(CHUNK, a.rows - start)
            if a.shape == "temperature":
                table, distinct = generate_temperature(n, a.seed + k, start, a.format == "parquet")
            else:
                table, distinct = generate(a.shape, n, a.seed + k, a.days, a.one_partition)
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
