//! An account's endpoints: their rows and secrets, enabling and disabling (which holds and
//! releases their deliveries), and deletion, marked at once and purged in the background.

use merpati_domain::endpoint::{BodyFormat, DisableReason, Endpoint, EndpointStore, Ordering};
use merpati_domain::ids::{AccountId, EndpointId};
use merpati_domain::limits::check_cap;
use merpati_domain::{Page, StoreError, StoreResult};
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};

use crate::error::DbResult;
use crate::fanout::release_held;
use crate::rows::{id, json_column, json_list};
use crate::table::{owned, table_of};
use crate::SqliteStore;

const COLUMNS: &str = "id, url, description, events, business_ids, channel_ids, device_ids,
    format, secret_in_body, open_secret('endpoints.headers:' || id, headers), ordering, disabled,
    created_at, updated_at, disabled_reason, disabled_at, failing_since, max_concurrency, rate_limit, revision,
    breaker_until";

fn endpoint_row(r: &Row<'_>) -> rusqlite::Result<Endpoint> {
    let events: Option<String> = r.get(3)?;
    Ok(Endpoint {
        id: id(r, 0)?,
        url: r.get(1)?,
        description: r.get(2)?,
        events: events.as_deref().map(json_column).transpose()?,
        business_ids: json_column(&r.get::<_, String>(4)?)?,
        channel_ids: json_column(&r.get::<_, String>(5)?)?,
        device_ids: json_column(&r.get::<_, String>(6)?)?,
        format: BodyFormat::parse(&r.get::<_, String>(7)?).unwrap_or(BodyFormat::Json),
        secret_in_body: r.get(8)?,
        headers: json_column(&r.get::<_, String>(9)?)?,
        ordering: r
            .get::<_, Option<String>>(10)?
            .as_deref()
            .and_then(Ordering::parse),
        disabled: r.get(11)?,
        created_at: r.get(12)?,
        updated_at: r.get(13)?,
        disabled_reason: r
            .get::<_, Option<String>>(14)?
            .as_deref()
            .and_then(DisableReason::parse),
        disabled_at: r.get(15)?,
        failing_since: r.get(16)?,
        max_concurrency: r.get(17)?,
        rate_limit: r.get(18)?,
        revision: r.get(19)?,
        paused_until: r.get(20)?,
    })
}

/// Every scope id must be one of the account's own (the domain's rule).
fn check_scope(c: &Connection, account: &AccountId, e: &Endpoint) -> DbResult<()> {
    merpati_domain::endpoint::check_scope(e, |kind, id| {
        owned(c, table_of(kind), account.as_str(), id)
    })
}

/// ?1 … ?20 of both the INSERT and the UPDATE (which leaves created_at and the disabled
/// state alone: those change through their own calls).
fn endpoint_params(account: &AccountId, e: &Endpoint) -> Vec<SqlValue> {
    vec![
        account.to_string().into(),
        e.id.to_string().into(),
        e.url.clone().into(),
        e.description.clone().into(),
        e.events.as_deref().map(json_list).into(),
        json_list(&e.business_ids).into(),
        json_list(&e.channel_ids).into(),
        json_list(&e.device_ids).into(),
        e.format.as_str().to_owned().into(),
        e.secret_in_body.into(),
        serde_json::to_string(&e.headers)
            .expect("headers serialize")
            .into(),
        e.ordering.map(|o| o.as_str().to_owned()).into(),
        e.disabled.into(),
        e.created_at.into(),
        e.updated_at.into(),
        e.disabled_reason.map(|r| r.as_str().to_owned()).into(),
        e.disabled_at.into(),
        e.max_concurrency.into(),
        e.rate_limit.into(),
        e.revision.into(),
    ]
}

/// Holds an endpoint's pending deliveries. Through the index of every pending delivery:
/// the endpoint's own index would walk its whole history, delivered and all.
pub(crate) const HOLD_PENDING: &str = "UPDATE deliveries INDEXED BY deliveries_due
     SET status = 'held', next_attempt_at = NULL
     WHERE status = 'pending' AND endpoint_id = ?1";

