//! The nodes serving one database. Each holds a lease renewed on the database's clock;
//! a node that cannot renew stops being sure it holds one, and one whose lease ran out is
//! gone for the others (its slots are taken over): it comes back as a new node. On
//! PostgreSQL any number of nodes share the database's work ([`crate::slots`]); a SQLite
//! file has one node at a time.

use crate::storage::StoreResult;

/// A node, as the database knows it. Times are the database's, in ms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    /// What the operator calls it (the host's name by default).
    pub name: String,
    pub started_at: i64,
    pub renewed_at: i64,
    pub lease_until: i64,
}

/// A node's id: random for each start, so that a restarted node is a new one.
pub fn new_node_id() -> String {
    crate::ids::new_id("node")
}

/// How often a lease of `lease_ms` is renewed: five times within it, so that a late or
/// lost renewal does not lose it, and a dead node's slots are taken over within a fifth of
/// a lease after its lease ran out.
pub fn renew_every_ms(lease_ms: i64) -> i64 {
    (lease_ms / 5).max(1)
}

/// The node that runs what must run once for the whole database (retention, the alert
/// engine's timers, jobs a stopped node left): the live node that started first. Each node
/// decides from the same list; while a dead leader's lease runs out, none leads.
pub fn leader_of(nodes: &[NodeInfo]) -> Option<&NodeInfo> {
    nodes
        .iter()
        .min_by(|a, b| (a.started_at, &a.id).cmp(&(b.started_at, &b.id)))
}

#[async_trait::async_trait]
pub trait ClusterStore: Send + Sync {
    /// Joins as `node` with a lease of `lease_ms` from now on the database's clock. Where
    /// the database serves one node at a time (SQLite), does not join while another node's
    /// lease is live, and answers that node. Nodes whose lease ran out long ago are
    /// forgotten.
    async fn join_cluster(
        &self,
        node: &str,
        name: &str,
        lease_ms: i64,
    ) -> StoreResult<Result<NodeInfo, NodeInfo>>;

    /// Renews the node's lease; None when it had run out (another node may have joined
    /// since: the node must join again).
    async fn renew_lease(&self, node: &str, lease_ms: i64) -> StoreResult<Option<NodeInfo>>;

    /// Leaves: the node's lease ends now.
    async fn leave_cluster(&self, node: &str) -> StoreResult<()>;

    /// The nodes whose lease is live, and the database's time now (ms).
    async fn cluster_nodes(&self) -> StoreResult<(Vec<NodeInfo>, i64)>;

    /// Ends what nodes whose lease ran out still hold open in the database: a node frozen
    /// (a paused process or machine) still connected would otherwise hold, with its
    /// listening session, every notification sent since, until the server's queue is full.
    /// Answers how many sessions it ended. Nothing where one node is all there is.
    async fn cut_off_dead_nodes(&self) -> StoreResult<u64>;

    /// Whether many nodes may serve the database at once (else one at a time).
    fn shares_work(&self) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_is_the_node_that_started_first() {
        let node = |id: &str, started_at| NodeInfo {
            id: id.into(),
            name: id.into(),
            started_at,
            renewed_at: started_at,
            lease_until: started_at + 5_000,
        };
        assert_eq!(leader_of(&[]), None);
        let nodes = [node("node_b", 20), node("node_c", 10), node("node_a", 10)];
        assert_eq!(leader_of(&nodes).unwrap().id, "node_a", "ties go by id");
        assert_eq!(leader_of(&nodes[..2]).unwrap().id, "node_c");
    }

    #[test]
    fn a_lease_is_renewed_five_times_within_it() {
        assert_eq!(renew_every_ms(5_000), 1_000);
        assert_eq!(renew_every_ms(1), 1);
        assert!(new_node_id().starts_with("node_"));
        assert_ne!(new_node_id(), new_node_id());
    }
}
