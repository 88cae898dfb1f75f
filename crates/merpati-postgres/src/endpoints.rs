//! An account's endpoints: their rows and secrets, enabling and disabling (which holds and
//! releases their deliveries), and deletion, marked at once and purged in the background.

use merpati_domain::endpoint::{BodyFormat, DisableReason, Endpoint, EndpointStore, Ordering};
use merpati_domain::ids::{AccountId, EndpointId};
use merpati_domain::limits::check_cap;
use merpati_domain::slots::slot_of;
use merpati_domain::{Page, StoreError, StoreResult};
use postgres::Row;

use crate::conn::Conn;
use crate::error::DbResult;
use crate::fanout::release_held;
use crate::rows::{json_column, json_list};
use crate::table::{owned, table_of};
use crate::writer::Tx;
use crate::PostgresStore;

const COLUMNS: &str = "id, url, description, events, business_ids, channel_ids, device_ids,
    format, secret_in_body, headers, ordering, disabled, created_at, updated_at,
    disabled_reason, disabled_at, failing_since, max_concurrency, rate_limit, revision,
    breaker_until";

pub(crate) fn headers_context(id: &str) -> String {
    format!("endpoints.headers:{id}")
}

pub(crate) fn secret_context(id: &str) -> String {
    format!("endpoint_secrets.secret:{id}")
}

fn endpoint_row(c: &Conn, r: &Row) -> DbResult<Endpoint> {
    let id: String = r.get(0);
    let events: Option<&str> = r.get(3);
    let headers = c.open(&headers_context(&id), r.get(9))?;
    Ok(Endpoint {
        id: EndpointId::from(id),
        url: r.get(1),
        description: r.get(2),
        events: events.map(json_column).transpose()?,
        business_ids: json_column(r.get(4))?,
        channel_ids: json_column(r.get(5))?,
        device_ids: json_column(r.get(6))?,
        format: BodyFormat::parse(r.get(7)).unwrap_or(BodyFormat::Json),
        secret_in_body: r.get(8),
        headers: json_column(&headers)?,
        ordering: r.get::<_, Option<&str>>(10).and_then(Ordering::parse),
        disabled: r.get(11),
        created_at: r.get(12),
        updated_at: r.get(13),
        disabled_reason: r.get::<_, Option<&str>>(14).and_then(DisableReason::parse),
        disabled_at: r.get(15),
        failing_since: r.get(16),
        max_concurrency: r.get::<_, Option<i64>>(17).map(|n| n as u32),
        rate_limit: r.get::<_, Option<i64>>(18).map(|n| n as u32),
        revision: r.get(19),
        paused_until: r.get(20),
    })
}

/// Every scope id must be one of the account's own (the domain's rule).
fn check_scope(c: &mut Conn, account: &AccountId, e: &Endpoint) -> DbResult<()> {
    merpati_domain::endpoint::check_scope(e, |kind, id| {
        owned(c, table_of(kind), account.as_str(), id)
    })
}

/// Holds an endpoint's pending deliveries.
pub(crate) const HOLD_PENDING: &str = "UPDATE deliveries
     SET status = 'held', next_attempt_at = NULL
     WHERE status = 'pending' AND endpoint_id = $1";

/// The endpoint's pending deliveries in device queues leave their queues and go now ($2).
pub(crate) const UNQUEUE_PENDING: &str = "UPDATE deliveries
     SET order_key = NULL, next_attempt_at = COALESCE(next_attempt_at, $2)
     WHERE endpoint_id = $1 AND status = 'pending' AND order_key IS NOT NULL";

/// The endpoint's held deliveries in device queues leave their queues.
pub(crate) const UNQUEUE_HELD: &str = "UPDATE deliveries SET order_key = NULL
     WHERE endpoint_id = $1 AND status = 'held' AND order_key IS NOT NULL";

/// Marks the endpoint disabled and holds its pending deliveries. Returns false when it
/// already was.
pub(crate) fn disable(
    c: &mut Tx<'_>,
    id: &EndpointId,
    reason: DisableReason,
    now: i64,
) -> DbResult<bool> {
    let changed = c.execute(
        "UPDATE endpoints SET disabled = TRUE, disabled_at = $2, disabled_reason = $3
         WHERE id = $1 AND NOT disabled",
        &[&id.as_str(), &now, &reason.as_str()],
    )?;
    c.execute(HOLD_PENDING, &[&id.as_str()])?;
    Ok(changed > 0)
}

/// Whether the account has this endpoint (a deleted one it has no longer).
pub(crate) fn endpoint_owned(c: &mut Conn, account: &AccountId, id: &EndpointId) -> DbResult<bool> {
    Ok(c.query_opt(
        "SELECT 1 FROM endpoints WHERE account_id = $1 AND id = $2 AND deleted_at IS NULL",
        &[&account.as_str(), &id.as_str()],
    )?
    .is_some())
}

