-- Courier outbox (PostgreSQL). Times are integers: *_us microseconds since the Unix epoch written
-- by the application, lease times milliseconds from the database clock.
CREATE TABLE courier_outbox (
    id                 BIGSERIAL PRIMARY KEY,
    event_id           TEXT NOT NULL UNIQUE,
    topic              TEXT NOT NULL,
    aggregate_type     TEXT NOT NULL,
    aggregate_id       TEXT NOT NULL,
    shard              BIGINT NOT NULL,
    event_type         TEXT NOT NULL,
    event_version      BIGINT NOT NULL,
    payload            BYTEA NOT NULL,
    headers            TEXT NOT NULL,
    traceparent        TEXT,
    tracestate         TEXT,
    correlation_id     TEXT,
    tenant             TEXT,
    occurred_at_us     BIGINT NOT NULL,
    created_at_us      BIGINT NOT NULL,
    status             TEXT NOT NULL DEFAULT 'pending',
    attempts           BIGINT NOT NULL DEFAULT 0,
    next_attempt_at_us BIGINT,
    last_error         TEXT,
    idempotency_key    TEXT UNIQUE,
    published_at_us    BIGINT
);

-- The relay's claim scans pending rows in id (enqueue) order; shard is included so the scan
-- needs no table access.
CREATE INDEX courier_outbox_pending ON courier_outbox (id) INCLUDE (shard) WHERE status = 'pending';
-- Rows that block their aggregate: dead, or pending with a retry scheduled.
CREATE INDEX courier_outbox_blocked ON courier_outbox (id)
    WHERE status = 'dead' OR (status = 'pending' AND attempts > 0);

-- Partitions of the aggregate space (shard % partition count), each leased by one relay.
CREATE TABLE courier_outbox_leases (
    partition_no  BIGINT PRIMARY KEY,
    owner         TEXT,
    lease_until_ms BIGINT NOT NULL DEFAULT 0,
    version       BIGINT NOT NULL DEFAULT 0
);

-- Live relay instances, so each can take its fair share of partitions.
CREATE TABLE courier_outbox_relays (
    member        TEXT PRIMARY KEY,
    expires_at_ms BIGINT NOT NULL
);

-- Wakes relays within milliseconds of a commit (delivered at commit, once per transaction).
CREATE FUNCTION courier_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('courier_outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER courier_outbox_notify AFTER INSERT ON courier_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION courier_outbox_notify();
