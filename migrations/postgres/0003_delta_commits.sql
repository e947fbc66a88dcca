-- Delta commits begun and not yet recorded (as migrations/sqlite/0005).
CREATE TABLE pending_commits (
    product      TEXT NOT NULL,
    txn          BIGINT NOT NULL,
    commit_id    TEXT NOT NULL,
    window_id    BIGINT,
    base_version BIGINT NOT NULL,
    detail       TEXT NOT NULL,
    started_at   TEXT NOT NULL,
    PRIMARY KEY (product, txn)
);
ALTER TABLE windows ADD COLUMN table_version BIGINT;
-- The token in the names of the objects a Delta write puts (NULL in the parquet layout): a
-- repair removes only the uncommitted objects of its own crashed write, never another writer's.
ALTER TABLE rewrites ADD COLUMN token TEXT;
