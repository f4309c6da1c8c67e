-- Idempotent consumers (`courier_outbox::Inbox`): one row per event a consumer processed,
-- inserted in the transaction of the handler's effect. The primary key decides: a redelivery,
-- or a copy handled at the same moment, finds the row (or waits for the transaction holding it)
-- and is skipped. processed_at_us is microseconds since the Unix epoch, written by the
-- application; the retention purge deletes by it. Identifiers compare byte-wise, as on
-- PostgreSQL and SQLite: consumers `Billing` and `billing` are two consumers.
CREATE TABLE courier_inbox (
    consumer        VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    event_id        VARCHAR(36) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    processed_at_us BIGINT NOT NULL,
    PRIMARY KEY (consumer, event_id),
    KEY courier_inbox_processed_at (processed_at_us)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
