-- A delivery carries its endpoint's slot (a function of the endpoint's id, so it never
-- changes), and the due index leads with it: a node's claim reads only its own slots' due
-- deliveries, however many other nodes' slots have waiting.
ALTER TABLE deliveries ADD COLUMN slot SMALLINT;
UPDATE deliveries d SET slot = ep.slot FROM endpoints ep WHERE ep.id = d.endpoint_id;
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries(slot, next_attempt_at) WHERE status = 'pending';
