-- No planner statistics for the status column: the relay's scans read the partial index of
-- pending rows, and statistics taken while the outbox held mostly pending rows (a backlog parked
-- behind a dead event, or a table whose published rows were purged) made the primary key look as
-- good, so a scan walked every row published since its cursor and filtered them out. Without
-- statistics PostgreSQL assumes a status value is rare, which is true of pending rows in a
-- running outbox; the published rows the statistics would describe are read by id ranges only.
-- A catalog change: instant, no table scan.
ALTER TABLE courier_outbox ALTER COLUMN status SET STATISTICS 0;

-- ANALYZE leaves the column's existing statistics in place. Clearing them takes a superuser (or
-- PostgreSQL 18's pg_clear_attribute_stats); a migration run by another role leaves them to the
-- operator, see the README.
DO $$
BEGIN
    DELETE FROM pg_statistic
    WHERE starelid = 'courier_outbox'::regclass
      AND staattnum = (SELECT attnum FROM pg_attribute
                       WHERE attrelid = 'courier_outbox'::regclass AND attname = 'status');
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'courier: the planner statistics of courier_outbox.status stay until a superuser clears them';
END
$$;
