//! The nodes serving the database, their leases on the database's clock. Any number of
//! nodes join; they share the work through slots (`slots`).

use merpati_domain::cluster::{ClusterStore, NodeInfo};
use merpati_domain::StoreResult;
use postgres::Row;

use crate::PostgresStore;

/// The database's time now, in ms.
pub(crate) const NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::BIGINT";

/// Nodes whose lease ran out this long ago are forgotten.
const FORGOTTEN_AFTER_MS: i64 = 24 * 3600 * 1000;

const COLUMNS: &str = "id, name, started_at, renewed_at, lease_until";

/// The start of a node's listening connection's `application_name`, followed by the node.
const LISTENER_NAME: &str = "merpati listener";

/// The `application_name` of `node`'s listening connection (`listener`), by which the
/// others find it once `node`'s lease ran out.
pub(crate) fn listener_name(node: &str) -> String {
    format!("{LISTENER_NAME} {node}")
}

fn node_row(r: &Row) -> NodeInfo {
    NodeInfo {
        id: r.get(0),
        name: r.get(1),
        started_at: r.get(2),
        renewed_at: r.get(3),
        lease_until: r.get(4),
    }
}

#[async_trait::async_trait]
impl ClusterStore for PostgresStore {
    async fn join_cluster(
        &self,
        node: &str,
        name: &str,
        lease_ms: i64,
    ) -> StoreResult<Result<NodeInfo, NodeInfo>> {
        let (node, name) = (node.to_owned(), name.to_owned());
        self.write(move |c| {
            c.execute(
                &format!("DELETE FROM cluster_nodes WHERE lease_until < {NOW_MS} - $1"),
                &[&FORGOTTEN_AFTER_MS],
            )?;
            let joined = c.query_one(
                &format!(
                    "INSERT INTO cluster_nodes (id, name, started_at, renewed_at, lease_until)
                     VALUES ($1, $2, {NOW_MS}, {NOW_MS}, {NOW_MS} + $3)
                     ON CONFLICT (id) DO UPDATE SET renewed_at = excluded.renewed_at,
                         lease_until = excluded.lease_until
                     RETURNING {COLUMNS}"
                ),
                &[&node, &name, &lease_ms],
            )?;
            Ok(Ok(node_row(&joined)))
        })
        .await
    }

    async fn renew_lease(&self, node: &str, lease_ms: i64) -> StoreResult<Option<NodeInfo>> {
        let node = node.to_owned();
        self.write(move |c| {
            Ok(c.query_opt(
                &format!(
                    "UPDATE cluster_nodes SET renewed_at = {NOW_MS}, lease_until = {NOW_MS} + $2
                     WHERE id = $1 AND lease_until > {NOW_MS}
                     RETURNING {COLUMNS}"
                ),
                &[&node, &lease_ms],
            )?
            .as_ref()
            .map(node_row))
        })
        .await
    }

    async fn leave_cluster(&self, node: &str) -> StoreResult<()> {
        let node = node.to_owned();
        self.write(move |c| {
            c.execute(
                &format!("UPDATE cluster_nodes SET lease_until = {NOW_MS} WHERE id = $1"),
                &[&node],
            )?;
            Ok(())
        })
        .await
    }

    fn shares_work(&self) -> bool {
        true
    }

    async fn cut_off_dead_nodes(&self) -> StoreResult<u64> {
        self.read(|c| {
            // Chosen first, ended after: the server may weigh a WHERE's terms in any order.
            let ended: i64 = c
                .query_one(
                    &format!(
                        "WITH dead AS MATERIALIZED (
                             SELECT a.pid FROM pg_stat_activity a
                             WHERE a.datname = current_database()
                               AND starts_with(a.application_name, '{LISTENER_NAME} ')
                               AND NOT EXISTS (
                                   SELECT 1 FROM cluster_nodes n
                                   WHERE n.lease_until > {NOW_MS}
                                     AND a.application_name = '{LISTENER_NAME} ' || n.id))
                         SELECT COUNT(*) FILTER (WHERE pg_terminate_backend(pid)) FROM dead"
                    ),
                    &[],
                )?
                .get(0);
            Ok(ended as u64)
        })
        .await
    }

    async fn cluster_nodes(&self) -> StoreResult<(Vec<NodeInfo>, i64)> {
        self.read(|c| {
            let now: i64 = c.query_one(&format!("SELECT {NOW_MS}"), &[])?.get(0);
            let nodes = c
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM cluster_nodes WHERE lease_until > $1
                         ORDER BY started_at, id"
                    ),
                    &[&now],
                )?
                .iter()
                .map(node_row)
                .collect();
            Ok((nodes, now))
        })
        .await
    }
}
