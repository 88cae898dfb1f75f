//! Claiming due deliveries, recording attempts with each delivery's outcome and its
//! endpoint's health, parking and taking back. The outcome, the health verdict and the
//! notice of a disabled endpoint are the domain's rules; this runs their statements.

use std::collections::HashMap;
use std::sync::Arc;

use merpati_domain::delivery::{
    disable_reason, disabled_notice, moves_queue_on, notice_recipients, outcome, AttemptRecord,
    DeliveryStore, Disabled, DueDelivery, Recorded,
};
use merpati_domain::device::Scope;
use merpati_domain::endpoint::{StoredBreaker, Target};
use merpati_domain::ids::{AccountId, DeliveryId, EndpointId, EventId};
use merpati_domain::retry::NextStep;
use merpati_domain::slots::{slot_of, Fence, SLOTS};
use merpati_domain::StoreResult;
use rusqlite::{params, OptionalExtension};

use crate::endpoint_cache::load_target;
use crate::endpoints::disable;
use crate::error::DbResult;
use crate::fanout::{advance_queue, fan_out, insert_event, NewEvent};
use crate::rows::id;
use crate::slots;
use crate::writer::Tx;
use crate::SqliteStore;

/// Endpoints known, within one batch of records, to have no failing streak: their next
/// success need not look.
type Healthy = std::collections::HashSet<EndpointId>;

/// The endpoint's failing streak after this attempt, and disabling when the health rule
/// says so. Returns how many deliveries became due, and the endpoint if it was disabled.
fn endpoint_health(
    tx: &mut Tx<'_>,
    a: &AttemptRecord,
    now: i64,
    disable_after_ms: i64,
    healthy: &mut Healthy,
) -> DbResult<(usize, Option<Disabled>)> {
    let endpoint = &a.endpoint.id;
    if a.next == NextStep::Succeeded {
        if !healthy.contains(endpoint) {
            tx.prepare_cached(
                "UPDATE endpoints SET failing_since = NULL
                 WHERE id = ?1 AND failing_since IS NOT NULL",
            )?
            .execute([endpoint.as_str()])?;
            healthy.insert(endpoint.clone());
        }
        return Ok((0, None));
    }
    healthy.remove(endpoint);
    let (account, url, failing_since): (AccountId, String, i64) = tx
        .prepare_cached(
            "UPDATE endpoints SET failing_since = COALESCE(failing_since, ?2) WHERE id = ?1
             RETURNING account_id, url, failing_since",
        )?
        .query_row(params![endpoint.as_str(), a.started_at], |r| {
            Ok((id(r, 0)?, r.get(1)?, r.get(2)?))
        })?;
    let Some(reason) = disable_reason(a.status_code, failing_since, now, disable_after_ms) else {
        return Ok((0, None));
    };
    if !disable(tx, endpoint, reason, now)? {
        return Ok((0, None));
    }
    tracing::warn!(endpoint = %endpoint, reason = reason.as_str(), "endpoint disabled");
    let notice = disabled_notice(endpoint, &url, reason, failing_since, now);
    let event_id = EventId::generate();
    let new = NewEvent {
        id: &event_id,
        account_id: &account,
        event_type: notice.event_type(),
        scope: Scope::default(),
        created_at: now,
        inbound: None,
    };
    let body = String::from_utf8(notice.to_json()).expect("JSON is UTF-8");
    let (seq, _) = insert_event(tx, &new, |_| body)?;
    let told = notice_recipients(&tx.subscriptions(&account)?, endpoint);
    let due = fan_out(
        tx,
        &told,
        seq,
        notice.event_type(),
        Scope::default(),
        now,
        None,
    )?;
    let disabled = Disabled {
        account_id: account,
        endpoint_id: endpoint.clone(),
        reason,
        notice: event_id,
    };
    Ok((due, Some(disabled)))
}

