//! Claiming due deliveries, recording attempts with each delivery's outcome and its
//! endpoint's health, parking and taking back. The outcome, the health verdict and the
//! notice of a disabled endpoint are the domain's rules; this runs their statements.

use std::sync::Arc;

use merpati_domain::delivery::{
    disable_reason, disabled_notice, moves_queue_on, notice_recipients, outcome, AttemptRecord,
    DeliveryStore, Disabled, DueDelivery, Recorded,
};
use merpati_domain::device::Scope;
use merpati_domain::ids::{AccountId, DeliveryId, EndpointId, EventId};
use merpati_domain::retry::NextStep;
use merpati_domain::StoreResult;

use crate::endpoints::disable;
use crate::error::DbResult;
use crate::fanout::{advance_queue, fan_out, insert_event, NewEvent};
use crate::writer::Tx;
use crate::PostgresStore;

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
    // The failing streak is in neither a subscription nor a target: what the group read of
    // endpoints stays, so these go straight to the connection.
    if a.next == NextStep::Succeeded {
        if !healthy.contains(endpoint) {
            tx.conn().execute(
                "UPDATE endpoints SET failing_since = NULL
                 WHERE id = $1 AND failing_since IS NOT NULL",
                &[&endpoint.as_str()],
            )?;
            healthy.insert(endpoint.clone());
        }
        return Ok((0, None));
    }
    healthy.remove(endpoint);
    let Some(r) = tx.conn().query_opt(
        "UPDATE endpoints SET failing_since = COALESCE(failing_since, $2) WHERE id = $1
         RETURNING account_id, url, failing_since",
        &[&endpoint.as_str(), &a.started_at],
    )?
    else {
        return Ok((0, None));
    };
    let (account, url, failing_since): (AccountId, String, i64) =
        (AccountId::from(r.get::<_, String>(0)), r.get(1), r.get(2));
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
    let (seq, _) = insert_event(tx, &new, 1, |_| body)?;
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

/// Brings forward (to $2) up to $3 of the deliveries an endpoint's lane parked, earliest
/// first.
pub(crate) const UNPARK: &str = "UPDATE deliveries SET next_attempt_at = $2
     WHERE id IN (SELECT id FROM deliveries
                  WHERE endpoint_id = $1 AND status = 'pending' AND parked
                    AND next_attempt_at > $2
                  ORDER BY next_attempt_at LIMIT $3)";

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
    let Some(row) = tx.query_opt(
        "UPDATE deliveries SET status = $2, attempts = $3, next_attempt_at = $4,
            completed_at = $5, claimed_at = NULL
         WHERE id = $1 RETURNING order_key",
        &[
            &a.delivery_id.0,
            &after.status.as_str(),
            &a.attempt,
            &after.next_attempt_at,
            &after.completed_at,
        ],
    )?
    else {
        // Deleted while under way, with its endpoint or by retention: nothing left to
        // record.
        return Ok(());
    };
    let order_key: Option<String> = row.get(0);
    tx.execute(
        "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status_code,
                               error_kind, error, response_body)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &a.delivery_id.0,
            &a.attempt,
            &a.started_at,
            &a.duration_ms,
            &a.status_code.map(i64::from),
            &a.error_kind,
            &a.error,
            &a.response_body,
        ],
    )?;
    if moves_queue_on(a.endpoint.ordered, &after) {
        if let Some(key) = order_key {
            recorded.made_due += advance_queue(tx, &a.endpoint.id, &key, finished)?;
        }
    }
    let (due, disabled) = endpoint_health(tx, a, finished, disable_after_ms, healthy)?;
    recorded.made_due += due;
    recorded.disabled.extend(disabled);
    Ok(())
}

