-- The oldest pending row of an aggregate, which the relay compares with each row it claims: a
-- transaction may commit after the relay's scan passed its row id, and the aggregate's next row
-- must not overtake it.
CREATE INDEX courier_outbox_pending_aggregate ON courier_outbox (aggregate_id, status, id);
