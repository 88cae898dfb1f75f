-- What a person edits counts its changes, so that an update can name the revision it was
-- read at and two concurrent edits cannot silently overwrite each other.
ALTER TABLE accounts ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;
ALTER TABLE businesses ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;
ALTER TABLE channels ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;
ALTER TABLE endpoints ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;
