-- The audit trail: every change made through the API (who, from where, what, when), never a
-- value sent; kept by retention.
CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id  TEXT,
    actor       TEXT NOT NULL,
    address     TEXT,
    method      TEXT NOT NULL,
    route       TEXT NOT NULL,
    object_id   TEXT,
    fields      TEXT NOT NULL,
    status      INTEGER NOT NULL,
    at          INTEGER NOT NULL
);
CREATE INDEX audit_log_account ON audit_log(account_id, id);
CREATE INDEX audit_log_at ON audit_log(at);
