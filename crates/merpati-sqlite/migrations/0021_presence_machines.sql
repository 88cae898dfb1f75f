-- Each device's presence machine, kept between steps so that any node can take the next
-- (merpati_domain::presence::step): its link and the node that holds it, its last
-- heartbeat, a loss inside the grace, and its next deadline, which every node sweeps.
ALTER TABLE devices ADD COLUMN presence_link INTEGER;
ALTER TABLE devices ADD COLUMN presence_link_node TEXT;
ALTER TABLE devices ADD COLUMN presence_heard INTEGER;
ALTER TABLE devices ADD COLUMN presence_pending_since INTEGER;
ALTER TABLE devices ADD COLUMN presence_pending_reason TEXT;
ALTER TABLE devices ADD COLUMN presence_deadline INTEGER;
CREATE INDEX devices_presence_deadline ON devices(presence_deadline)
    WHERE presence_deadline IS NOT NULL;
CREATE INDEX devices_presence_link_node ON devices(presence_link_node)
    WHERE presence_link_node IS NOT NULL;
