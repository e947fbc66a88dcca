-- Each partition's content hash per status day (as migrations/sqlite/0004).
ALTER TABLE partitions ADD COLUMN day_hashes TEXT;
