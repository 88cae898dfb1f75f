-- Connectors: engines (WAHA, Evolution API, …) pointed at merpati. Their secrets are kept as
-- endpoints' are: the newest verifies first, a rotated-out one until expires_at.
CREATE TABLE connectors (
    id                TEXT PRIMARY KEY,
    account_id        TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    engine            TEXT NOT NULL,
    channel_id        TEXT NOT NULL,
    device_id         TEXT,
    bindings          TEXT NOT NULL,
    api_base_url      TEXT,
    api_key           TEXT,
    poll_interval_ms  INTEGER,
    notifications     INTEGER NOT NULL,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    revision          INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX connectors_account ON connectors(account_id, id);

CREATE TABLE connector_secrets (
    connector_id  TEXT NOT NULL REFERENCES connectors(id) ON DELETE CASCADE,
    secret        TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER
);
CREATE INDEX connector_secrets_connector ON connector_secrets(connector_id);
