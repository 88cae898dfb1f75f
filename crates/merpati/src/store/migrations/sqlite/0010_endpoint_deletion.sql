-- A deleted endpoint is marked at once and its deliveries and attempts are removed in the
-- background, a chunk per transaction: one cascade over millions of rows would hold every
-- other write up for as long as it took.
ALTER TABLE endpoints ADD COLUMN deleted_at INTEGER;
CREATE INDEX endpoints_deleted ON endpoints(id) WHERE deleted_at IS NOT NULL;
