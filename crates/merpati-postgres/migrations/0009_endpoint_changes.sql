-- A number raised by every change to what the writers keep of endpoints between their
-- transactions (an endpoint's subscription or target, its secrets), in the transaction that
-- makes it: a writer reads it first in each transaction and keeps what it read while it is
-- unchanged. It is raised at the commit (deferred triggers), so that its row is the last
-- lock such a transaction takes and two of them never wait for each other in a cycle. An
-- endpoint's failing streak is not kept, and changes nothing.
CREATE TABLE endpoint_changes (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    version  BIGINT NOT NULL
);
INSERT INTO endpoint_changes (only_row, version) VALUES (TRUE, 0);

CREATE FUNCTION note_endpoint_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE endpoint_changes SET version = version + 1;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER endpoints_added_or_removed AFTER INSERT OR DELETE ON endpoints
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION note_endpoint_change();
CREATE CONSTRAINT TRIGGER endpoints_changed AFTER UPDATE ON endpoints
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN ((to_jsonb(OLD) - 'failing_since') IS DISTINCT FROM (to_jsonb(NEW) - 'failing_since'))
    EXECUTE FUNCTION note_endpoint_change();
CREATE CONSTRAINT TRIGGER endpoint_secrets_changed AFTER INSERT OR UPDATE OR DELETE
    ON endpoint_secrets
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION note_endpoint_change();