/// Brings forward (to ?2) up to ?3 of the deliveries an endpoint's lane parked, earliest first.
pub(crate) const UNPARK: &str = "UPDATE deliveries SET next_attempt_at = ?2
     WHERE id IN (SELECT id FROM deliveries
                  WHERE endpoint_id = ?1 AND status = 'pending' AND parked = 1
                    AND next_attempt_at > ?2
                  ORDER BY next_attempt_at LIMIT ?3)";

/// Records one attempt, the delivery's outcome and the endpoint's health.
fn record_attempt(
    tx: &mut Tx<'_>,
    a: &AttemptRecord,
    disable_after_ms: i64,
    healthy: &mut Healthy,
    recorded: &mut Recorded,
) -> DbResult<()> {
    let finished = a.started_at + a.duration_ms;
    let after = outcome(a.next, finished);
    let updated = tx
        .prepare_cached(
            "UPDATE deliveries SET status = ?2, attempts = ?3, next_attempt_at = ?4,
                completed_at = ?5, claimed_at = NULL
         WHERE id = ?1 AND attempts < ?3",
        )?
        .execute(params![
            a.delivery_id.0,
            after.status.as_str(),
            a.attempt,
            after.next_attempt_at,
            after.completed_at
        ])?;
    // Deleted while under way, with its endpoint or by retention, or recorded before:
    // nothing left to record.
    if updated == 0 {
        recorded.fenced_out += 1;
        return Ok(());
    }
    tx.prepare_cached(
        "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status_code,
                               error_kind, error, response_body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        a.delivery_id.0,
        a.attempt,
        a.started_at,
        a.duration_ms,
        a.status_code,
        a.error_kind,
        a.error,
        a.response_body
    ])?;
    // A plain lookup of the queue rather than UPDATE … RETURNING, which gathers its rows in
    // a temporary table first.
    if moves_queue_on(a.endpoint.ordered, &after) {
        let order_key: Option<String> = tx
            .prepare_cached("SELECT order_key FROM deliveries WHERE id = ?1")?
            .query_row([a.delivery_id.0], |r| r.get(0))?;
        if let Some(key) = order_key {
            recorded.made_due += advance_queue(tx, &a.endpoint.id, &key, finished)?;
        }
    }
    let (due, disabled) = endpoint_health(tx, a, finished, disable_after_ms, healthy)?;
    recorded.made_due += due;
    recorded.disabled.extend(disabled);
    Ok(())
}

/// The endpoint's target, loaded once for the deliveries of one read.
fn target_of(
    c: &rusqlite::Connection,
    targets: &mut HashMap<EndpointId, Arc<Target>>,
    endpoint: EndpointId,
    now: i64,
) -> DbResult<Arc<Target>> {
    if let Some(target) = targets.get(&endpoint) {
        return Ok(target.clone());
    }
    let target = Arc::new(load_target(c, &endpoint, now)?.0);
    targets.insert(endpoint, target.clone());
    Ok(target)
}

