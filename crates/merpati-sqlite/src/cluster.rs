//! The node serving the database, and its lease: on SQLite, one process at a time.

use merpati_domain::cluster::{ClusterStore, NodeInfo};
use merpati_domain::StoreResult;
use rusqlite::{params, OptionalExtension, Row};

use crate::SqliteStore;

/// The time now, in ms (the machine's: every process on one file shares it).
/// The database's clock, in ms.
pub(crate) const NOW_MS: &str = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";

/// Nodes whose lease ran out this long ago are forgotten.
const FORGOTTEN_AFTER_MS: i64 = 24 * 3600 * 1000;

const COLUMNS: &str = "id, name, started_at, renewed_at, lease_until";

fn node_row(r: &Row<'_>) -> rusqlite::Result<NodeInfo> {
    Ok(NodeInfo {
        id: r.get(0)?,
        name: r.get(1)?,
        started_at: r.get(2)?,
        renewed_at: r.get(3)?,
        lease_until: r.get(4)?,
    })
}

#[async_trait::async_trait]
impl ClusterStore for SqliteStore {
    async fn join_cluster(
        &self,
        node: &str,
        name: &str,
        lease_ms: i64,
    ) -> StoreResult<Result<NodeInfo, NodeInfo>> {
        let (node, name) = (node.to_owned(), name.to_owned());
        // The one writer takes joins one at a time.
        self.write(move |c| {
            c.execute(
                &format!("DELETE FROM cluster_nodes WHERE lease_until < {NOW_MS} - ?1"),
                [FORGOTTEN_AFTER_MS],
            )?;
            let holder = c
                .query_row(
                    &format!(
                        "SELECT {COLUMNS} FROM cluster_nodes
                         WHERE id <> ?1 AND lease_until > {NOW_MS} ORDER BY started_at LIMIT 1"
                    ),
                    [&node],
                    node_row,
                )
                .optional()?;
            if let Some(holder) = holder {
                return Ok(Err(holder));
            }
            let joined = c.query_row(
                &format!(
                    "INSERT INTO cluster_nodes (id, name, started_at, renewed_at, lease_until)
                     VALUES (?1, ?2, {NOW_MS}, {NOW_MS}, {NOW_MS} + ?3)
                     ON CONFLICT (id) DO UPDATE SET renewed_at = excluded.renewed_at,
                         lease_until = excluded.lease_until
                     RETURNING {COLUMNS}"
                ),
                params![node, name, lease_ms],
                node_row,
            )?;
            Ok(Ok(joined))
        })
        .await
    }

    async fn renew_lease(&self, node: &str, lease_ms: i64) -> StoreResult<Option<NodeInfo>> {
        let node = node.to_owned();
        self.write(move |c| {
            Ok(c.query_row(
                &format!(
                    "UPDATE cluster_nodes SET renewed_at = {NOW_MS}, lease_until = {NOW_MS} + ?2
                     WHERE id = ?1 AND lease_until > {NOW_MS}
                     RETURNING {COLUMNS}"
                ),
                params![node, lease_ms],
                node_row,
            )
            .optional()?)
        })
        .await
    }

    async fn leave_cluster(&self, node: &str) -> StoreResult<()> {
        let node = node.to_owned();
        self.write(move |c| {
            c.execute(
                &format!("UPDATE cluster_nodes SET lease_until = {NOW_MS} WHERE id = ?1"),
                [node],
            )?;
            Ok(())
        })
        .await
    }

    fn shares_work(&self) -> bool {
        // Its writer is in this process: a second process would write beside it.
        false
    }

    async fn cut_off_dead_nodes(&self) -> StoreResult<u64> {
        Ok(0)
    }

    async fn cluster_nodes(&self) -> StoreResult<(Vec<NodeInfo>, i64)> {
        self.read(|c| {
            let now: i64 = c.query_row(&format!("SELECT {NOW_MS}"), [], |r| r.get(0))?;
            let mut s = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM cluster_nodes WHERE lease_until > ?1
                 ORDER BY started_at, id"
            ))?;
            let nodes = s
                .query_map([now], node_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok((nodes, now))
        })
        .await
    }
}
