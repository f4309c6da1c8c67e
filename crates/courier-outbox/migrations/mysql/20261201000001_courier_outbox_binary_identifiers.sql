-- Identifiers compare byte-wise, as on PostgreSQL and SQLite and as the relay compares them in
-- memory: under the server's default case-insensitive collation `Order-1` and `order-1` were one
-- aggregate to the previous-pending lookup (so one's parked events held up the other's), and
-- the operators' filters by topic or aggregate matched both. utf8mb4_bin (MySQL 8 and MariaDB)
-- still ignores trailing spaces, which aggregate ids and topics cannot contain. Each MODIFY
-- repeats the column's type and NULL-ness; the indexes on the columns stay and are rebuilt.
-- (idempotency_key has had a binary collation from the start.)
ALTER TABLE courier_outbox
    MODIFY event_id       VARCHAR(36)  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    MODIFY topic          VARCHAR(249) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    MODIFY aggregate_type VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    MODIFY aggregate_id   VARCHAR(256) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    MODIFY event_type     VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;

-- Relay instance ids: `Relay-A` must not renew or release the leases of `relay-a`.
ALTER TABLE courier_outbox_leases
    MODIFY owner VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;

ALTER TABLE courier_outbox_relays
    MODIFY member VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
