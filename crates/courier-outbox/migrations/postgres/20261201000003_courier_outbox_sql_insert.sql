-- A plain SQL INSERT from any language enqueues (table contract version 1, see the README's
-- "Enqueueing from any language"): the ordering hash and the bookkeeping columns are filled in by
-- the database when the INSERT leaves them out.

-- The ordering hash of `courier_outbox::shard_of`: FNV-1a 32-bit over the UTF-8 bytes of the
-- aggregate id, top bit cleared. Stored in every row and mapped to relay partitions, so it must
-- never change. bigint arithmetic modulo 2^32 stands in for u32 wrapping (h < 2^32 and the prime
-- < 2^25, so the product fits).
CREATE FUNCTION courier_outbox_shard(aggregate_id text) RETURNS bigint
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    bytes bytea := convert_to(aggregate_id, 'UTF8');
    h bigint := 2166136261;
BEGIN
    FOR i IN 0 .. length(bytes) - 1 LOOP
        h := ((h # get_byte(bytes, i)) * 16777619) % 4294967296;
    END LOOP;
    RETURN h & 2147483647;
END $$;

CREATE FUNCTION courier_outbox_fill_shard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.shard := courier_outbox_shard(NEW.aggregate_id);
    RETURN NEW;
END $$;

-- Courier's own enqueue supplies shard: the WHEN clause keeps the function from even being
-- called then. NOT NULL is checked after BEFORE triggers, so a NULL or omitted shard is filled.
CREATE TRIGGER courier_outbox_fill_shard BEFORE INSERT ON courier_outbox
    FOR EACH ROW WHEN (NEW.shard IS NULL) EXECUTE FUNCTION courier_outbox_fill_shard();

-- Defaults for the columns a foreign writer need not set (Courier's enqueue sets them all).
ALTER TABLE courier_outbox
    ALTER COLUMN event_version SET DEFAULT 1,
    ALTER COLUMN headers SET DEFAULT '{}',
    ALTER COLUMN occurred_at_us SET DEFAULT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
    ALTER COLUMN created_at_us SET DEFAULT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
