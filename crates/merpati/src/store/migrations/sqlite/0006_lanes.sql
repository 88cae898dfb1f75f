-- Per-endpoint limits (NULL: the configured default concurrency, no rate limit).
ALTER TABLE endpoints ADD COLUMN max_concurrency INTEGER;
ALTER TABLE endpoints ADD COLUMN rate_limit INTEGER;
-- On an endpoint with ordering "device": the device whose queue the delivery is in. At most
-- one delivery of a queue has a next_attempt_at; the others wait for it with NULL.
ALTER TABLE deliveries ADD COLUMN order_key TEXT;
CREATE INDEX deliveries_queue ON deliveries(endpoint_id, order_key, event_seq)
    WHERE status = 'pending' AND order_key IS NOT NULL;
