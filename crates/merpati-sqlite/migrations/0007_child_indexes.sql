-- Pruning an event deletes its inbound item through the foreign key; without an index on
-- the child column every deleted event would scan the whole table.
CREATE INDEX inbound_items_event ON inbound_items(event_seq);
-- The same for deleting an endpoint with recovery jobs.
CREATE INDEX jobs_endpoint ON jobs(endpoint_id);
CREATE INDEX jobs_account ON jobs(account_id);