#[async_trait::async_trait]
impl DeliveryStore for SqliteStore {
    async fn claim_due(
        &self,
        fence: Arc<Fence>,
        now: i64,
        limit: usize,
        lease_until: i64,
    ) -> StoreResult<Vec<DueDelivery>> {
        self.write_checked(move |tx| {
            let c = tx.conn();
            let held = slots::held(c, &fence)?;
            if !held.contains(&true) {
                return Ok(Vec::new());
            }
            let mut rows = c.prepare_cached(
                "SELECT d.id, d.attempts, e.id, e.payload, d.endpoint_id, ep.disabled
                 FROM deliveries d
                 JOIN events e ON e.seq = d.event_seq
                 JOIN endpoints ep ON ep.id = d.endpoint_id
                 WHERE d.status = 'pending' AND d.next_attempt_at <= ?1
                   AND (?3 IS NULL OR ep.slot IN (SELECT value FROM json_each(?3)))
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
            let found =
                rows.query_map(params![now, limit as i64, slots::held_list(&held)], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        id::<EventId>(r, 2)?,
                        r.get::<_, String>(3)?,
                        id::<EndpointId>(r, 4)?,
                        r.get::<_, bool>(5)?,
                    ))
                })?;
            for row in found {
                let (delivery, attempts, event_id, payload, endpoint, disabled) = row?;
                if disabled {
                    // Disabled since it was queued: kept, to be released on re-enable.
                    hold.execute([delivery])?;
                    continue;
                }
                claim.execute(params![delivery, now, lease_until])?;
                due.push(DueDelivery {
                    delivery_id: DeliveryId(delivery),
                    attempt: attempts + 1,
                    event_id,
                    payload: payload.into(),
                    endpoint: tx.target(&endpoint, now)?,
                });
            }
            Ok(due)
        })
        .await
    }

    async fn read_offered(
        &self,
        deliveries: Vec<DeliveryId>,
        now: i64,
    ) -> StoreResult<Vec<DueDelivery>> {
        if deliveries.is_empty() {
            return Ok(Vec::new());
        }
        self.read(move |c| {
            let mut offered = c.prepare_cached(
                "SELECT d.attempts, e.id, e.payload, d.endpoint_id
                 FROM deliveries d JOIN events e ON e.seq = d.event_seq
                 WHERE d.id = ?1 AND d.status = 'pending' AND d.claimed_at IS NOT NULL
                   AND d.next_attempt_at > ?2",
            )?;
            let mut targets: HashMap<EndpointId, Arc<Target>> = HashMap::new();
            let mut due = Vec::new();
            for delivery in deliveries {
                let found = offered
                    .query_row(params![delivery.0, now], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            id::<EventId>(r, 1)?,
                            r.get::<_, String>(2)?,
                            id::<EndpointId>(r, 3)?,
                        ))
                    })
                    .optional()?;
                let Some((attempts, event_id, payload, endpoint)) = found else {
                    continue;
                };
                due.push(DueDelivery {
                    delivery_id: delivery,
                    attempt: attempts + 1,
                    event_id,
                    payload: payload.into(),
                    endpoint: target_of(c, &mut targets, endpoint, now)?,
                });
            }
            Ok(due)
        })
        .await
    }

    async fn offered_targets(
        &self,
        endpoints: Vec<(EndpointId, i64)>,
        now: i64,
    ) -> StoreResult<HashMap<EndpointId, Arc<Target>>> {
        if endpoints.is_empty() {
            return Ok(HashMap::new());
        }
        self.read(move |c| {
            let mut enabled =
                c.prepare_cached("SELECT 1 FROM endpoints WHERE id = ?1 AND NOT disabled")?;
            let mut targets = HashMap::new();
            for (endpoint, _) in endpoints {
                if targets.contains_key(&endpoint) || !enabled.exists([endpoint.as_str()])? {
                    continue;
                }
                let target = Arc::new(load_target(c, &endpoint, now)?.0);
                targets.insert(endpoint, target);
            }
            Ok(targets)
        })
        .await
    }

    async fn read_claimed(
        &self,
        fence: Arc<Fence>,
        claimed_at: i64,
        lease_until: i64,
        limit: usize,
    ) -> StoreResult<Vec<DueDelivery>> {
        let (slots, _) = fence.columns();
        if slots.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let slots = serde_json::to_string(&slots).expect("a list of numbers");
        self.read(move |c| {
            let mut claimed = c.prepare_cached(
                "SELECT d.id, d.attempts, e.id, e.payload, d.endpoint_id
                 FROM deliveries d
                 JOIN events e ON e.seq = d.event_seq
                 JOIN endpoints ep ON ep.id = d.endpoint_id
                 WHERE d.status = 'pending' AND d.next_attempt_at = ?2 AND d.claimed_at = ?1
                   AND ep.slot IN (SELECT value FROM json_each(?3))
                 ORDER BY d.id
                 LIMIT ?4",
            )?;
            let found = claimed
                .query_map(params![claimed_at, lease_until, slots, limit as i64], |r| {
                    Ok((
                        DeliveryId(r.get(0)?),
                        r.get::<_, i64>(1)?,
                        id::<EventId>(r, 2)?,
                        r.get::<_, String>(3)?,
                        id::<EndpointId>(r, 4)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let mut targets = HashMap::new();
            let mut due = Vec::with_capacity(found.len());
            for (delivery_id, attempts, event_id, payload, endpoint) in found {
                due.push(DueDelivery {
                    delivery_id,
                    attempt: attempts + 1,
                    event_id,
                    payload: payload.into(),
                    endpoint: target_of(c, &mut targets, endpoint, claimed_at)?,
                });
            }
            Ok(due)
        })
        .await
    }

    async fn next_due_at(&self, fence: Arc<Fence>) -> StoreResult<Option<i64>> {
        let (slots, _) = fence.columns();
        if slots.len() == usize::from(SLOTS) {
            return self
                .read(|c| {
                    Ok(c.prepare_cached(
                        "SELECT MIN(next_attempt_at) FROM deliveries WHERE status = 'pending'",
                    )?
                    .query_row([], |r| r.get(0))?)
                })
                .await;
        }
        let list = serde_json::to_string(&slots).expect("a list of numbers");
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT MIN(d.next_attempt_at) FROM deliveries d
                 JOIN endpoints ep ON ep.id = d.endpoint_id
                 WHERE d.status = 'pending' AND ep.slot IN (SELECT value FROM json_each(?1))",
            )?
            .query_row([list], |r| r.get(0))?)
        })
        .await
    }

    async fn record_attempts(
        &self,
        fence: Arc<Fence>,
        records: Arc<Vec<AttemptRecord>>,
        disable_after_ms: i64,
    ) -> StoreResult<Recorded> {
        self.write_checked(move |tx| {
            let mut recorded = Recorded::default();
            let mut healthy = Healthy::new();
            let held = slots::held(tx.conn(), &fence)?;
            for a in records.iter() {
                if !held[usize::from(slot_of(&a.endpoint.id))] {
                    recorded.fenced_out += 1;
                    continue;
                }
                record_attempt(tx, a, disable_after_ms, &mut healthy, &mut recorded)?;
            }
            crate::endpoint_stats::add_attempts(tx, &records)?;
            Ok(recorded)
        })
        .await
    }

    async fn park(&self, fence: Arc<Fence>, parked: Vec<(DeliveryId, i64)>) -> StoreResult<()> {
        self.write_checked(move |tx| {
            let held = slots::held(tx.conn(), &fence)?;
            let list = slots::held_list(&held);
            let mut park = tx.prepare_cached(
                "UPDATE deliveries SET next_attempt_at = ?2, claimed_at = NULL, parked = 1
                 WHERE id = ?1 AND status = 'pending'
                   AND (?3 IS NULL OR (SELECT slot FROM endpoints WHERE id = endpoint_id)
                                      IN (SELECT value FROM json_each(?3)))",
            )?;
            for (delivery, at) in parked {
                park.execute(params![delivery.0, at, list])?;
            }
            Ok(())
        })
        .await
    }

    async fn mark_breakers(
        &self,
        fence: Arc<Fence>,
        marks: Vec<(EndpointId, Option<StoredBreaker>)>,
    ) -> StoreResult<()> {
        self.write_checked(move |tx| {
            let held = slots::held(tx.conn(), &fence)?;
            let mut mark = tx.prepare_cached(
                "UPDATE endpoints SET breaker_until = ?2, breaker_cooldown_ms = ?3 WHERE id = ?1",
            )?;
            for (endpoint, breaker) in marks {
                if held[usize::from(slot_of(&endpoint))] {
                    mark.execute(params![
                        endpoint.as_str(),
                        breaker.map(|b| b.until),
                        breaker.map(|b| b.cooldown_ms)
                    ])?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn unpark(
        &self,
        fence: Arc<Fence>,
        endpoint: EndpointId,
        now: i64,
        limit: usize,
    ) -> StoreResult<usize> {
        self.write_checked(move |tx| {
            if !slots::held(tx.conn(), &fence)?[usize::from(slot_of(&endpoint))] {
                return Ok(0);
            }
            Ok(tx
                .prepare_cached(UNPARK)?
                .execute(params![endpoint.as_str(), now, limit as i64])?)
        })
        .await
    }
}
