//! The event log: events as stored, with their deliveries and every attempt.

use crate::delivery::DeliveryStatus;
use crate::ids::{AccountId, BusinessId, ChannelId, DeliveryId, DeviceId, EndpointId, EventId};
use crate::storage::StoreResult;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSummary {
    pub id: EventId,
    pub event_type: String,
    pub device_id: Option<DeviceId>,
    pub channel_id: Option<ChannelId>,
    pub business_id: Option<BusinessId>,
    pub created_at: i64,
    /// The system-wide number (the `data.id` of inbound payloads), rising with time.
    pub seq: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EventDetail {
    pub summary: EventSummary,
    /// The body as delivered (in JSON; form endpoints get the same fields form-encoded).
    pub payload: serde_json::Value,
    pub deliveries: Vec<DeliveryDetail>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryDetail {
    pub id: DeliveryId,
    pub endpoint_id: EndpointId,
    pub status: DeliveryStatus,
    pub attempt_count: i64,
    /// When it is due, while it is pending.
    pub next_attempt_at: Option<i64>,
    pub created_at: i64,
    pub completed_at: Option<i64>,
    pub attempts: Vec<Attempt>,
}

/// One attempt as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub attempt: i64,
    pub started_at: i64,
    pub duration_ms: i64,
    pub status_code: Option<u16>,
    /// Why it failed without an answer, or with a non-2xx one: `http_status`, `timeout`,
    /// `connect`, `redirect`, …
    pub error_kind: Option<String>,
    pub error: Option<String>,
    /// The first 4 KiB of the answer.
    pub response_body: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub event_type: Option<String>,
    pub device_id: Option<DeviceId>,
    /// Received at or after (ms).
    pub from: Option<i64>,
    /// Received before (ms).
    pub to: Option<i64>,
}

#[async_trait::async_trait]
pub trait EventStore: Send + Sync {
    /// Newest first, those before `before_seq` when given.
    async fn list_events(
        &self,
        account: AccountId,
        filter: EventFilter,
        before_seq: Option<i64>,
        limit: usize,
    ) -> StoreResult<Vec<EventSummary>>;
    async fn get_event(&self, account: AccountId, id: EventId) -> StoreResult<EventDetail>;
    /// One step of retention: deletes up to `limit` events created before `before` that no
    /// delivery still owes (see [`crate::retention`]), with their deliveries, attempts and
    /// dedup records. Returns how many rows went; 0 when nothing more can go now.
    ///
    /// A log kept in parts ([`crate::retention::LogPart`]) goes a part at a time: an event
    /// stays until every event of its part is past the cut, a step may drop a whole part
    /// (and returns its events' count), and the rows a part's drop must not leave behind
    /// (dedup records, later deliveries of its events) go first, up to `limit` a step.
    async fn prune_events(&self, before: i64, limit: usize) -> StoreResult<usize>;
    /// Moves a log kept in parts onto its next part when [`crate::retention::part_turn_due`]
    /// says so (a part a `span`), making the one after ready; answers whether it moved. A
    /// log kept whole does nothing.
    async fn turn_event_log(&self, now: i64, span: std::time::Duration) -> StoreResult<bool>;
    /// A new delivery of the same event to the same endpoint; returns its id. Conflict when
    /// the endpoint is disabled.
    async fn resend_delivery(
        &self,
        account: AccountId,
        delivery: DeliveryId,
        now: i64,
    ) -> StoreResult<DeliveryId>;
    /// New deliveries of the event: to `endpoint`, or to every endpoint it matches now
    /// ([`crate::fanout::replay_to`]). Returns how many are due.
    async fn replay_event(
        &self,
        account: AccountId,
        id: EventId,
        endpoint: Option<EndpointId>,
        now: i64,
    ) -> StoreResult<usize>;
}
