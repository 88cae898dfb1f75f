-- The nodes serving the database (one at a time on SQLite: a second process on the same
-- file is refused while the first's lease is live), each with a lease in ms.
CREATE TABLE cluster_nodes (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    started_at  INTEGER NOT NULL,
    renewed_at  INTEGER NOT NULL,
    lease_until INTEGER NOT NULL
) WITHOUT ROWID;
