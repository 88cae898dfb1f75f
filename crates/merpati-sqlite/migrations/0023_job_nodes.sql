-- The node running each job (NULL: before nodes were kept), so that the leading node takes
-- up the jobs of a node that is gone.
ALTER TABLE jobs ADD COLUMN node TEXT;
