//! The audit trail as stored.

use merpati_domain::audit::{AuditEntry, AuditStore};
use merpati_domain::ids::AccountId;
use merpati_domain::StoreResult;
use rusqlite::{params, Row};

use crate::rows::json_column;
use crate::SqliteStore;

const COLUMNS: &str =
    "id, account_id, actor, address, method, route, object_id, fields, status, at";

fn entry_row(r: &Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        id: r.get(0)?,
        account_id: r.get::<_, Option<String>>(1)?.map(AccountId::from),
        actor: r.get(2)?,
        address: r.get(3)?,
        method: r.get(4)?,
        route: r.get(5)?,
        object_id: r.get(6)?,
        fields: json_column(&r.get::<_, String>(7)?)?,
        status: r.get(8)?,
        at: r.get(9)?,
    })
}

#[async_trait::async_trait]
impl AuditStore for SqliteStore {
    async fn record_audit(&self, e: AuditEntry) -> StoreResult<AuditEntry> {
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO audit_log (account_id, actor, address, method, route, object_id,
                                        fields, status, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                e.account_id.as_ref().map(|a| a.as_str()),
                e.actor,
                e.address,
                e.method,
                e.route,
                e.object_id,
                serde_json::to_string(&e.fields).expect("names serialize"),
                e.status,
                e.at
            ])?;
            Ok(AuditEntry {
                id: c.last_insert_rowid(),
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
            let mut s = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM audit_log WHERE account_id = ?1 AND id < ?2
                 ORDER BY id DESC LIMIT ?3"
            ))?;
            let rows = s.query_map(
                params![account.as_str(), before.unwrap_or(i64::MAX), limit as i64],
                entry_row,
            )?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn prune_audit(&self, before: i64, limit: usize) -> StoreResult<usize> {
        self.write(move |c| {
            Ok(c.prepare_cached(
                "DELETE FROM audit_log WHERE id IN
                   (SELECT id FROM audit_log WHERE at < ?1 ORDER BY at LIMIT ?2)",
            )?
            .execute(params![before, limit as i64])?)
        })
        .await
    }
}
