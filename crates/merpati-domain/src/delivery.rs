//! Deliveries: what an attempt needs and what it records, how the store hands fresh
//! deliveries to the worker, and the rules of a delivery's outcome and of an endpoint's
//! health.

use std::collections::HashMap;
use std::sync::Arc;

use merpati_webhooks::{EndpointEvent, EndpointEventKind, EndpointRef, Event};

use crate::endpoint::{DisableReason, Subscription, Target};
use crate::ids::{AccountId, DeliveryId, EndpointId, EventId};
use crate::retry::NextStep;
use crate::slots::{Fence, Offered};
use crate::storage::StoreResult;

/// A delivery ready for its next attempt, with everything the attempt needs.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub delivery_id: DeliveryId,
    /// The number of this attempt (1 for the first).
    pub attempt: i64,
    pub event_id: EventId,
    /// The exact body, shared by every delivery of the event handed over together.
    pub payload: Arc<str>,
    pub endpoint: Arc<Target>,
}

/// One attempt, as it is recorded.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub delivery_id: DeliveryId,
    /// The endpoint as the attempt was handed out: only if it was ordered then can the
    /// delivery be in a device queue that its outcome moves on.
    pub endpoint: Arc<Target>,
    pub attempt: i64,
    pub started_at: i64,
    pub duration_ms: i64,
    pub status_code: Option<u16>,
    pub error_kind: Option<String>,
    pub error: Option<String>,
    pub response_body: Option<String>,
    pub next: NextStep,
}

/// What recording a batch of attempts did beyond the attempts themselves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// Deliveries made due (the next of a device queue, notices of a disabled endpoint).
    pub made_due: usize,
    /// Endpoints the attempts disabled.
    pub disabled: Vec<Disabled>,
    /// Records that changed nothing: their slot changed hands since the attempt was claimed
    /// (or their delivery was deleted meanwhile, or the attempt was recorded before).
    pub fenced_out: usize,
}

/// An endpoint disabled by its attempts, and the `endpoint.disabled` event that tells the
/// account's other endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disabled {
    pub account_id: AccountId,
    pub endpoint_id: EndpointId,
    pub reason: DisableReason,
    pub notice: EventId,
}

/// Room in the delivery worker taken during one write, for the deliveries it leases to the
/// worker: handed over once the write's commit is durable, given back if it is dropped
/// before (the write failed or did not commit). The worker implements it; ingest's write
/// takes one, so that a fresh delivery costs neither a claim nor a read of its payload.
pub trait Reservation: Send {
    /// Takes room for one more delivery to the endpoint, if the worker has any and this
    /// node owns the endpoint's slot.
    fn take_room(&mut self, endpoint: &EndpointId) -> bool;
    /// For a delivery `take_room` did not take: until when it is offered to the node that
    /// holds the endpoint's slot, when that is another node ([`crate::slots::OFFER_MS`]).
    /// None when the slot is this node's and its worker had no room: it is stored due.
    fn offer_until(&mut self, endpoint: &EndpointId) -> Option<i64>;
    /// A delivery stored offered; sent to its slot's owner once the write commits.
    fn offered(&mut self, endpoint: &EndpointId, delivery: Offered);
    /// Until when a delivery handed over is leased to the worker.
    fn lease_until(&self) -> i64;
    /// A delivery leased to the worker, in room taken before.
    fn push(&mut self, delivery: DueDelivery);
    /// After the commit: the worker owns the deliveries and the room from now on.
    fn hand_over(self: Box<Self>);
    /// The commit went unanswered (the connection was lost while it was made): the write
    /// may be stored or not. The room is given back, and the worker reads the deliveries
    /// from the store as it reads offered ones: it finds them only if the write was stored,
    /// and takes them then rather than when their lease runs out.
    fn unanswered(self: Box<Self>);
}

