-- Each partition's content hash per status day, JSON {"YYYY-MM-DD": hash}: a window that serves
-- a day again unchanged leaves the partitions holding it as they are. NULL for partitions written
-- before it was kept (they are rewritten once, as before).
ALTER TABLE partitions ADD COLUMN day_hashes TEXT;
