-- Each endpoint's attempts a minute: succeeded, failed, and latency in fixed buckets (the
-- domain's LATENCY_BOUNDS_MS, b12 the slowest), kept a day. What its success rate and
-- latency quantiles are read from, without scanning attempts.
CREATE TABLE endpoint_minutes (
    endpoint_id TEXT NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    minute      INTEGER NOT NULL,
    succeeded   INTEGER NOT NULL,
    failed      INTEGER NOT NULL,
    b0 INTEGER NOT NULL, b1 INTEGER NOT NULL, b2 INTEGER NOT NULL, b3 INTEGER NOT NULL,
    b4 INTEGER NOT NULL, b5 INTEGER NOT NULL, b6 INTEGER NOT NULL, b7 INTEGER NOT NULL,
    b8 INTEGER NOT NULL, b9 INTEGER NOT NULL, b10 INTEGER NOT NULL, b11 INTEGER NOT NULL,
    b12 INTEGER NOT NULL,
    PRIMARY KEY (endpoint_id, minute)
) WITHOUT ROWID;
