-- Delta commits begun and not yet recorded (lake.format = "delta"). A row is written before the
-- window's log commit and deleted by the state commit that follows it; a row left by a crash is
-- resolved on the next open by looking for its commit_id in the table's log. detail holds what
-- the state commit records (the partitions' new contents and the window's counts), as JSON.
CREATE TABLE pending_commits (
    product      TEXT NOT NULL,
    txn          INTEGER NOT NULL,
    commit_id    TEXT NOT NULL,
    window_id    INTEGER,
    base_version INTEGER NOT NULL,
    detail       TEXT NOT NULL,
    started_at   TEXT NOT NULL,
    PRIMARY KEY (product, txn)
);
-- The Delta table version a window's commit landed at (NULL in the parquet layout).
ALTER TABLE windows ADD COLUMN table_version INTEGER;
-- The token in the names of the objects a Delta write puts (NULL in the parquet layout): a
-- repair removes only the uncommitted objects of its own crashed write, never another writer's.
ALTER TABLE rewrites ADD COLUMN token TEXT;