/// NotFound unless the account has this endpoint.
pub(crate) fn require_endpoint(c: &mut Conn, account: &AccountId, id: &EndpointId) -> DbResult<()> {
    if endpoint_owned(c, account, id)? {
        Ok(())
    } else {
        Err(StoreError::NotFound("endpoint").into())
    }
}

/// A deleted endpoint still to purge.
pub(crate) const DELETED_ENDPOINT: &str =
    "SELECT id FROM endpoints WHERE deleted_at IS NOT NULL LIMIT 1";

/// Up to $2 of an endpoint's deliveries, whichever their status, with their attempts.
pub(crate) const ENDPOINT_DELIVERIES: &str = "WITH gone AS (
         SELECT id FROM deliveries WHERE endpoint_id = $1 LIMIT $2
     ), attempts_gone AS (
         DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM gone)
     )
     DELETE FROM deliveries WHERE id IN (SELECT id FROM gone)";

/// One step of a background deletion: the first row `find` gives (one marked deleted), and
/// how many of what it owns `chunk` removed (up to `limit`); None when nothing is marked.
pub(crate) fn purge_step(
    c: &mut Tx<'_>,
    find: &str,
    chunk: &str,
    limit: usize,
) -> DbResult<Option<(String, usize)>> {
    let Some(row) = c.query_opt(find, &[])? else {
        return Ok(None);
    };
    let id: String = row.get(0);
    let removed = c.execute(chunk, &[&id, &(limit as i64)])?;
    Ok(Some((id, removed as usize)))
}

/// Removes up to `limit` deliveries of a deleted endpoint (their attempts go with them), or
/// the endpoint itself once it has none left. Returns how many rows it removed: 0 when no
/// deleted endpoint is left.
fn purge_deleted_endpoint(c: &mut Tx<'_>, limit: usize) -> DbResult<usize> {
    match purge_step(c, DELETED_ENDPOINT, ENDPOINT_DELIVERIES, limit)? {
        None => Ok(0),
        Some((_, deliveries)) if deliveries > 0 => Ok(deliveries),
        Some((id, _)) => Ok(c.execute("DELETE FROM endpoints WHERE id = $1", &[&id])? as usize),
    }
}

fn get_endpoint(c: &mut Conn, account: &AccountId, id: &EndpointId) -> DbResult<Endpoint> {
    let row = c
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM endpoints
                 WHERE account_id = $1 AND id = $2 AND deleted_at IS NULL"
            ),
            &[&account.as_str(), &id.as_str()],
        )?
        .ok_or(StoreError::NotFound("endpoint"))?;
    endpoint_row(c, &row)
}

fn headers_json(e: &Endpoint) -> String {
    serde_json::to_string(&e.headers).expect("headers serialize")
}

