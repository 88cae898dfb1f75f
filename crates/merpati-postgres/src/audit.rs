//! The audit trail's rows: written one per change, read newest first, pruned by age.

use merpati_domain::audit::{AuditEntry, AuditStore};
use merpati_domain::ids::AccountId;
use merpati_domain::StoreResult;
use postgres::Row;

use crate::error::DbResult;
use crate::rows::json_column;
use crate::PostgresStore;

const COLUMNS: &str =
    "id, account_id, actor, address, method, route, object_id, fields, status, at";

fn entry_row(r: &Row) -> DbResult<AuditEntry> {
    Ok(AuditEntry {
        id: r.get(0),
        account_id: r.get::<_, Option<String>>(1).map(AccountId::from),
        actor: r.get(2),
        address: r.get(3),
        method: r.get(4),
        route: r.get(5),
        object_id: r.get(6),
        fields: json_column(r.get(7))?,
        status: r.get::<_, i64>(8) as u16,
        at: r.get(9),
    })
}

#[async_trait::async_trait]
impl AuditStore for PostgresStore {
    async fn record_audit(&self, e: AuditEntry) -> StoreResult<AuditEntry> {
        self.write(move |c| {
            let row = c.query_one(
                "INSERT INTO audit_log (account_id, actor, address, method, route, object_id,
                                        fields, status, at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
                &[
                    &e.account_id.as_ref().map(|a| a.as_str()),
                    &e.actor,
                    &e.address,
                    &e.method,
                    &e.route,
                    &e.object_id,
                    &serde_json::to_string(&e.fields).expect("names serialize"),
                    &i64::from(e.status),
                    &e.at,
                ],
            )?;
            Ok(AuditEntry {
                id: row.get(0),
                ..e
            })
        })
        .await
    }

    async fn list_audit(
        &self,
        account: AccountId,
        before: Option<i64>,
        limit: usize,
    ) -> StoreResult<Vec<AuditEntry>> {
        self.read(move |c| {
            c.query(
                &format!(
                    "SELECT {COLUMNS} FROM audit_log WHERE account_id = $1 AND id < $2
                     ORDER BY id DESC LIMIT $3"
                ),
                &[
                    &account.as_str(),
                    &before.unwrap_or(i64::MAX),
                    &(limit as i64),
                ],
            )?
            .iter()
            .map(entry_row)
            .collect()
        })
        .await
    }

    async fn prune_audit(&self, before: i64, limit: usize) -> StoreResult<usize> {
        self.write_aside(move |c| {
            Ok(c.execute(
                "DELETE FROM audit_log WHERE id IN
                   (SELECT id FROM audit_log WHERE at < $1 ORDER BY at LIMIT $2)",
                &[&before, &(limit as i64)],
            )? as usize)
        })
        .await
    }
}
