-- dpss-sync state: watermarks, the window ledger, vendor jobs, lake partitions, runs.
-- Days are 'YYYY-MM-DD' (UTC); instants are RFC 3339 UTC text. No secret and no download URL
-- (its query string is a bearer credential) is ever stored here.

CREATE TABLE watermarks (
    product     TEXT PRIMARY KEY,
    last_day    TEXT NOT NULL,          -- the last closed day whose data is committed
    updated_at  TEXT NOT NULL
);

-- One row per window; a re-sync of the same window reuses it and counts attempts.
CREATE TABLE windows (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    product          TEXT NOT NULL,
    window_key       TEXT NOT NULL,      -- 'YYYY-MM-DD' for a day, 'history' for the unfiltered load
    kind             TEXT NOT NULL CHECK (kind IN ('day', 'history')),
    day_from         TEXT NOT NULL,
    day_to           TEXT NOT NULL,
    stage            TEXT NOT NULL CHECK (stage IN ('planned', 'submitted', 'downloaded', 'written', 'committed', 'failed')),
    job_id           TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    rows_read        INTEGER,
    rows_written     INTEGER,
    rows_quarantined INTEGER,
    rows_duplicate   INTEGER,
    error            TEXT,
    run_id           INTEGER,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    committed_at     TEXT,
    UNIQUE (product, window_key)
);
CREATE INDEX windows_stage ON windows (product, stage);

-- Every vendor job ever submitted; a job id recorded here is never submitted again.
CREATE TABLE jobs (
    job_id       TEXT PRIMARY KEY,
    product      TEXT NOT NULL,
    window_key   TEXT NOT NULL,
    file_type    TEXT NOT NULL,
    tokens       TEXT NOT NULL,          -- JSON object sent as `tokens`
    status       TEXT NOT NULL,          -- the vendor's last status string
    polls        INTEGER NOT NULL DEFAULT 0,
    created_at   TEXT NOT NULL,
    deadline     TEXT NOT NULL,
    finished_at  TEXT,
    error        TEXT
);

-- What each lake partition holds. `status_days` is kept a superset of the truth: days are added
-- before an object is written and trimmed after, so a crash can only cause an extra rewrite.
CREATE TABLE partitions (
    product      TEXT NOT NULL,
    event_date   TEXT NOT NULL,
    status_days  TEXT NOT NULL,          -- comma-separated 'YYYY-MM-DD'
    objects      TEXT NOT NULL,          -- JSON array of object paths
    rows         INTEGER NOT NULL,
    bytes        INTEGER NOT NULL,
    job_id       TEXT,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (product, event_date)
);

CREATE TABLE runs (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    command            TEXT NOT NULL,
    product            TEXT,
    started_at         TEXT NOT NULL,
    finished_at        TEXT,
    outcome            TEXT,             -- ok | failed
    windows_committed  INTEGER NOT NULL DEFAULT 0,
    windows_failed     INTEGER NOT NULL DEFAULT 0,
    rows_read          INTEGER NOT NULL DEFAULT 0,
    rows_written       INTEGER NOT NULL DEFAULT 0,
    rows_quarantined   INTEGER NOT NULL DEFAULT 0,
    rows_duplicate     INTEGER NOT NULL DEFAULT 0,
    error              TEXT
);
