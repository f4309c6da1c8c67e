-- NOTIFY serialises commits: PostgreSQL takes a database-wide lock from the moment a notifying
-- transaction queues its notification until it has committed (WAL flush included), so every
-- writer notifying on every insert caps the database at one commit per fsync. Relays poll
-- quickly while rows keep arriving and need a wake-up only once they have gone idle, so they
-- flag that here and writers notify only while some live relay is waiting.
ALTER TABLE courier_outbox_relays ADD COLUMN listening BOOLEAN NOT NULL DEFAULT false;

CREATE OR REPLACE FUNCTION courier_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM courier_outbox_relays
               WHERE listening AND expires_at_ms > (extract(epoch from clock_timestamp()) * 1000)::bigint) THEN
        PERFORM pg_notify('courier_outbox', '');
    END IF;
    RETURN NULL;
END $$;
