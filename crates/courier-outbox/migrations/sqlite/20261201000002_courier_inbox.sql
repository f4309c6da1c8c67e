-- Idempotent consumers (`courier_outbox::Inbox`): one row per event a consumer processed,
-- inserted in the transaction of the handler's effect. The primary key decides: a redelivery,
-- or a copy handled at the same moment, finds the row (or waits for the transaction holding it)
-- and is skipped. processed_at_us is microseconds since the Unix epoch, written by the
-- application; the retention purge deletes by it.
CREATE TABLE courier_inbox (
    consumer        TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    processed_at_us INTEGER NOT NULL,
    PRIMARY KEY (consumer, event_id)
);

CREATE INDEX courier_inbox_processed_at ON courier_inbox (processed_at_us);
