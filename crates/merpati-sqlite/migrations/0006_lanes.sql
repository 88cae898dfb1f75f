-- Per-endpoint limits (NULL: the configured default concurrency, no rate limit).
ALTER TABLE endpoints ADD COLUMN max_concurrency INTEGER;
ALTER TABLE endpoints ADD COLUMN rate_limit INTEGER;
-- On an endpoint with ordering "device": the device whose queue the delivery is in. At most
-- one delivery of a queue has a next_attempt_at; the others wait for it with NULL.
ALTER TABLE deliveries ADD COLUMN order_key TEXT;
CREATE INDEX deliveries_queue ON deliveries(endpoint_id, order_key, event_seq)
    WHERE status = 'pending' AND order_key IS NOT NULL;
-- Set while a delivery waits in the store for its endpoint's lane (slow, paused or rate
-- limited) rather than for a retry: a lane that catches up brings these forward.
ALTER TABLE deliveries ADD COLUMN parked INTEGER NOT NULL DEFAULT 0;
CREATE INDEX deliveries_parked ON deliveries(endpoint_id, next_attempt_at)
    WHERE status = 'pending' AND parked = 1;