#[async_trait::async_trait]
impl DeliveryStore for PostgresStore {
    async fn claim_due(
        &self,
        now: i64,
        limit: usize,
        lease_until: i64,
    ) -> StoreResult<Vec<DueDelivery>> {
        self.write_checked(move |tx| {
            // Rows another node is claiming at the same moment are skipped, not waited for.
            let found = tx.query(
                "SELECT d.id, d.attempts, e.id, e.payload, d.endpoint_id, ep.disabled
                 FROM deliveries d
                 JOIN events e ON e.seq = d.event_seq
                 JOIN endpoints ep ON ep.id = d.endpoint_id
                 WHERE d.status = 'pending' AND d.next_attempt_at <= $1
                 ORDER BY d.next_attempt_at
                 LIMIT $2
                 FOR UPDATE OF d SKIP LOCKED",
                &[&now, &(limit as i64)],
            )?;
            let mut claimed: Vec<i64> = Vec::new();
            let mut held: Vec<i64> = Vec::new();
            let mut due = Vec::new();
            for r in &found {
                let delivery: i64 = r.get(0);
                if r.get::<_, bool>(5) {
                    // Disabled since it was queued: kept, to be released on re-enable.
                    held.push(delivery);
                    continue;
                }
                claimed.push(delivery);
                let endpoint = EndpointId::from(r.get::<_, String>(4));
                due.push(DueDelivery {
                    delivery_id: DeliveryId(delivery),
                    attempt: r.get::<_, i64>(1) + 1,
                    event_id: EventId::from(r.get::<_, String>(2)),
                    payload: r.get::<_, &str>(3).into(),
                    endpoint: tx.target(&endpoint, now)?,
                });
            }
            if !held.is_empty() {
                tx.execute(
                    "UPDATE deliveries SET status = 'held', next_attempt_at = NULL
                     WHERE id = ANY($1)",
                    &[&held],
                )?;
            }
            if !claimed.is_empty() {
                tx.execute(
                    "UPDATE deliveries SET claimed_at = $2, next_attempt_at = $3, parked = FALSE
                     WHERE id = ANY($1)",
                    &[&claimed, &now, &lease_until],
                )?;
            }
            Ok(due)
        })
        .await
    }

    async fn next_due_at(&self) -> StoreResult<Option<i64>> {
        self.read(|c| {
            Ok(c.query_one(
                "SELECT MIN(next_attempt_at) FROM deliveries WHERE status = 'pending'",
                &[],
            )?
            .get(0))
        })
        .await
    }

    async fn record_attempts(
        &self,
        records: Arc<Vec<AttemptRecord>>,
        disable_after_ms: i64,
    ) -> StoreResult<Recorded> {
        self.write_checked(move |tx| {
            let mut recorded = Recorded::default();
            let mut healthy = Healthy::new();
            for a in records.iter() {
                record_attempt(tx, a, disable_after_ms, &mut healthy, &mut recorded)?;
            }
            crate::endpoint_stats::add_attempts(tx, &records)?;
            Ok(recorded)
        })
        .await
    }

    async fn park(&self, parked: Vec<(DeliveryId, i64)>) -> StoreResult<()> {
        self.write_checked(move |tx| {
            let (ids, at): (Vec<i64>, Vec<i64>) = parked.iter().map(|(d, at)| (d.0, *at)).unzip();
            tx.execute(
                "UPDATE deliveries d SET next_attempt_at = p.at, claimed_at = NULL, parked = TRUE
                 FROM UNNEST($1::BIGINT[], $2::BIGINT[]) AS p(id, at)
                 WHERE d.id = p.id AND d.status = 'pending'",
                &[&ids, &at],
            )?;
            Ok(())
        })
        .await
    }

    async fn unpark(&self, endpoint: EndpointId, now: i64, limit: usize) -> StoreResult<usize> {
        self.write_checked(move |tx| {
            Ok(tx.execute(UNPARK, &[&endpoint.as_str(), &now, &(limit as i64)])? as usize)
        })
        .await
    }

    async fn release_claims(&self, now: i64) -> StoreResult<usize> {
        self.write(move |tx| {
            let claims = tx.execute(
                "UPDATE deliveries SET claimed_at = NULL,
                        next_attempt_at = LEAST(next_attempt_at, $1)
                 WHERE status = 'pending' AND claimed_at IS NOT NULL",
                &[&now],
            )?;
            // The lanes that would have taken their parked deliveries back are gone.
            let parked = tx.execute(
                "UPDATE deliveries SET parked = FALSE, next_attempt_at = LEAST(next_attempt_at, $1)
                 WHERE status = 'pending' AND parked",
                &[&now],
            )?;
            Ok((claims + parked) as usize)
        })
        .await
    }
}