#[async_trait::async_trait]
pub trait DeliveryStore: Send + Sync {
    /// Takes up to `limit` deliveries due at `now`, of endpoints in the slots `fence` still
    /// holds, and leases them until `lease_until`. One whose endpoint was disabled since it
    /// was queued is held instead.
    async fn claim_due(
        &self,
        fence: Arc<Fence>,
        now: i64,
        limit: usize,
        lease_until: i64,
    ) -> StoreResult<Vec<DueDelivery>>;
    /// When the earliest pending delivery of the fence's slots is due, if any.
    async fn next_due_at(&self, fence: Arc<Fence>) -> StoreResult<Option<i64>>;
    /// Those of `deliveries` still offered at `now` (pending, leased, the lease not run
    /// out), with what their attempts need: a read, for the owner of their slot, which
    /// another node told of them. Those no longer offered (attempted since, or due again)
    /// are left to claims.
    async fn read_offered(
        &self,
        deliveries: Vec<DeliveryId>,
        now: i64,
    ) -> StoreResult<Vec<DueDelivery>>;
    /// The targets of the endpoints of offers that carried their deliveries ([`crate::slots::Carried`]),
    /// with the secrets live at `now`, each as new as its offer's `endpoints_seen` at
    /// least: a store may answer from what it read before, if read that far. An endpoint
    /// that no longer exists has none.
    async fn offered_targets(
        &self,
        endpoints: Vec<(EndpointId, i64)>,
        now: i64,
    ) -> StoreResult<HashMap<EndpointId, Arc<Target>>>;
    /// The deliveries of the fence's slots that a claim made at `claimed_at` leased until
    /// `lease_until`, up to `limit`, if still so leased: a read of what a claim whose
    /// commit went unanswered ([`crate::StoreError::Unanswered`]) took, if it was made,
    /// with what their attempts need.
    async fn read_claimed(
        &self,
        fence: Arc<Fence>,
        claimed_at: i64,
        lease_until: i64,
        limit: usize,
    ) -> StoreResult<Vec<DueDelivery>>;
    /// Records the attempts, each delivery's next step ([`outcome`]) and its endpoint's
    /// health ([`disable_reason`]): a success clears its failing streak; a 410, or failing
    /// without a success for `disable_after_ms`, disables it (holding its pending
    /// deliveries) and tells the account's other endpoints ([`disabled_notice`]). All or
    /// none. A record of a slot the fence no longer holds changes nothing: the slot's new
    /// owner attempts the delivery again ([`Recorded::fenced_out`]). Nor does a record of
    /// an attempt recorded before: one sent again after a commit that went unanswered.
    async fn record_attempts(
        &self,
        fence: Arc<Fence>,
        records: Arc<Vec<AttemptRecord>>,
        disable_after_ms: i64,
    ) -> StoreResult<Recorded>;
    /// Hands claimed deliveries back, due at the given times, without an attempt (only
    /// those of slots the fence still holds).
    async fn park(&self, fence: Arc<Fence>, parked: Vec<(DeliveryId, i64)>) -> StoreResult<()>;
    /// Keeps each endpoint's circuit breaker as its lane left it (None: closed), so that
    /// the next owner of its slot starts where this one was (only endpoints of slots the
    /// fence still holds).
    async fn mark_breakers(
        &self,
        fence: Arc<Fence>,
        marks: Vec<(EndpointId, Option<crate::endpoint::StoredBreaker>)>,
    ) -> StoreResult<()>;
    /// Makes up to `limit` of the endpoint's parked deliveries due now, earliest first:
    /// its lane caught up sooner than it estimated. Returns how many (none when the fence
    /// no longer holds the endpoint's slot).
    async fn unpark(
        &self,
        fence: Arc<Fence>,
        endpoint: EndpointId,
        now: i64,
        limit: usize,
    ) -> StoreResult<usize>;
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// To be attempted (due, leased, or waiting in its device queue).
    Pending,
    /// Kept while its endpoint is disabled.
    Held,
    Succeeded,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Held => "held",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryStatus> {
        [
            DeliveryStatus::Pending,
            DeliveryStatus::Held,
            DeliveryStatus::Succeeded,
            DeliveryStatus::Failed,
        ]
        .into_iter()
        .find(|status| status.as_str() == s)
    }

    /// Whether the delivery is still owed: at least once outranks retention.
    pub fn is_owed(self) -> bool {
        matches!(self, DeliveryStatus::Pending | DeliveryStatus::Held)
    }
}

/// A delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub status: DeliveryStatus,
    /// When it is due again (a retry).
    pub next_attempt_at: Option<i64>,
    /// When it reached its final outcome.
    pub completed_at: Option<i64>,
}

/// The delivery's state once an attempt that ended at `finished_at` is recorded.
pub fn outcome(next: NextStep, finished_at: i64) -> Outcome {
    let (status, next_attempt_at, completed_at) = match next {
        NextStep::Succeeded => (DeliveryStatus::Succeeded, None, Some(finished_at)),
        NextStep::Failed => (DeliveryStatus::Failed, None, Some(finished_at)),
        NextStep::RetryAt(at) => (DeliveryStatus::Pending, Some(at), None),
    };
    Outcome {
        status,
        next_attempt_at,
        completed_at,
    }
}

