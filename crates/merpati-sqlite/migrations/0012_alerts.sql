-- Alerts and incidents: rules, notifiers and maintenance windows as accounts edit them
-- (each a JSON body beside the columns queries need), each device's alert tracker, the
-- incidents with their timelines, and notifications until they are sent or given up.

ALTER TABLE accounts ADD COLUMN language TEXT NOT NULL DEFAULT 'en';

-- The alert engine reads announcements in the order they were made, by period number, so
-- a number is never used twice (AUTOINCREMENT), and each period keeps when it was announced
-- (a disconnect starts when the lease was lost, and is announced a grace later).
CREATE TABLE presence_periods_numbered (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id   TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    state        TEXT NOT NULL,
    started_at   INTEGER NOT NULL,
    ended_at     INTEGER,
    reason       TEXT,
    announced_at INTEGER NOT NULL,
    FOREIGN KEY (account_id, device_id) REFERENCES devices(account_id, id) ON DELETE CASCADE
);
INSERT INTO presence_periods_numbered
    (id, account_id, device_id, state, started_at, ended_at, reason, announced_at)
SELECT id, account_id, device_id, state, started_at, ended_at, reason, started_at
FROM presence_periods;
DROP TABLE presence_periods;
ALTER TABLE presence_periods_numbered RENAME TO presence_periods;
CREATE INDEX presence_periods_device ON presence_periods(account_id, device_id, started_at);

CREATE TABLE alert_rules (
    account_id  TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    id          TEXT NOT NULL,
    body        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    revision    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, id)
) WITHOUT ROWID;

CREATE TABLE notifiers (
    account_id      TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    id              TEXT NOT NULL,
    body            TEXT NOT NULL,
    failures_in_row INTEGER NOT NULL DEFAULT 0,
    last_success_at INTEGER,
    last_failure_at INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    revision        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, id)
) WITHOUT ROWID;

CREATE TABLE maintenance_windows (
    account_id  TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    id          TEXT NOT NULL,
    body        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    revision    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, id)
) WITHOUT ROWID;

CREATE TABLE alert_trackers (
    account_id  TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    down_since  INTEGER,
    phase       TEXT NOT NULL,
    window_id   TEXT,
    due_at      INTEGER,
    incident_id TEXT,
    flapping    INTEGER NOT NULL,
    PRIMARY KEY (account_id, device_id),
    FOREIGN KEY (account_id, device_id) REFERENCES devices(account_id, id) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX alert_trackers_due ON alert_trackers(due_at) WHERE due_at IS NOT NULL;

CREATE TABLE incidents (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    business_id TEXT NOT NULL,
    state       TEXT NOT NULL,
    resolved_at INTEGER,
    due_at      INTEGER,
    body        TEXT NOT NULL,
    revision    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX incidents_account ON incidents(account_id, id);
CREATE INDEX incidents_business ON incidents(account_id, business_id, state, resolved_at);
CREATE INDEX incidents_due ON incidents(due_at) WHERE due_at IS NOT NULL;

CREATE TABLE incident_timeline (
    id          INTEGER PRIMARY KEY,
    incident_id TEXT NOT NULL REFERENCES incidents(id) ON DELETE CASCADE,
    at          INTEGER NOT NULL,
    entry       TEXT NOT NULL
);
CREATE INDEX incident_timeline_incident ON incident_timeline(incident_id, id);

CREATE TABLE notifications (
    id              TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    incident_id     TEXT REFERENCES incidents(id) ON DELETE CASCADE,
    notifier_id     TEXT NOT NULL,
    kind            TEXT NOT NULL,
    message         TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    sent_at         INTEGER
);
CREATE INDEX notifications_due ON notifications(next_attempt_at) WHERE status = 'pending';
CREATE INDEX notifications_incident ON notifications(incident_id);
CREATE INDEX notifications_account ON notifications(account_id, created_at);

CREATE TABLE alert_state (
    name  TEXT PRIMARY KEY,
    value ANY
) WITHOUT ROWID;
-- Announcements made before alerts existed alert nobody.
INSERT INTO alert_state VALUES ('cursor', (SELECT COALESCE(MAX(id), 0) FROM presence_periods));
INSERT INTO alert_state VALUES ('link_key', randomblob(32));
