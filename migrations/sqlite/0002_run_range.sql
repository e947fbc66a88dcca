-- The day range a run was asked for, so a re-run of an interrupted backfill resumes it instead
-- of requesting the windows it already committed again.
ALTER TABLE runs ADD COLUMN day_from TEXT;
ALTER TABLE runs ADD COLUMN day_to TEXT;