#[async_trait::async_trait]
impl EndpointStore for PostgresStore {
    async fn create_endpoint(
        &self,
        account: AccountId,
        e: Endpoint,
        secret: String,
        cap: u32,
    ) -> StoreResult<Endpoint> {
        self.write(move |c| {
            let count = crate::rows::count_of(c.conn(), "endpoints", &account)?;
            check_cap(count, cap, "endpoints")?;
            check_scope(c.conn(), &account, &e)?;
            let headers = c.seal(&headers_context(e.id.as_str()), &headers_json(&e));
            let sealed_secret = c.seal(&secret_context(e.id.as_str()), &secret);
            c.execute(
                "INSERT INTO endpoints (account_id, id, url, description, events, business_ids,
                     channel_ids, device_ids, format, secret_in_body, headers, ordering, disabled,
                     created_at, updated_at, disabled_reason, disabled_at, max_concurrency,
                     rate_limit, revision, slot)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                         $17, $18, $19, $20, $21)",
                &[
                    &account.as_str(),
                    &e.id.as_str(),
                    &e.url,
                    &e.description,
                    &e.events.as_deref().map(json_list),
                    &json_list(&e.business_ids),
                    &json_list(&e.channel_ids),
                    &json_list(&e.device_ids),
                    &e.format.as_str(),
                    &e.secret_in_body,
                    &headers,
                    &e.ordering.map(|o| o.as_str()),
                    &e.disabled,
                    &e.created_at,
                    &e.updated_at,
                    &e.disabled_reason.map(|r| r.as_str()),
                    &e.disabled_at,
                    &e.max_concurrency.map(i64::from),
                    &e.rate_limit.map(i64::from),
                    &e.revision,
                    &(slot_of(&e.id) as i16),
                ],
            )?;
            c.execute(
                "INSERT INTO endpoint_secrets (endpoint_id, secret, created_at)
                 VALUES ($1, $2, $3)",
                &[&e.id.as_str(), &sealed_secret, &e.created_at],
            )?;
            Ok(e)
        })
        .await
    }

    async fn list_endpoints(&self, account: AccountId, page: Page) -> StoreResult<Vec<Endpoint>> {
        self.read(move |c| {
            let rows = c.query(
                &format!(
                    "SELECT {COLUMNS} FROM endpoints
                     WHERE account_id = $1 AND id > $2 AND deleted_at IS NULL
                     ORDER BY id LIMIT $3"
                ),
                &[
                    &account.as_str(),
                    &page.after.unwrap_or_default(),
                    &(page.limit as i64),
                ],
            )?;
            rows.iter().map(|r| endpoint_row(c, r)).collect()
        })
        .await
    }

    async fn get_endpoint(&self, account: AccountId, id: EndpointId) -> StoreResult<Endpoint> {
        self.read(move |c| get_endpoint(c, &account, &id)).await
    }

    async fn update_endpoint(&self, account: AccountId, e: Endpoint) -> StoreResult<Endpoint> {
        self.write(move |c| {
            require_endpoint(c.conn(), &account, &e.id)?;
            check_scope(c.conn(), &account, &e)?;
            let headers = c.seal(&headers_context(e.id.as_str()), &headers_json(&e));
            let n = c.execute(
                "UPDATE endpoints SET url = $3, description = $4, events = $5, business_ids = $6,
                     channel_ids = $7, device_ids = $8, format = $9, secret_in_body = $10,
                     headers = $11, ordering = $12, updated_at = $13, max_concurrency = $14,
                     rate_limit = $15, revision = revision + 1
                 WHERE account_id = $1 AND id = $2 AND deleted_at IS NULL AND revision = $16",
                &[
                    &account.as_str(),
                    &e.id.as_str(),
                    &e.url,
                    &e.description,
                    &e.events.as_deref().map(json_list),
                    &json_list(&e.business_ids),
                    &json_list(&e.channel_ids),
                    &json_list(&e.device_ids),
                    &e.format.as_str(),
                    &e.secret_in_body,
                    &headers,
                    &e.ordering.map(|o| o.as_str()),
                    &e.updated_at,
                    &e.max_concurrency.map(i64::from),
                    &e.rate_limit.map(i64::from),
                    &e.revision,
                ],
            )?;
            if n == 0 {
                return Err(StoreError::Stale("endpoint").into());
            }
            if e.ordering.is_none() {
                // Ordering switched off: the deliveries waiting in device queues go now.
                c.execute(UNQUEUE_PENDING, &[&e.id.as_str(), &e.updated_at])?;
                c.execute(UNQUEUE_HELD, &[&e.id.as_str()])?;
            }
            get_endpoint(c.conn(), &account, &e.id)
        })
        .await
    }

    async fn set_endpoint_enabled(
        &self,
        account: AccountId,
        id: EndpointId,
        enabled: bool,
        now: i64,
    ) -> StoreResult<usize> {
        self.write(move |c| {
            require_endpoint(c.conn(), &account, &id)?;
            if enabled {
                c.execute(
                    "UPDATE endpoints SET disabled = FALSE, disabled_at = NULL,
                            disabled_reason = NULL, failing_since = NULL, revision = revision + 1
                     WHERE id = $1",
                    &[&id.as_str()],
                )?;
                release_held(c, &id, now)
            } else {
                if disable(c, &id, DisableReason::Manual, now)? {
                    c.execute(
                        "UPDATE endpoints SET revision = revision + 1 WHERE id = $1",
                        &[&id.as_str()],
                    )?;
                }
                Ok(0)
            }
        })
        .await
    }

    async fn delete_endpoint(
        &self,
        account: AccountId,
        id: EndpointId,
        now: i64,
    ) -> StoreResult<()> {
        self.write(move |c| {
            // Gone from every view and from fan-out at once; disabled, so that a delivery of
            // it that comes due is held rather than sent. The rows go in the background.
            let n = c.execute(
                "UPDATE endpoints SET deleted_at = $3, disabled = TRUE
                 WHERE account_id = $1 AND id = $2 AND deleted_at IS NULL",
                &[&account.as_str(), &id.as_str(), &now],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound("endpoint").into());
            }
            Ok(())
        })
        .await
    }

    async fn purge_deleted_endpoint(&self, limit: usize) -> StoreResult<usize> {
        self.write_aside(move |c| purge_deleted_endpoint(c, limit))
            .await
    }

    async fn rotate_endpoint_secret(
        &self,
        account: AccountId,
        id: EndpointId,
        new_secret: String,
        old_expires_at: i64,
        now: i64,
    ) -> StoreResult<()> {
        self.write(move |c| {
            require_endpoint(c.conn(), &account, &id)?;
            c.execute(
                "DELETE FROM endpoint_secrets WHERE endpoint_id = $1 AND expires_at <= $2",
                &[&id.as_str(), &now],
            )?;
            c.execute(
                "UPDATE endpoint_secrets SET expires_at = LEAST(COALESCE(expires_at, $2), $2)
                 WHERE endpoint_id = $1",
                &[&id.as_str(), &old_expires_at],
            )?;
            let sealed = c.seal(&secret_context(id.as_str()), &new_secret);
            c.execute(
                "INSERT INTO endpoint_secrets (endpoint_id, secret, created_at)
                 VALUES ($1, $2, $3)",
                &[&id.as_str(), &sealed, &now],
            )?;
            Ok(())
        })
        .await
    }
}
