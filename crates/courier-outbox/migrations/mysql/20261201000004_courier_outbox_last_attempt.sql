-- When the relay recorded the row's last failed publish attempt (microseconds since the Unix
-- epoch, application clock): for a dead row, when it went dead, which the dashboard shows for a
-- parked aggregate. NULL for rows that never failed, or failed before this column existed.
ALTER TABLE courier_outbox ADD COLUMN last_attempt_at_us BIGINT;
