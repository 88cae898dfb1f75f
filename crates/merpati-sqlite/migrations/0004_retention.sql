-- Retention finds old events by age without scanning the table.
CREATE INDEX events_created ON events(created_at);