/// The endpoint's pending deliveries in device queues leave their queues and go now (?2).
pub(crate) const UNQUEUE_PENDING: &str = "UPDATE deliveries
     SET order_key = NULL, next_attempt_at = COALESCE(next_attempt_at, ?2)
     WHERE endpoint_id = ?1 AND status = 'pending' AND order_key IS NOT NULL";

/// The endpoint's held deliveries in device queues leave their queues.
pub(crate) const UNQUEUE_HELD: &str = "UPDATE deliveries SET order_key = NULL
     WHERE endpoint_id = ?1 AND status = 'held' AND order_key IS NOT NULL";

/// Marks the endpoint disabled and holds its pending deliveries. Returns false when it
/// already was.
pub(crate) fn disable(
    c: &Connection,
    id: &EndpointId,
    reason: DisableReason,
    now: i64,
) -> DbResult<bool> {
    let changed = c.execute(
        "UPDATE endpoints SET disabled = 1, disabled_at = ?2, disabled_reason = ?3
         WHERE id = ?1 AND disabled = 0",
        params![id.as_str(), now, reason.as_str()],
    )?;
    c.execute(HOLD_PENDING, [id.as_str()])?;
    Ok(changed > 0)
}

/// Whether the account has this endpoint (a deleted one it has no longer).
pub(crate) fn endpoint_owned(
    c: &Connection,
    account: &AccountId,
    id: &EndpointId,
) -> DbResult<bool> {
    Ok(c.prepare_cached(
        "SELECT 1 FROM endpoints WHERE account_id = ?1 AND id = ?2 AND deleted_at IS NULL",
    )?
    .exists(params![account.as_str(), id.as_str()])?)
}

/// NotFound unless the account has this endpoint.
pub(crate) fn require_endpoint(
    c: &Connection,
    account: &AccountId,
    id: &EndpointId,
) -> DbResult<()> {
    if endpoint_owned(c, account, id)? {
        Ok(())
    } else {
        Err(StoreError::NotFound("endpoint").into())
    }
}

/// A deleted endpoint still to purge.
pub(crate) const DELETED_ENDPOINT: &str =
    "SELECT id FROM endpoints WHERE deleted_at IS NOT NULL LIMIT 1";

/// Up to ?2 of an endpoint's deliveries, whichever their status.
pub(crate) const ENDPOINT_DELIVERIES: &str = "DELETE FROM deliveries WHERE id IN
     (SELECT id FROM deliveries WHERE endpoint_id = ?1 LIMIT ?2)";

/// One step of a background deletion: the first row `find` gives (one marked deleted), and
/// how many of what it owns `chunk` removed (up to `limit`); None when nothing is marked.
pub(crate) fn purge_step(
    c: &Connection,
    find: &str,
    chunk: &str,
    limit: usize,
) -> DbResult<Option<(String, usize)>> {
    let Some(id) = c
        .prepare_cached(find)?
        .query_row([], |r| r.get::<_, String>(0))
        .optional()?
    else {
        return Ok(None);
    };
    let removed = c
        .prepare_cached(chunk)?
        .execute(params![id, limit as i64])?;
    Ok(Some((id, removed)))
}

/// Removes up to `limit` deliveries of a deleted endpoint (their attempts go with them), or
/// the endpoint itself once it has none left. Returns how many rows it removed: 0 when no
/// deleted endpoint is left.
fn purge_deleted_endpoint(c: &Connection, limit: usize) -> DbResult<usize> {
    match purge_step(c, DELETED_ENDPOINT, ENDPOINT_DELIVERIES, limit)? {
        None => Ok(0),
        Some((_, deliveries)) if deliveries > 0 => Ok(deliveries),
        Some((id, _)) => Ok(c.execute("DELETE FROM endpoints WHERE id = ?1", [id])?),
    }
}

fn get_endpoint(c: &Connection, account: &AccountId, id: &EndpointId) -> DbResult<Endpoint> {
    Ok(c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM endpoints
         WHERE account_id = ?1 AND id = ?2 AND deleted_at IS NULL"
    ))?
    .query_row(params![account.as_str(), id.as_str()], endpoint_row)
    .optional()?
    .ok_or(StoreError::NotFound("endpoint"))?)
}

