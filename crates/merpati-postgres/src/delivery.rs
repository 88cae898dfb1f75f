//! Claiming due deliveries, recording attempts with each delivery's outcome and its
//! endpoint's health, parking and taking back. The outcome, the health verdict and the
//! notice of a disabled endpoint are the domain's rules; this runs their statements.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use merpati_domain::delivery::{
    disable_reason, disabled_notice, moves_queue_on, notice_recipients, outcome, AttemptRecord,
    DeliveryStore, Disabled, DueDelivery, Recorded,
};
use merpati_domain::device::Scope;
use merpati_domain::endpoint::{StoredBreaker, Target};
use merpati_domain::ids::{AccountId, DeliveryId, EndpointId, EventId};
use merpati_domain::retry::NextStep;
use merpati_domain::slots::{slot_of, Fence};
use merpati_domain::StoreResult;

use crate::endpoint_cache::{load_targets, TargetsOf, CHANGES};
use crate::endpoints::disable;
use crate::error::DbResult;
use crate::fanout::{advance_queue, fan_out, insert_event, lock_queues, NewEvent};
use crate::slots::{fence_cte, fence_params};
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

/// Brings forward (to $2) up to $3 of the deliveries an endpoint's lane parked, earliest
/// first.
pub(crate) const UNPARK: &str = "UPDATE deliveries SET next_attempt_at = $2
     WHERE id IN (SELECT id FROM deliveries
                  WHERE endpoint_id = $1 AND status = 'pending' AND parked
                    AND next_attempt_at > $2
                  ORDER BY next_attempt_at LIMIT $3)";

/// Records a batch of attempts: every delivery's outcome in one statement and every attempt
/// in another (as arrays), then, in the order they were made, what moves a device queue on
/// and the endpoints' health.
fn record_batch(
    tx: &mut Tx<'_>,
    fence: &Fence,
    records: &[AttemptRecord],
    disable_after_ms: i64,
) -> DbResult<Recorded> {
    let mut recorded = Recorded::default();
    let outcomes: Vec<_> = records
        .iter()
        .map(|a| outcome(a.next, a.started_at + a.duration_ms))
        .collect();
    // A delivery attempted twice within one batch ends as its last attempt left it.
    let mut last: HashMap<i64, usize> = HashMap::new();
    for (i, a) in records.iter().enumerate() {
        last.insert(a.delivery_id.0, i);
    }
    let mut latest: Vec<usize> = last.into_values().collect();
    latest.sort_unstable();
    let ids: Vec<i64> = latest.iter().map(|&i| records[i].delivery_id.0).collect();
    let statuses: Vec<&str> = latest
        .iter()
        .map(|&i| outcomes[i].status.as_str())
        .collect();
    let attempts: Vec<i64> = latest.iter().map(|&i| records[i].attempt).collect();
    let next: Vec<Option<i64>> = latest
        .iter()
        .map(|&i| outcomes[i].next_attempt_at)
        .collect();
    let completed: Vec<Option<i64>> = latest.iter().map(|&i| outcomes[i].completed_at).collect();
    let slots: Vec<i16> = latest
        .iter()
        .map(|&i| slot_of(&records[i].endpoint.id) as i16)
        .collect();
    let (node, fenced, epochs) = fence_params(fence);
    // Endpoints that only succeeded in this batch end their failing streak with the
    // outcomes; the others are followed attempt by attempt below.
    let failing: HashSet<&EndpointId> = records
        .iter()
        .filter(|a| a.next != NextStep::Succeeded)
        .map(|a| &a.endpoint.id)
        .collect();
    let healed: Vec<&str> = records
        .iter()
        .filter(|a| !failing.contains(&a.endpoint.id))
        .map(|a| a.endpoint.id.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let column = |f: fn(&AttemptRecord) -> i64| records.iter().map(f).collect::<Vec<_>>();
    let text = |f: fn(&AttemptRecord) -> Option<String>| records.iter().map(f).collect::<Vec<_>>();
    // One round trip: the outcomes of deliveries of slots the fence still holds, the
    // attempts of deliveries still there (one deleted while under way, with its endpoint or
    // by retention, has nothing left to record) and not recorded before (a record sent
    // again after an unanswered commit), and the streaks those outcomes ended.
    // Straight to the connection: the streak is in neither a subscription nor a target.
    let queues: HashMap<i64, Option<String>> = tx
        .conn()
        .query(
            &format!(
                "WITH {}, done AS (
                 UPDATE deliveries d SET status = u.status, attempts = u.attempts,
                        next_attempt_at = u.next, completed_at = u.completed, claimed_at = NULL
                 FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[],
                             $5::BIGINT[], $15::SMALLINT[])
                      AS u(id, status, attempts, next, completed, slot)
                 WHERE d.id = u.id AND u.slot IN (SELECT slot FROM fence)
                   AND d.attempts < u.attempts
                 RETURNING d.id, d.order_key, d.endpoint_id
             ), logged AS (
                 INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms,
                                       status_code, error_kind, error, response_body)
                 SELECT a.* FROM UNNEST($6::BIGINT[], $7::BIGINT[], $8::BIGINT[],
                                        $9::BIGINT[], $10::BIGINT[], $11::TEXT[], $12::TEXT[],
                                        $13::TEXT[])
                     AS a(delivery_id, attempt, started_at, duration_ms, status_code,
                          error_kind, error, response_body)
                 WHERE a.delivery_id IN (SELECT id FROM done)
             ), healed AS (
                 UPDATE endpoints SET failing_since = NULL
                 WHERE id = ANY($14) AND failing_since IS NOT NULL
                   AND id IN (SELECT endpoint_id FROM done)
             )
             SELECT id, order_key FROM done",
                fence_cte(16, 17, 18)
            ),
            &[
                &ids,
                &statuses,
                &attempts,
                &next,
                &completed,
                &column(|a| a.delivery_id.0),
                &column(|a| a.attempt),
                &column(|a| a.started_at),
                &column(|a| a.duration_ms),
                &records
                    .iter()
                    .map(|a| a.status_code.map(i64::from))
                    .collect::<Vec<_>>(),
                &text(|a| a.error_kind.clone()),
                &text(|a| a.error.clone()),
                &text(|a| a.response_body.clone()),
                &healed,
                &slots,
                &node,
                &fenced,
                &epochs,
            ],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    recorded.fenced_out = ids.len() - queues.len();
    let kept = records
        .iter()
        .zip(&outcomes)
        .filter(|(a, _)| queues.contains_key(&a.delivery_id.0));
    let queued: Vec<&str> = kept
        .clone()
        .filter(|(a, after)| moves_queue_on(a.endpoint.ordered, after))
        .filter_map(|(a, _)| queues.get(&a.delivery_id.0)?.as_deref())
        .collect();
    lock_queues(tx, &queued)?;
    let mut healthy = Healthy::new();
    for (a, after) in kept {
        let finished = a.started_at + a.duration_ms;
        if moves_queue_on(a.endpoint.ordered, after) {
            if let Some(Some(key)) = queues.get(&a.delivery_id.0) {
                recorded.made_due += advance_queue(tx, &a.endpoint.id, key, finished)?;
            }
        }
        if failing.contains(&a.endpoint.id) {
            let (due, disabled) = endpoint_health(tx, a, finished, disable_after_ms, &mut healthy)?;
            recorded.made_due += due;
            recorded.disabled.extend(disabled);
        }
    }
    Ok(recorded)
}

