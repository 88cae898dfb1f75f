-- Dashboard sessions: a browser signed in with an API key. Stored by the hash of the cookie's
-- token; a session lives only as long as its key (revoked key, deleted account: signed out).
CREATE TABLE dashboard_sessions (
    token_hash  BLOB PRIMARY KEY,
    api_key_id  TEXT NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions(expires_at);
CREATE INDEX dashboard_sessions_key ON dashboard_sessions(api_key_id);
