-- A deleted endpoint or account is marked at once and what it owns is removed in the
-- background, a chunk per transaction: one cascade over millions of rows would hold every
-- other write up for as long as it took.
ALTER TABLE endpoints ADD COLUMN deleted_at INTEGER;
CREATE INDEX endpoints_deleted ON endpoints(id) WHERE deleted_at IS NOT NULL;
ALTER TABLE accounts ADD COLUMN deleted_at INTEGER;
CREATE INDEX accounts_deleted ON accounts(id) WHERE deleted_at IS NOT NULL;
