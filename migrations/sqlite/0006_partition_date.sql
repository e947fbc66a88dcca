-- A partition is any product's (the HID event day, the temperature product's measurement day):
-- the ledger's column is named for what it holds, not for one product's column.
ALTER TABLE partitions RENAME COLUMN event_date TO partition_date;
ALTER TABLE rewrites RENAME COLUMN event_date TO partition_date;
