use rusqlite::{params, Connection};

use merpati_webhooks::{EndpointEvent, EndpointEventKind, EndpointRef, Event};

use super::endpoint_cache;
use super::endpoint_cache::subscriptions;
use super::endpoints::disable;
use super::fanout::{advance_queue, fan_out, insert_event, NewEvent};
use super::SqliteStore;
use crate::delivery::retry::NextStep;
use crate::delivery::{AttemptRecord, DeliveryStore, DueDelivery};
use crate::endpoints::Scope;
use crate::store::StoreResult;

/// Endpoints known, within one batch of records, to have no failing streak: their next
/// success need not look.
type Healthy = std::collections::HashSet<String>;

/// The endpoint's failing streak after this attempt, and disabling when it has gone on too
/// long or the endpoint answered 410 Gone. Returns how many deliveries became due.
fn endpoint_health(
    c: &Connection,
    a: &AttemptRecord,
    endpoint: &str,
    now: i64,
    disable_after_ms: i64,
    healthy: &mut Healthy,
) -> StoreResult<usize> {
    if a.next == NextStep::Succeeded {
        if !healthy.contains(endpoint) {
            c.prepare_cached(
                "UPDATE endpoints SET failing_since = NULL
                 WHERE id = ?1 AND failing_since IS NOT NULL",
            )?
            .execute([endpoint])?;
            healthy.insert(endpoint.to_owned());
        }
        return Ok(0);
    }
    healthy.remove(endpoint);
    let (account, url, failing_since): (String, String, i64) = c
        .prepare_cached(
            "UPDATE endpoints SET failing_since = COALESCE(failing_since, ?2) WHERE id = ?1
             RETURNING account_id, url, failing_since",
        )?
        .query_row(params![endpoint, a.started_at], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    let reason = if a.status_code == Some(410) {
        "gone"
    } else if now - failing_since >= disable_after_ms {
        "failing"
    } else {
        return Ok(0);
    };
    if !disable(c, endpoint, reason, now)? {
        return Ok(0);
    }
    tracing::warn!(endpoint = %endpoint, reason, "endpoint disabled");
    // Tell the account's other endpoints that subscribe to it.
    let event = Event::Endpoint(EndpointEvent {
        event: EndpointEventKind::Disabled,
        timestamp: now.div_euclid(1000),
        endpoint: EndpointRef {
            id: endpoint.to_owned(),
            url,
        },
        reason: reason.to_string(),
        failing_since: Some(failing_since.div_euclid(1000)),
    });
    let event_id = crate::ids::new_id("evt");
    let new = NewEvent {
        id: &event_id,
        account_id: &account,
        event_type: "endpoint.disabled",
        scope: Scope::default(),
        created_at: now,
        inbound: None,
    };
    let body = String::from_utf8(event.to_json()).expect("JSON is UTF-8");
    let (seq, _) = insert_event(c, &new, |_| body)?;
    let others: Vec<_> = subscriptions(c, &account)?
        .iter()
        .filter(|s| s.endpoint_id != endpoint)
        .cloned()
        .collect();
    fan_out(
        c,
        &others,
        seq,
        "endpoint.disabled",
        Scope::default(),
        now,
        None,
    )
}

/// Brings forward (to ?2) up to ?3 of the deliveries an endpoint's lane parked, earliest first.
pub(super) const UNPARK: &str = "UPDATE deliveries SET next_attempt_at = ?2
     WHERE id IN (SELECT id FROM deliveries
                  WHERE endpoint_id = ?1 AND status = 'pending' AND parked = 1
                    AND next_attempt_at > ?2
                  ORDER BY next_attempt_at LIMIT ?3)";

/// Records one attempt, the delivery's next step and the endpoint's health. Returns how
/// many deliveries that made due.
fn record_attempt(
    c: &Connection,
    a: &AttemptRecord,
    disable_after_ms: i64,
    healthy: &mut Healthy,
) -> StoreResult<usize> {
    let finished = a.started_at + a.duration_ms;
    let (status, next_at, completed_at) = match a.next {
        NextStep::Succeeded => ("succeeded", None, Some(finished)),
        NextStep::Failed => ("failed", None, Some(finished)),
        NextStep::RetryAt(at) => ("pending", Some(at), None),
    };
    let updated = c
        .prepare_cached(
            "UPDATE deliveries SET status = ?2, attempts = ?3, next_attempt_at = ?4,
                completed_at = ?5, claimed_at = NULL
         WHERE id = ?1",
        )?
        .execute(params![
            a.delivery_id,
            status,
            a.attempt,
            next_at,
            completed_at
        ])?;
    // Deleted while under way, with its endpoint or by retention: nothing left to record.
    if updated == 0 {
        return Ok(0);
    }
    c.prepare_cached(
        "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status_code,
                               error_kind, error, response_body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        a.delivery_id,
        a.attempt,
        a.started_at,
        a.duration_ms,
        a.status_code,
        a.error_kind,
        a.error,
        a.response_body
    ])?;
    // A final outcome lets the next delivery of its device queue go. Only a delivery to an
    // ordered endpoint can be in one (switching ordering off takes every delivery out of
    // its queue), so the others need not look. A plain lookup rather than UPDATE …
    // RETURNING, which gathers its rows in a temporary table first.
    let endpoint = a.endpoint.id.as_str();
    let mut due = 0;
    if a.endpoint.ordered && completed_at.is_some() {
        let order_key: Option<String> = c
            .prepare_cached("SELECT order_key FROM deliveries WHERE id = ?1")?
            .query_row([a.delivery_id], |r| r.get(0))?;
        if let Some(key) = order_key {
            due += advance_queue(c, endpoint, &key, finished)?;
        }
    }
    due += endpoint_health(c, a, endpoint, finished, disable_after_ms, healthy)?;
    Ok(due)
}

