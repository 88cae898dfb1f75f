-- Presence: what an engine last reported, per-channel lease settings, and the history of
-- each device's announced presence (sessions and outages) and of the blips in between.

ALTER TABLE devices ADD COLUMN engine_state TEXT; -- connected | disconnected | logged_out
ALTER TABLE channels ADD COLUMN heartbeat_timeout_ms INTEGER;
ALTER TABLE channels ADD COLUMN grace_ms INTEGER;

-- One row per announced state: 'up' from the connect, 'down' from the moment life was lost
-- (the announcement comes a grace later). At most one open row (ended_at NULL) per device.
CREATE TABLE presence_periods (
    id          INTEGER PRIMARY KEY,
    account_id  TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    state       TEXT NOT NULL,
    started_at  INTEGER NOT NULL,
    ended_at    INTEGER,
    reason      TEXT,
    FOREIGN KEY (account_id, device_id) REFERENCES devices(account_id, id) ON DELETE CASCADE
);
CREATE INDEX presence_periods_device ON presence_periods(account_id, device_id, started_at);

-- Lost and back inside the grace: never announced, kept for the record.
CREATE TABLE presence_blips (
    id          INTEGER PRIMARY KEY,
    account_id  TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    started_at  INTEGER NOT NULL,
    ended_at    INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    FOREIGN KEY (account_id, device_id) REFERENCES devices(account_id, id) ON DELETE CASCADE
);
CREATE INDEX presence_blips_device ON presence_blips(account_id, device_id, started_at);
