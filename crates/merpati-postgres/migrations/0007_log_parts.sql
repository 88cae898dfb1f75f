-- The event log in parts that retention drops whole: events, deliveries and attempts are
-- partitioned by number ranges of 10^10 (events by their number, deliveries by their id,
-- attempts by their delivery's id), and part n holds the numbers from n * 10^10. The
-- leader moves the numbers onto the next part once a day (`log_parts.rs`), so a part is a
-- day of the log, dropped once it is past the retention's age and nothing in it is owed.
--
-- A unique key of a partitioned table must contain its partition key, so a device's rids
-- live in a table of their own (`event_rids`), which keeps them unique across parts. The
-- three tables' references (to each other, to accounts and endpoints) are kept by the
-- backend, not by foreign keys: those would make every insert look its parent up and lock
-- it, and dropping a part would lock the tables they point to against every write.

CREATE TABLE log_parts (
    number    BIGINT PRIMARY KEY,
    -- when the numbers moved onto it; NULL for the part made ready ahead
    opened_at BIGINT
);

CREATE SEQUENCE event_numbers;
CREATE SEQUENCE delivery_numbers;
CREATE SEQUENCE attempt_numbers;
SELECT setval('event_numbers', COALESCE((SELECT MAX(seq) FROM events), 0) + 1, false);
SELECT setval('delivery_numbers', COALESCE((SELECT MAX(id) FROM deliveries), 0) + 1, false);
SELECT setval('attempt_numbers', COALESCE((SELECT MAX(id) FROM attempts), 0) + 1, false);

CREATE TABLE events_parted (
    seq          BIGINT NOT NULL DEFAULT nextval('event_numbers'),
    id           TEXT NOT NULL,
    account_id   TEXT NOT NULL,
    type         TEXT NOT NULL,
    device_id    TEXT,
    channel_id   TEXT,
    business_id  TEXT,
    payload      TEXT NOT NULL,
    created_at   BIGINT NOT NULL
) PARTITION BY RANGE (seq);

CREATE TABLE deliveries_parted (
    id              BIGINT NOT NULL DEFAULT nextval('delivery_numbers'),
    event_seq       BIGINT NOT NULL,
    endpoint_id     TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,
    claimed_at      BIGINT,
    created_at      BIGINT NOT NULL,
    completed_at    BIGINT,
    order_key       TEXT,
    parked          BOOLEAN NOT NULL DEFAULT FALSE
) PARTITION BY RANGE (id);

CREATE TABLE attempts_parted (
    id            BIGINT NOT NULL DEFAULT nextval('attempt_numbers'),
    delivery_id   BIGINT NOT NULL,
    attempt       BIGINT NOT NULL,
    started_at    BIGINT NOT NULL,
    duration_ms   BIGINT NOT NULL,
    status_code   BIGINT,
    error_kind    TEXT,
    error         TEXT,
    response_body TEXT
) PARTITION BY RANGE (delivery_id);

-- Parts 0 and 1 of each, the first in use. A log of more than 10^10 events before this
-- migration would not fit part 0; none is that old.
CREATE TABLE events_p0 PARTITION OF events_parted FOR VALUES FROM (0) TO (10000000000);
CREATE TABLE events_p1 PARTITION OF events_parted FOR VALUES FROM (10000000000) TO (20000000000);
CREATE TABLE deliveries_p0 PARTITION OF deliveries_parted FOR VALUES FROM (0) TO (10000000000);
CREATE TABLE deliveries_p1 PARTITION OF deliveries_parted FOR VALUES FROM (10000000000) TO (20000000000);
CREATE TABLE attempts_p0 PARTITION OF attempts_parted FOR VALUES FROM (0) TO (10000000000);
CREATE TABLE attempts_p1 PARTITION OF attempts_parted FOR VALUES FROM (10000000000) TO (20000000000);
INSERT INTO log_parts (number, opened_at)
VALUES (0, (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT), (1, NULL);

CREATE TABLE event_rids (
    account_id   TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    rid          TEXT NOT NULL,
    content_hash BYTEA,
    event_seq    BIGINT NOT NULL,
    event_id     TEXT NOT NULL,
    PRIMARY KEY (account_id, device_id, rid)
);
CREATE INDEX event_rids_event ON event_rids(event_seq);

INSERT INTO events_parted
SELECT seq, id, account_id, type, device_id, channel_id, business_id, payload, created_at
FROM events;
INSERT INTO event_rids
SELECT account_id, device_id, rid, content_hash, seq, id
FROM events WHERE rid IS NOT NULL AND device_id IS NOT NULL;
INSERT INTO deliveries_parted
SELECT id, event_seq, endpoint_id, status, attempts, next_attempt_at, claimed_at, created_at,
       completed_at, order_key, parked
FROM deliveries;
INSERT INTO attempts_parted
SELECT id, delivery_id, attempt, started_at, duration_ms, status_code, error_kind, error,
       response_body
FROM attempts;

DROP TABLE attempts;
DROP TABLE deliveries;
DROP TABLE events;
ALTER TABLE events_parted RENAME TO events;
ALTER TABLE deliveries_parted RENAME TO deliveries;
ALTER TABLE attempts_parted RENAME TO attempts;
ALTER SEQUENCE event_numbers OWNED BY events.seq;
ALTER SEQUENCE delivery_numbers OWNED BY deliveries.id;
ALTER SEQUENCE attempt_numbers OWNED BY attempts.id;

ALTER TABLE events ADD PRIMARY KEY (seq);
CREATE INDEX events_id ON events(id);
CREATE INDEX events_account ON events(account_id, seq);
CREATE INDEX events_account_type ON events(account_id, type, seq);
CREATE INDEX events_account_device ON events(account_id, device_id, seq);

ALTER TABLE deliveries ADD PRIMARY KEY (id);
CREATE INDEX deliveries_due ON deliveries(next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_event ON deliveries(event_seq);
CREATE INDEX deliveries_queue ON deliveries(endpoint_id, order_key, event_seq)
    WHERE status = 'pending' AND order_key IS NOT NULL;
CREATE INDEX deliveries_parked ON deliveries(endpoint_id, next_attempt_at)
    WHERE status = 'pending' AND parked;
CREATE INDEX deliveries_endpoint ON deliveries(endpoint_id);
CREATE INDEX deliveries_held ON deliveries(endpoint_id) WHERE status = 'held';
CREATE INDEX deliveries_failed ON deliveries(endpoint_id) WHERE status = 'failed';
-- What a part still owes, found without reading the part.
CREATE INDEX deliveries_owed ON deliveries(event_seq) WHERE status IN ('pending', 'held');

ALTER TABLE attempts ADD PRIMARY KEY (delivery_id, id);