/// The deliveries named that are still offered (pending, leased, the lease not run out),
/// in the order named, with their events' payloads: each one probe of its key.
const READ_OFFERED: &str = "SELECT d.id, d.attempts, e.id, e.payload, d.endpoint_id
     FROM UNNEST($1::BIGINT[]) WITH ORDINALITY AS o(id, n)
     CROSS JOIN LATERAL (
         SELECT d.id, d.attempts, d.event_seq, d.endpoint_id FROM deliveries d
         WHERE d.id = o.id AND d.status = 'pending' AND d.claimed_at IS NOT NULL
           AND d.next_attempt_at > $2
         LIMIT 1
     ) d
     CROSS JOIN LATERAL (
         SELECT e.id, e.payload FROM events e WHERE e.seq = d.event_seq LIMIT 1
     ) e
     ORDER BY o.n";

/// What a claim made at `$1`, leased until `$2`, took of the slots `$3`, if still so
/// leased: the deliveries' index on when they are due finds them.
const READ_CLAIMED: &str = "SELECT d.id, d.attempts, e.id, e.payload, d.endpoint_id
     FROM deliveries d
     CROSS JOIN LATERAL (
         SELECT e.id, e.payload FROM events e WHERE e.seq = d.event_seq LIMIT 1
     ) e
     WHERE d.status = 'pending' AND d.next_attempt_at = $2 AND d.claimed_at = $1
       AND d.slot = ANY($3::SMALLINT[])
     ORDER BY d.id
     LIMIT $4";