/// Whether the outcome lets the next delivery of its device queue go: only a final one,
/// and only on an endpoint that was ordered when the attempt was handed out (switching
/// ordering off takes every delivery out of its queue).
pub fn moves_queue_on(ordered: bool, outcome: &Outcome) -> bool {
    ordered && outcome.completed_at.is_some()
}

/// Why an endpoint that just failed (failing since `failing_since`) is disabled now, if it
/// is: it answered 410 Gone, or it has failed without a success for `disable_after_ms`.
pub fn disable_reason(
    status_code: Option<u16>,
    failing_since: i64,
    now: i64,
    disable_after_ms: i64,
) -> Option<DisableReason> {
    if status_code == Some(410) {
        Some(DisableReason::Gone)
    } else if now - failing_since >= disable_after_ms {
        Some(DisableReason::Failing)
    } else {
        None
    }
}

/// The `endpoint.disabled` event that tells an account its endpoint stopped receiving.
pub fn disabled_notice(
    endpoint: &EndpointId,
    url: &str,
    reason: DisableReason,
    failing_since: i64,
    now: i64,
) -> Event {
    Event::Endpoint(EndpointEvent {
        event: EndpointEventKind::Disabled,
        timestamp: now.div_euclid(1000),
        endpoint: EndpointRef {
            id: endpoint.to_string(),
            url: url.to_owned(),
        },
        reason: reason.as_str().to_string(),
        failing_since: Some(failing_since.div_euclid(1000)),
    })
}

/// Who is told of a disabled endpoint: the account's other endpoints.
pub fn notice_recipients(
    subscriptions: &[Subscription],
    disabled: &EndpointId,
) -> Vec<Subscription> {
    subscriptions
        .iter()
        .filter(|s| s.endpoint_id != *disabled)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_of_each_next_step() {
        assert_eq!(
            outcome(NextStep::Succeeded, 7),
            Outcome {
                status: DeliveryStatus::Succeeded,
                next_attempt_at: None,
                completed_at: Some(7)
            }
        );
        assert_eq!(outcome(NextStep::Failed, 7).completed_at, Some(7));
        let retry = outcome(NextStep::RetryAt(90), 7);
        assert_eq!(
            (retry.status, retry.next_attempt_at, retry.completed_at),
            (DeliveryStatus::Pending, Some(90), None)
        );
        assert!(moves_queue_on(true, &outcome(NextStep::Failed, 7)));
        assert!(!moves_queue_on(true, &retry));
        assert!(!moves_queue_on(false, &outcome(NextStep::Succeeded, 7)));
    }

    #[test]
    fn an_endpoint_is_disabled_at_once_on_410_and_after_failing_long_enough() {
        assert_eq!(
            disable_reason(Some(410), 100, 100, 1000),
            Some(DisableReason::Gone)
        );
        assert_eq!(disable_reason(Some(500), 100, 1099, 1000), None);
        assert_eq!(
            disable_reason(None, 100, 1100, 1000),
            Some(DisableReason::Failing)
        );
    }

    #[test]
    fn the_notice_is_dated_in_seconds_and_goes_to_the_other_endpoints() {
        let ep = EndpointId::from("ep_1");
        let notice = disabled_notice(&ep, "https://x", DisableReason::Gone, 1_999, 5_000);
        assert_eq!(
            String::from_utf8(notice.to_json()).unwrap(),
            r#"{"event":"endpoint.disabled","timestamp":5,"endpoint":{"id":"ep_1","url":"https://x"},"reason":"gone","failing_since":1}"#
        );
        let subs = [
            Subscription {
                endpoint_id: ep.clone(),
                ..Default::default()
            },
            Subscription {
                endpoint_id: "ep_2".into(),
                ..Default::default()
            },
        ];
        let told: Vec<_> = notice_recipients(&subs, &ep)
            .into_iter()
            .map(|s| s.endpoint_id)
            .collect();
        assert_eq!(told, [EndpointId::from("ep_2")]);
    }

    #[test]
    fn owed_statuses_outlive_retention() {
        assert!(DeliveryStatus::Pending.is_owed() && DeliveryStatus::Held.is_owed());
        assert!(!DeliveryStatus::Succeeded.is_owed() && !DeliveryStatus::Failed.is_owed());
        assert_eq!(DeliveryStatus::parse("held"), Some(DeliveryStatus::Held));
    }
}
