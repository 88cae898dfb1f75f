-- The model of the product brief: accounts own businesses, channels, devices and endpoints.
-- User-supplied ids are unique per account, so every child table is keyed by (account_id, id)
-- and every query names its account: isolation is in the keys, not only in the handlers.
-- Times are Unix milliseconds.

CREATE TABLE accounts (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    key_hash    BLOB NOT NULL UNIQUE,
    hint        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX api_keys_account ON api_keys(account_id);

CREATE TABLE businesses (
    account_id  TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    id          TEXT NOT NULL,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (account_id, id)
) WITHOUT ROWID;

CREATE TABLE channels (
    account_id        TEXT NOT NULL,
    id                TEXT NOT NULL,
    business_id       TEXT NOT NULL,
    name              TEXT NOT NULL,
    engine            TEXT NOT NULL,
    backup_channel_id TEXT,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    PRIMARY KEY (account_id, id),
    FOREIGN KEY (account_id) REFERENCES accounts(id) ON DELETE CASCADE,
    FOREIGN KEY (account_id, business_id) REFERENCES businesses(account_id, id)
) WITHOUT ROWID;
CREATE INDEX channels_business ON channels(account_id, business_id);

CREATE TABLE devices (
    account_id      TEXT NOT NULL,
    id              TEXT NOT NULL,
    channel_id      TEXT NOT NULL,
    name            TEXT NOT NULL,
    phone           TEXT,
    token_hash      BLOB NOT NULL UNIQUE,
    -- presence as last announced: unknown | up | down
    presence        TEXT NOT NULL DEFAULT 'unknown',
    presence_since  INTEGER,
    presence_reason TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (account_id, id),
    FOREIGN KEY (account_id) REFERENCES accounts(id) ON DELETE CASCADE,
    FOREIGN KEY (account_id, channel_id) REFERENCES channels(account_id, id)
) WITHOUT ROWID;
CREATE INDEX devices_channel ON devices(account_id, channel_id);

CREATE TABLE endpoints (
    account_id      TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    id              TEXT NOT NULL PRIMARY KEY,
    url             TEXT NOT NULL,
    description     TEXT,
    -- JSON arrays; events NULL means every type, an empty scope list means no restriction
    events          TEXT,
    business_ids    TEXT NOT NULL,
    channel_ids     TEXT NOT NULL,
    device_ids      TEXT NOT NULL,
    format          TEXT NOT NULL,
    secret_in_body  INTEGER NOT NULL,
    headers         TEXT NOT NULL,
    ordering        TEXT,
    disabled        INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX endpoints_account ON endpoints(account_id);

-- The newest secret signs first; a rotated-out one keeps signing until expires_at.
CREATE TABLE endpoint_secrets (
    endpoint_id TEXT NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    secret      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER
);
CREATE INDEX endpoint_secrets_endpoint ON endpoint_secrets(endpoint_id);

-- seq is the system-wide increasing integer of the inbound payloads ("unique id from the
-- system"); AUTOINCREMENT so that pruning old events never lets a number come back.
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    account_id  TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    type        TEXT NOT NULL,
    device_id   TEXT,
    channel_id  TEXT,
    business_id TEXT,
    payload     TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX events_account ON events(account_id, seq);
CREATE INDEX events_account_type ON events(account_id, type, seq);
CREATE INDEX events_account_device ON events(account_id, device_id, seq);

-- What each device already sent, so that a re-sent item is acknowledged but not repeated.
CREATE TABLE inbound_items (
    account_id   TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    rid          TEXT NOT NULL,
    content_hash BLOB NOT NULL,
    event_seq    INTEGER NOT NULL REFERENCES events(seq) ON DELETE CASCADE,
    PRIMARY KEY (account_id, device_id, rid)
) WITHOUT ROWID;

-- One event to one endpoint. status: pending | held | succeeded | failed.
CREATE TABLE deliveries (
    id              INTEGER PRIMARY KEY,
    event_seq       INTEGER NOT NULL REFERENCES events(seq) ON DELETE CASCADE,
    endpoint_id     TEXT NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    -- set while an attempt is under way; the claim expires at next_attempt_at
    claimed_at      INTEGER,
    created_at      INTEGER NOT NULL,
    completed_at    INTEGER
);
CREATE INDEX deliveries_due ON deliveries(next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_event ON deliveries(event_seq);
CREATE INDEX deliveries_endpoint ON deliveries(endpoint_id, status);

CREATE TABLE attempts (
    id            INTEGER PRIMARY KEY,
    delivery_id   INTEGER NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,
    attempt       INTEGER NOT NULL,
    started_at    INTEGER NOT NULL,
    duration_ms   INTEGER NOT NULL,
    status_code   INTEGER,
    error_kind    TEXT,
    error         TEXT,
    response_body TEXT
);
CREATE INDEX attempts_delivery ON attempts(delivery_id);
