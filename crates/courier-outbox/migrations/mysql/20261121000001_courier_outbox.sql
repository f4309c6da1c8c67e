-- Courier outbox (MySQL 8 / MariaDB >= 10.6). Times are integers: *_us microseconds since the
-- Unix epoch written by the application, lease times milliseconds from the database clock.
CREATE TABLE courier_outbox (
    id                 BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    event_id           VARCHAR(36) NOT NULL,
    topic              VARCHAR(249) NOT NULL,
    aggregate_type     VARCHAR(255) NOT NULL,
    aggregate_id       VARCHAR(256) NOT NULL,
    shard              BIGINT NOT NULL,
    event_type         VARCHAR(255) NOT NULL,
    event_version      BIGINT NOT NULL,
    payload            LONGBLOB NOT NULL,
    headers            LONGTEXT NOT NULL,
    traceparent        VARCHAR(64),
    tracestate         VARCHAR(512),
    correlation_id     VARCHAR(255),
    tenant             VARCHAR(255),
    occurred_at_us     BIGINT NOT NULL,
    created_at_us      BIGINT NOT NULL,
    status             VARCHAR(16) NOT NULL DEFAULT 'pending',
    attempts           BIGINT NOT NULL DEFAULT 0,
    next_attempt_at_us BIGINT,
    last_error         TEXT,
    idempotency_key    VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
    published_at_us    BIGINT,
    UNIQUE KEY courier_outbox_event_id (event_id),
    UNIQUE KEY courier_outbox_idempotency_key (idempotency_key),
    -- The relay's claim scans pending rows in id (enqueue) order; shard is included so the scan
-- needs no table access.
    KEY courier_outbox_status (status, id, shard),
    -- Rows that block their aggregate: dead, or pending with a retry scheduled.
    KEY courier_outbox_blocked (status, attempts)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- Partitions of the aggregate space (shard % partition count), each leased by one relay.
CREATE TABLE courier_outbox_leases (
    partition_no   BIGINT NOT NULL PRIMARY KEY,
    owner          VARCHAR(255),
    lease_until_ms BIGINT NOT NULL DEFAULT 0,
    version        BIGINT NOT NULL DEFAULT 0
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- Live relay instances, so each can take its fair share of partitions.
CREATE TABLE courier_outbox_relays (
    member        VARCHAR(255) NOT NULL PRIMARY KEY,
    expires_at_ms BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
