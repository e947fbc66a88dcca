-- Commit safety: windows that keep failing back off, the shrink guard knows each partition's rows
-- per status day, and multi-object partition rewrites can be repaired after a crash.

-- Consecutive failed runs of a window and when it may be tried again; reset when it commits.
ALTER TABLE windows ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE windows ADD COLUMN next_attempt_at TEXT;

-- Rows per status day of a partition, JSON {"YYYY-MM-DD": rows}; NULL for partitions written
-- before it was kept (the shrink guard then knows only that the day has rows).
ALTER TABLE partitions ADD COLUMN day_rows TEXT;

-- A partition rewrite under way, with the objects the partition had before it. Until the window
-- commits, any other object under the partition is the rewrite's and is deleted by the repair.
CREATE TABLE rewrites (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,   -- also the generation in new object names
    product     TEXT NOT NULL,
    event_date  TEXT NOT NULL,
    before      TEXT NOT NULL,                       -- JSON array of object paths
    started_at  TEXT NOT NULL,
    UNIQUE (product, event_date)
);

-- Objects a committed rewrite replaced, deleted after the commit (or by the next repair).
CREATE TABLE doomed_objects (
    path        TEXT PRIMARY KEY,
    product     TEXT NOT NULL,
    decided_at  TEXT NOT NULL
);