/// Deliveries read as `(id, attempts, event id, payload, endpoint id)`, with their
/// endpoints' targets as of `now`.
fn due_of_rows(
    c: &mut crate::Conn,
    rows: &[postgres::Row],
    now: i64,
) -> DbResult<Vec<DueDelivery>> {
    let endpoints: Vec<EndpointId> = rows
        .iter()
        .map(|r| EndpointId::from(r.get::<_, String>(4)))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let targets: HashMap<EndpointId, Arc<Target>> =
        load_targets(c, &endpoints, now, TargetsOf::All)?
            .into_iter()
            .map(|(id, (target, _))| (id, Arc::new(target)))
            .collect();
    Ok(rows
        .iter()
        .filter_map(|r| {
            let endpoint = targets.get(r.get::<_, &str>(4))?;
            Some(DueDelivery {
                delivery_id: DeliveryId(r.get(0)),
                attempt: r.get::<_, i64>(1) + 1,
                event_id: EventId::from(r.get::<_, String>(2)),
                payload: r.get::<_, &str>(3).into(),
                endpoint: endpoint.clone(),
            })
        })
        .collect())
}

#[async_trait::async_trait]
impl DeliveryStore for PostgresStore {
    async fn claim_due(
        &self,
        fence: Arc<Fence>,
        now: i64,
        limit: usize,
        lease_until: i64,
    ) -> StoreResult<Vec<DueDelivery>> {
        self.write_lease(move |tx| {
            let (node, slots, epochs) = fence_params(&fence);
            // One round trip: rows another node is claiming at the same moment are skipped,
            // not waited for; a delivery whose endpoint was disabled since it was queued is
            // held, to be released on re-enable; the others are leased. Each held slot is
            // read on its own, in due order, so what other slots have waiting is never read,
            // and each payload is one probe of its event (a plan made while the log was
            // small hashed a scan of all of it, 13.8 ms a claim at 11,000 events).
            let found = tx.conn().query(
                &format!(
                    "WITH {}, picked AS (
                     SELECT d.id, d.attempts, d.event_seq, d.endpoint_id, d.next_attempt_at,
                            ep.disabled
                     FROM fence f
                     CROSS JOIN LATERAL (
                         SELECT d.id, d.attempts, d.event_seq, d.endpoint_id,
                                d.next_attempt_at
                         FROM deliveries d
                         WHERE d.slot = f.slot AND d.status = 'pending'
                           AND d.next_attempt_at <= $1
                         ORDER BY d.next_attempt_at
                         LIMIT $2
                         FOR UPDATE SKIP LOCKED
                     ) d
                     JOIN endpoints ep ON ep.id = d.endpoint_id
                     ORDER BY d.next_attempt_at
                     LIMIT $2
                 ), held AS (
                     UPDATE deliveries d SET status = 'held', next_attempt_at = NULL
                     FROM picked p WHERE d.id = p.id AND p.disabled
                 ), claimed AS (
                     UPDATE deliveries d SET claimed_at = $1, next_attempt_at = $3,
                            parked = FALSE
                     FROM picked p WHERE d.id = p.id AND NOT p.disabled
                     RETURNING d.id, p.attempts, p.event_seq, p.endpoint_id,
                               p.next_attempt_at AS due
                 )
                 SELECT c.id, c.attempts, e.id, e.payload, c.endpoint_id
                 FROM claimed c
                 CROSS JOIN LATERAL (
                     SELECT e.id, e.payload FROM events e WHERE e.seq = c.event_seq LIMIT 1
                 ) e
                 ORDER BY c.due, c.id",
                    fence_cte(4, 5, 6)
                ),
                &[&now, &(limit as i64), &lease_until, &node, &slots, &epochs],
            )?;
            let mut due = Vec::with_capacity(found.len());
            for r in &found {
                let endpoint = EndpointId::from(r.get::<_, String>(4));
                due.push(DueDelivery {
                    delivery_id: DeliveryId(r.get(0)),
                    attempt: r.get::<_, i64>(1) + 1,
                    event_id: EventId::from(r.get::<_, String>(2)),
                    payload: r.get::<_, &str>(3).into(),
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
        let ids: Vec<i64> = deliveries.iter().map(|d| d.0).collect();
        self.read(move |c| {
            let found = c.query(READ_OFFERED, &[&ids, &now])?;
            due_of_rows(c, &found, now)
        })
        .await
    }

    async fn offered_targets(
        &self,
        endpoints: Vec<(EndpointId, i64)>,
        now: i64,
    ) -> StoreResult<HashMap<EndpointId, Arc<Target>>> {
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        {
            let kept = self.offer_targets.lock().expect("offer targets lock");
            for (endpoint, seen) in endpoints {
                match kept.kept(&endpoint, seen, now) {
                    Some(target) => {
                        found.insert(endpoint, target);
                    }
                    None => missing.push(endpoint),
                }
            }
        }
        missing.sort();
        missing.dedup();
        if missing.is_empty() {
            return Ok(found);
        }
        let kept = self.offer_targets.clone();
        let read = self
            .read(move |c| {
                // The number first: what is read after it is at least that new.
                let read_at: i64 = c.query_one(CHANGES, &[])?.get(0);
                let targets: Vec<(EndpointId, (Arc<Target>, Option<i64>))> =
                    load_targets(c, &missing, now, TargetsOf::Enabled)?
                        .into_iter()
                        .map(|(id, (target, expires))| (id, (Arc::new(target), expires)))
                        .collect();
                kept.lock()
                    .expect("offer targets lock")
                    .keep(read_at, targets.iter().cloned());
                Ok(targets)
            })
            .await?;
        found.extend(read.into_iter().map(|(id, (target, _))| (id, target)));
        Ok(found)
    }

    async fn read_claimed(
        &self,
        fence: Arc<Fence>,
        claimed_at: i64,
        lease_until: i64,
        limit: usize,
    ) -> StoreResult<Vec<DueDelivery>> {
        let (_, slots, _) = fence_params(&fence);
        if slots.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        self.read(move |c| {
            let found = c.query(
                READ_CLAIMED,
                &[&claimed_at, &lease_until, &slots, &(limit as i64)],
            )?;
            due_of_rows(c, &found, claimed_at)
        })
        .await
    }

    async fn next_due_at(&self, fence: Arc<Fence>) -> StoreResult<Option<i64>> {
        let (_, slots, _) = fence_params(&fence);
        self.read(move |c| {
            Ok(c.query_one(
                "SELECT MIN(first.at) FROM UNNEST($1::SMALLINT[]) AS s(slot)
                 CROSS JOIN LATERAL (
                     SELECT d.next_attempt_at AS at FROM deliveries d
                     JOIN endpoints ep ON ep.id = d.endpoint_id
                     WHERE d.slot = s.slot AND d.status = 'pending'
                       AND d.next_attempt_at IS NOT NULL
                     ORDER BY d.next_attempt_at
                     LIMIT 1
                 ) first",
                &[&slots],
            )?
            .get(0))
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
            let recorded = record_batch(tx, &fence, &records, disable_after_ms)?;
            crate::endpoint_stats::add_attempts(tx, &records)?;
            Ok(recorded)
        })
        .await
    }

    async fn park(&self, fence: Arc<Fence>, parked: Vec<(DeliveryId, i64)>) -> StoreResult<()> {
        self.write_checked(move |tx| {
            let (ids, at): (Vec<i64>, Vec<i64>) = parked.iter().map(|(d, at)| (d.0, *at)).unzip();
            let (node, slots, epochs) = fence_params(&fence);
            tx.execute(
                &format!(
                    "WITH {}
                     UPDATE deliveries d SET next_attempt_at = p.at, claimed_at = NULL,
                            parked = TRUE
                     FROM UNNEST($1::BIGINT[], $2::BIGINT[]) AS p(id, at), endpoints ep
                     WHERE d.id = p.id AND d.status = 'pending' AND ep.id = d.endpoint_id
                       AND ep.slot IN (SELECT slot FROM fence)",
                    fence_cte(3, 4, 5)
                ),
                &[&ids, &at, &node, &slots, &epochs],
            )?;
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
            let ids: Vec<&str> = marks.iter().map(|(e, _)| e.as_str()).collect();
            let until: Vec<Option<i64>> = marks.iter().map(|(_, b)| b.map(|b| b.until)).collect();
            let cooldown: Vec<Option<i64>> = marks
                .iter()
                .map(|(_, b)| b.map(|b| b.cooldown_ms))
                .collect();
            let (node, slots, epochs) = fence_params(&fence);
            tx.execute(
                &format!(
                    "WITH {}
                     UPDATE endpoints ep SET breaker_until = m.until,
                            breaker_cooldown_ms = m.cooldown_ms
                     FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::BIGINT[])
                          AS m(id, until, cooldown_ms)
                     WHERE ep.id = m.id AND ep.slot IN (SELECT slot FROM fence)",
                    fence_cte(4, 5, 6)
                ),
                &[&ids, &until, &cooldown, &node, &slots, &epochs],
            )?;
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
            let (node, slots, epochs) = fence_params(&fence);
            let slot = slot_of(&endpoint) as i16;
            Ok(tx.execute(
                &format!(
                    "WITH {} {UNPARK} AND $4::SMALLINT IN (SELECT slot FROM fence)",
                    fence_cte(5, 6, 7)
                ),
                &[
                    &endpoint.as_str(),
                    &now,
                    &(limit as i64),
                    &slot,
                    &node,
                    &slots,
                    &epochs,
                ],
            )? as usize)
        })
        .await
    }
}
