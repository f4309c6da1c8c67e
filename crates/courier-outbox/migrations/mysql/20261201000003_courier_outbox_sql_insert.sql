-- A plain SQL INSERT from any language enqueues (table contract version 1, see the README's
-- "Enqueueing from any language"): the ordering hash and the bookkeeping columns are filled in by
-- the database when the INSERT leaves them out.

-- The ordering hash of `courier_outbox::shard_of`: FNV-1a 32-bit over the UTF-8 bytes of the
-- aggregate id, top bit cleared. Stored in every row and mapped to relay partitions, so it must
-- never change. BIGINT UNSIGNED masked to 32 bits stands in for u32 wrapping (h < 2^32 and the
-- prime < 2^25, so the product fits). The parameter is utf8mb4 and CAST AS BINARY yields its bytes.
CREATE FUNCTION courier_outbox_shard(aggregate_id TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin)
    RETURNS BIGINT DETERMINISTIC NO SQL
BEGIN
    DECLARE bytes LONGBLOB DEFAULT CAST(aggregate_id AS BINARY);
    DECLARE h BIGINT UNSIGNED DEFAULT 2166136261;
    DECLARE i INT DEFAULT 1;
    IF aggregate_id IS NULL THEN
        RETURN NULL;
    END IF;
    WHILE i <= LENGTH(bytes) DO
        SET h = ((h ^ ASCII(SUBSTRING(bytes, i, 1))) * 16777619) & 4294967295;
        SET i = i + 1;
    END WHILE;
    RETURN h & 2147483647;
END;

-- Courier's own enqueue supplies shard and the trigger leaves it. MySQL 5.7+ and MariaDB check
-- NOT NULL after BEFORE triggers, so a NULL shard is filled.
CREATE TRIGGER courier_outbox_fill_shard BEFORE INSERT ON courier_outbox FOR EACH ROW
BEGIN
    IF NEW.shard IS NULL THEN
        SET NEW.shard = courier_outbox_shard(NEW.aggregate_id);
    END IF;
END;

-- Defaults for the columns a foreign writer need not set (Courier's enqueue sets them all).
ALTER TABLE courier_outbox
    ALTER COLUMN event_version SET DEFAULT 1,
    ALTER COLUMN headers SET DEFAULT ('{}'),
    ALTER COLUMN occurred_at_us SET DEFAULT (CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)),
    ALTER COLUMN created_at_us SET DEFAULT (CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED));