#[async_trait::async_trait]
impl DeliveryStore for SqliteStore {
    async fn claim_due(
        &self,
        now: i64,
        limit: usize,
        lease_until: i64,
    ) -> StoreResult<Vec<DueDelivery>> {
        self.write_checked(move |c| {
            let mut rows = c.prepare_cached(
                "SELECT d.id, d.attempts, e.id, e.payload, d.endpoint_id, ep.disabled
                 FROM deliveries d
                 JOIN events e ON e.seq = d.event_seq
                 JOIN endpoints ep ON ep.id = d.endpoint_id
                 WHERE d.status = 'pending' AND d.next_attempt_at <= ?1
                 ORDER BY d.next_attempt_at
                 LIMIT ?2",
            )?;
            let mut claim = c.prepare_cached(
                "UPDATE deliveries SET claimed_at = ?2, next_attempt_at = ?3, parked = 0
                 WHERE id = ?1",
            )?;
            let mut hold = c.prepare_cached(
                "UPDATE deliveries SET status = 'held', next_attempt_at = NULL WHERE id = ?1",
            )?;
            let mut due = Vec::new();
            let found = rows.query_map(params![now, limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, bool>(5)?,
                ))
            })?;
            for row in found {
                let (id, attempts, event_id, payload, endpoint_id, disabled) = row?;
                if disabled {
                    // Disabled since it was queued: kept, to be released on re-enable.
                    hold.execute([id])?;
                    continue;
                }
                claim.execute(params![id, now, lease_until])?;
                due.push(DueDelivery {
                    delivery_id: id,
                    attempt: attempts + 1,
                    event_id,
                    payload: payload.into(),
                    endpoint: endpoint_cache::target(c, &endpoint_id, now)?,
                });
            }
            Ok(due)
        })
        .await
    }

    async fn next_due_at(&self) -> StoreResult<Option<i64>> {
        self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT MIN(next_attempt_at) FROM deliveries WHERE status = 'pending'",
            )?
            .query_row([], |r| r.get(0))?)
        })
        .await
    }

    async fn record_attempts(
        &self,
        records: std::sync::Arc<Vec<AttemptRecord>>,
        disable_after_ms: i64,
    ) -> StoreResult<usize> {
        self.write_checked(move |c| {
            let mut due = 0;
            let mut healthy = Healthy::new();
            for a in records.iter() {
                due += record_attempt(c, a, disable_after_ms, &mut healthy)?;
            }
            Ok(due)
        })
        .await
    }

    async fn park(&self, parked: Vec<(i64, i64)>) -> StoreResult<()> {
        self.write_checked(move |c| {
            let mut park = c.prepare_cached(
                "UPDATE deliveries SET next_attempt_at = ?2, claimed_at = NULL, parked = 1
                 WHERE id = ?1 AND status = 'pending'",
            )?;
            for (id, at) in parked {
                park.execute(params![id, at])?;
            }
            Ok(())
        })
        .await
    }

    async fn unpark(&self, endpoint_id: String, now: i64, limit: usize) -> StoreResult<usize> {
        self.write_checked(move |c| {
            Ok(c.prepare_cached(UNPARK)?
                .execute(params![endpoint_id, now, limit as i64])?)
        })
        .await
    }

    async fn release_claims(&self, now: i64) -> StoreResult<usize> {
        // One SQLite file has one node, so every claim still standing was this node's.
        self.write(move |c| {
            Ok(c.execute(
                "UPDATE deliveries SET claimed_at = NULL, next_attempt_at = MIN(next_attempt_at, ?1)
                 WHERE status = 'pending' AND claimed_at IS NOT NULL",
                [now],
            )? + c.execute(
                // The lanes that would have taken their parked deliveries back are gone.
                "UPDATE deliveries SET parked = 0, next_attempt_at = MIN(next_attempt_at, ?1)
                 WHERE status = 'pending' AND parked = 1",
                [now],
            )?)
        })
        .await
    }
}
