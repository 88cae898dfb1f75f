-- The nodes serving the database, each with a lease on the database's clock (ms).
CREATE TABLE cluster_nodes (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    renewed_at  BIGINT NOT NULL,
    lease_until BIGINT NOT NULL
);
