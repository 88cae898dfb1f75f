//! The nodes serving one database. Each holds a lease renewed on the database's clock;
//! a node that cannot renew stops being sure it holds one. Until work is shared out among
//! nodes, a database has one node at a time: a node joins only while no other node's lease
//! is live.

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

/// How often a lease of `lease_ms` is renewed: three times within it, so that one late or
/// lost renewal does not lose it.
pub fn renew_every_ms(lease_ms: i64) -> i64 {
    (lease_ms / 3).max(1)
}

/// Until when a node may count on its lease, on its own clock: the lease runs from the
/// moment the renewal was sent (the database's answer may have taken any time to come
/// back).
pub fn sure_until(sent_at: i64, lease_ms: i64) -> i64 {
    sent_at.saturating_add(lease_ms)
}

#[async_trait::async_trait]
pub trait ClusterStore: Send + Sync {
    /// Joins as `node` with a lease of `lease_ms` from now on the database's clock; when
    /// another node's lease is live, does not join and answers that node. Nodes whose
    /// lease ran out long ago are forgotten.
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_renewed_three_times_within_it_and_counted_from_the_sending() {
        assert_eq!(renew_every_ms(6_000), 2_000);
        assert_eq!(renew_every_ms(1), 1);
        assert_eq!(sure_until(10_000, 6_000), 16_000);
        assert_eq!(sure_until(i64::MAX - 1, 6_000), i64::MAX);
        assert!(new_node_id().starts_with("node_"));
        assert_ne!(new_node_id(), new_node_id());
    }
}
