-- Endpoints hashed into slots (merpati_domain::slots::slot_of), each slot owned by one node
-- at a time, with an epoch raised each time it changes hands.
ALTER TABLE endpoints ADD COLUMN slot INTEGER NOT NULL DEFAULT 0;
UPDATE endpoints SET slot = merpati_slot(id);
CREATE INDEX endpoints_slot ON endpoints(slot);
CREATE TABLE slot_leases (
    slot    INTEGER PRIMARY KEY,
    node_id TEXT,
    epoch   INTEGER NOT NULL,
    since   INTEGER NOT NULL
);
