-- No planner statistics for the status column: the relay's scans read the partial index of
-- pending rows, and statistics taken while the outbox held mostly pending rows (a backlog parked
-- behind a dead event, or a table whose published rows were purged) made the primary key look as
-- good, so a scan walked every row published since its cursor and filtered them out. Without
-- statistics PostgreSQL assumes a status value is rare, which is true of pending rows in a
-- running outbox; the published rows the statistics would describe are read by id ranges only.
-- A catalog change: instant, no table scan.
ALTER TABLE courier_outbox ALTER COLUMN status SET STATISTICS 0;
