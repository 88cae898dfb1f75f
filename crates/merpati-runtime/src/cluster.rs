//! This node's place among the nodes of its database: it joins with a lease on the
//! database's clock, renews it three times within it, and leaves at shutdown. A lease
//! that ran out (the database was away longer than it, or the node was paused) is taken
//! again if no other node holds the database meanwhile; if one does, this node must stop.

use std::time::Duration;

use merpati_domain::cluster::{renew_every_ms, NodeInfo};
use merpati_domain::{SharedStore, StoreError};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error(
        "another merpati node serves this database: {} ({}), its lease renewed until {}; \
         until work is shared among nodes, a database has one node at a time",
        .0.name, .0.id, .0.lease_until
    )]
    Taken(NodeInfo),
    #[error("joining the nodes of the database: {0}")]
    Store(#[from] StoreError),
}

/// The longest a starting node waits for another's lease to run out.
const MAX_WAIT_MS: i64 = 5 * 60 * 1000;
/// Past the lease's end, for the clocks' and the round trips' sake.
const MARGIN_MS: i64 = 100;

pub struct Membership {
    pub store: SharedStore,
    /// This node's id, new for each start.
    pub node: String,
    pub name: String,
    pub lease: Duration,
    pub shutdown: CancellationToken,
}

impl Membership {
    fn lease_ms(&self) -> i64 {
        self.lease.as_millis() as i64
    }

    /// Joins. A node that holds the database is waited for once, until its lease runs
    /// out (a node killed without leaving holds it until then; a live one renews it): an
    /// error names the node that holds it still.
    pub async fn join(&self) -> Result<NodeInfo, MembershipError> {
        let mut waited = false;
        loop {
            let holder = match self
                .store
                .join_cluster(&self.node, &self.name, self.lease_ms())
                .await?
            {
                Ok(joined) => return Ok(joined),
                Err(holder) if waited => return Err(MembershipError::Taken(holder)),
                Err(holder) => holder,
            };
            let (_, now) = self.store.cluster_nodes().await?;
            let left = (holder.lease_until - now).clamp(0, MAX_WAIT_MS) + MARGIN_MS;
            tracing::info!(
                node = %holder.id,
                name = %holder.name,
                wait_ms = left,
                "another node holds the database; waiting for its lease to run out"
            );
            tokio::select! {
                () = self.shutdown.cancelled() => return Err(MembershipError::Taken(holder)),
                () = tokio::time::sleep(Duration::from_millis(left as u64)) => {}
            }
            waited = true;
        }
    }

    /// Keeps the lease until shutdown, then leaves. Returns an error when another node
    /// took the database while this one's lease had run out.
    pub async fn run(self) -> Result<(), MembershipError> {
        let every = Duration::from_millis(renew_every_ms(self.lease_ms()) as u64);
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                () = tokio::time::sleep(every) => {}
            }
            match self.store.renew_lease(&self.node, self.lease_ms()).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    tracing::warn!(node = %self.node, "this node's lease ran out; joining again");
                    self.join().await?;
                }
                // The database is away: the next renewal tries again.
                Err(e) => tracing::warn!(error = %e, "cannot renew this node's lease"),
            }
        }
        if let Err(e) = self.store.leave_cluster(&self.node).await {
            tracing::warn!(error = %e, "cannot end this node's lease");
        }
        Ok(())
    }
}
