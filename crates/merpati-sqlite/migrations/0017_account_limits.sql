-- An account's own limits over the server's defaults (rates and caps), as JSON.
ALTER TABLE accounts ADD COLUMN limits TEXT NOT NULL DEFAULT '{}';