#[async_trait::async_trait]
impl EndpointStore for SqliteStore {
    async fn create_endpoint(
        &self,
        account: AccountId,
        e: Endpoint,
        secret: String,
        cap: u32,
    ) -> StoreResult<Endpoint> {
        self.write(move |c| {
            let count = crate::rows::count_of(c, "endpoints", &account)?;
            check_cap(count, cap, "endpoints")?;
            check_scope(c, &account, &e)?;
            c.execute(
                "INSERT INTO endpoints (account_id, id, url, description, events, business_ids,
                     channel_ids, device_ids, format, secret_in_body, headers, ordering, disabled,
                     created_at, updated_at, disabled_reason, disabled_at, max_concurrency,
                     rate_limit, revision, slot)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10,
                         seal_secret('endpoints.headers:' || ?2, ?11), ?12, ?13, ?14, ?15, ?16,
                         ?17, ?18, ?19, ?20, merpati_slot(?2))",
                params_from_iter(endpoint_params(&account, &e)),
            )?;
            c.execute(
                "INSERT INTO endpoint_secrets (endpoint_id, secret, created_at)
                 VALUES (?1, seal_secret('endpoint_secrets.secret:' || ?1, ?2), ?3)",
                params![e.id.as_str(), secret, e.created_at],
            )?;
            Ok(e)
        })
        .await
    }

    async fn list_endpoints(&self, account: AccountId, page: Page) -> StoreResult<Vec<Endpoint>> {
        self.read(move |c| {
            let mut s = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM endpoints
                 WHERE account_id = ?1 AND id > ?2 AND deleted_at IS NULL
                 ORDER BY id LIMIT ?3"
            ))?;
            let rows = s.query_map(
                params![
                    account.as_str(),
                    page.after.unwrap_or_default(),
                    page.limit as i64
                ],
                endpoint_row,
            )?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn get_endpoint(&self, account: AccountId, id: EndpointId) -> StoreResult<Endpoint> {
        self.read(move |c| get_endpoint(c, &account, &id)).await
    }

    async fn update_endpoint(&self, account: AccountId, e: Endpoint) -> StoreResult<Endpoint> {
        self.write(move |c| {
            require_endpoint(c, &account, &e.id)?;
            check_scope(c, &account, &e)?;
            let n = c.execute(
                "UPDATE endpoints SET url = ?3, description = ?4, events = ?5, business_ids = ?6,
                     channel_ids = ?7, device_ids = ?8, format = ?9, secret_in_body = ?10,
                     headers = seal_secret('endpoints.headers:' || id, ?11), ordering = ?12, updated_at = ?15, max_concurrency = ?18,
                     rate_limit = ?19, revision = revision + 1
                 WHERE account_id = ?1 AND id = ?2 AND deleted_at IS NULL AND revision = ?20",
                params_from_iter(endpoint_params(&account, &e)),
            )?;
            if n == 0 {
                return Err(StoreError::Stale("endpoint").into());
            }
            if e.ordering.is_none() {
                // Ordering switched off: the deliveries waiting in device queues go now.
                c.prepare_cached(UNQUEUE_PENDING)?
                    .execute(params![e.id.as_str(), e.updated_at])?;
                c.prepare_cached(UNQUEUE_HELD)?.execute([e.id.as_str()])?;
            }
            get_endpoint(c, &account, &e.id)
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
            require_endpoint(c, &account, &id)?;
            if enabled {
                c.execute(
                    "UPDATE endpoints SET disabled = 0, disabled_at = NULL, disabled_reason = NULL,
                            failing_since = NULL, revision = revision + 1
                     WHERE id = ?1",
                    [id.as_str()],
                )?;
                release_held(c, &id, now)
            } else {
                if disable(c, &id, DisableReason::Manual, now)? {
                    c.execute(
                        "UPDATE endpoints SET revision = revision + 1 WHERE id = ?1",
                        [id.as_str()],
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
                "UPDATE endpoints SET deleted_at = ?3, disabled = 1
                 WHERE account_id = ?1 AND id = ?2 AND deleted_at IS NULL",
                params![account.as_str(), id.as_str(), now],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound("endpoint").into());
            }
            Ok(())
        })
        .await
    }

    async fn purge_deleted_endpoint(&self, limit: usize) -> StoreResult<usize> {
        self.write(move |c| purge_deleted_endpoint(c, limit)).await
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
            require_endpoint(c, &account, &id)?;
            c.execute(
                "DELETE FROM endpoint_secrets WHERE endpoint_id = ?1 AND expires_at <= ?2",
                params![id.as_str(), now],
            )?;
            c.execute(
                "UPDATE endpoint_secrets SET expires_at = MIN(COALESCE(expires_at, ?2), ?2)
                 WHERE endpoint_id = ?1",
                params![id.as_str(), old_expires_at],
            )?;
            c.execute(
                "INSERT INTO endpoint_secrets (endpoint_id, secret, created_at)
                 VALUES (?1, seal_secret('endpoint_secrets.secret:' || ?1, ?2), ?3)",
                params![id.as_str(), new_secret, now],
            )?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_whole, column, count, insert_endpoint, schema_with_account};

    /// Two endpoints of account `a` with `n` delivered events each, an attempt per delivery.
    fn two_endpoints_with_deliveries(n: i64) -> Connection {
        let c = schema_with_account();
        for ep in ["gone", "kept"] {
            insert_endpoint(&c, "a", ep);
        }
        for seq in 1..=n {
            c.execute(
                "INSERT INTO events (seq, id, account_id, type, payload, created_at)
                 VALUES (?1, 'evt_' || ?1, 'a', 'sms', '{}', 0)",
                [seq],
            )
            .unwrap();
            for ep in ["gone", "kept"] {
                c.execute(
                    "INSERT INTO deliveries (event_seq, endpoint_id, status, created_at)
                     VALUES (?1, ?2, 'succeeded', 0)",
                    params![seq, ep],
                )
                .unwrap();
                c.execute(
                    "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms)
                     VALUES (?1, 1, 0, 1)",
                    [c.last_insert_rowid()],
                )
                .unwrap();
            }
        }
        c
    }

    #[test]
    fn a_deleted_endpoint_goes_a_chunk_at_a_time_and_the_others_stay_whole() {
        let c = two_endpoints_with_deliveries(5);
        assert_eq!(purge_deleted_endpoint(&c, 2).unwrap(), 0, "nothing deleted");
        c.execute(
            "UPDATE endpoints SET deleted_at = 1, disabled = 1 WHERE id = 'gone'",
            [],
        )
        .unwrap();
        assert!(!endpoint_owned(&c, &"a".into(), &"gone".into()).unwrap());
        assert!(endpoint_owned(&c, &"a".into(), &"kept".into()).unwrap());

        let chunks: Vec<usize> =
            std::iter::from_fn(|| Some(purge_deleted_endpoint(&c, 2).unwrap()).filter(|n| *n > 0))
                .collect();
        assert_eq!(
            chunks,
            [2, 2, 1, 1],
            "its deliveries two at a time, then itself"
        );
        let endpoints: Vec<String> = column(&c, "SELECT id FROM endpoints");
        assert_eq!(endpoints, ["kept"]);
        assert_eq!(count(&c, "SELECT COUNT(*) FROM deliveries"), 5);
        assert_eq!(
            count(
                &c,
                "SELECT COUNT(*) FROM deliveries WHERE endpoint_id = 'kept'"
            ),
            5
        );
        assert_eq!(
            count(&c, "SELECT COUNT(*) FROM attempts"),
            5,
            "theirs went too"
        );
        assert_eq!(count(&c, "SELECT COUNT(*) FROM endpoint_secrets"), 1);
        assert_eq!(count(&c, "SELECT COUNT(*) FROM events"), 5, "events stay");
        assert_whole(&c);
    }
}
