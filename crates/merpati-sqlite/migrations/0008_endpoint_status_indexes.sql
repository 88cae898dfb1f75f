-- Every delivery goes from pending to an outcome, and an index on (endpoint_id, status)
-- moved its entry each time: one more b-tree update per delivery than needed. The index
-- every delivery is in now never changes (it serves deleting an endpoint), and only the
-- statuses looked up by endpoint have their own partial indexes: held (re-enabling) and
-- failed (recovery). An endpoint's pending deliveries are found through deliveries_due.
DROP INDEX deliveries_endpoint;
CREATE INDEX deliveries_endpoint ON deliveries(endpoint_id);
CREATE INDEX deliveries_held ON deliveries(endpoint_id) WHERE status = 'held';
CREATE INDEX deliveries_failed ON deliveries(endpoint_id) WHERE status = 'failed';
