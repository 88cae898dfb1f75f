-- Endpoints hashed into slots (merpati_domain::slots::slot_of: the first byte of the
-- SHA-256 of the id, modulo 64), each slot owned by one node at a time, with an epoch
-- raised each time it changes hands.
ALTER TABLE endpoints ADD COLUMN slot SMALLINT NOT NULL DEFAULT 0;
UPDATE endpoints SET slot = get_byte(sha256(convert_to(id, 'UTF8')), 0) % 64;
CREATE INDEX endpoints_slot ON endpoints(slot);
CREATE TABLE slot_leases (
    slot    SMALLINT PRIMARY KEY,
    node_id TEXT,
    epoch   BIGINT NOT NULL,
    since   BIGINT NOT NULL
);
