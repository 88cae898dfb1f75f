-- Endpoint health: since when it has been failing without a success, and why and when it
-- was disabled.
ALTER TABLE endpoints ADD COLUMN failing_since INTEGER;
ALTER TABLE endpoints ADD COLUMN disabled_at INTEGER;
ALTER TABLE endpoints ADD COLUMN disabled_reason TEXT;
