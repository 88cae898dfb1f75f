-- Each endpoint's circuit breaker as its owner last left it (NULL: closed), so that the
-- node that takes its slot over starts where the last owner was.
ALTER TABLE endpoints ADD COLUMN breaker_until BIGINT;
ALTER TABLE endpoints ADD COLUMN breaker_cooldown_ms BIGINT;
