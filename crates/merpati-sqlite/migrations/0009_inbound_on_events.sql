-- What each device already sent is kept on its event: one index on events in place of a
-- table and its two indexes, which every inbound item wrote. Not a unique index: ingest
-- looks every rid up before it stores anything (and refuses a reused one), on the one
-- writer, so a second check inside the insert would only cost a second search.
-- The upgrade rewrites the row of every event a device sent, in one transaction: on a large
-- database it takes a while and the log grows by about the size of those events.
ALTER TABLE events ADD COLUMN rid TEXT;
ALTER TABLE events ADD COLUMN content_hash BLOB;
UPDATE events
SET (rid, content_hash) = (SELECT rid, content_hash FROM inbound_items WHERE event_seq = events.seq)
WHERE seq IN (SELECT event_seq FROM inbound_items);
CREATE INDEX events_rid ON events(account_id, device_id, rid) WHERE rid IS NOT NULL;
DROP TABLE inbound_items;
-- Retention finds old events by their numbers, which rise with time (see prune_events).
DROP INDEX events_created;
