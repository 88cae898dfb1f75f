//! What the cases share: an account's device tree, endpoints, items as devices send them,
//! a worker's room to hand deliveries to, and attempts to record.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use merpati_domain::account::Account;
use merpati_domain::delivery::{AttemptRecord, DueDelivery, Reservation};
use merpati_domain::device::{Business, Channel, Device, DeviceContext, Presence};
use merpati_domain::endpoint::{BodyFormat, Endpoint};
use merpati_domain::event::{DeliveryDetail, EventDetail};
use merpati_domain::ids::{
    token_hash, AccountId, BusinessId, ChannelId, DeviceId, EndpointId, EventId,
};
use merpati_domain::ingest::{canonical_digest, rid_key, IngestResult, PreparedItem};
use merpati_domain::retry::NextStep;
use merpati_domain::slots::{Fence, Offered, SLOTS};
use merpati_domain::{SharedStore, StoreResult};
use merpati_webhooks::{InboundEvent, Rid, Sms};
use serde_json::json;

/// A moment to start from (ms); cases pass time in explicitly.
pub const T0: i64 = 1_700_000_000_000;

/// An account with one business, one channel and its devices, as the device API sees them.
pub struct Tree {
    pub account: AccountId,
    pub business: BusinessId,
    pub channel: ChannelId,
    pub devices: Vec<Arc<DeviceContext>>,
}

/// `account`, with business `biz`, channel `ch` (engine `sms`) and devices `dev0`, `dev1`, …
pub async fn tree(store: &SharedStore, account: &str, devices: usize) -> Tree {
    let account = AccountId::from(account);
    store
        .create_account(Account {
            id: account.clone(),
            name: format!("Merchant {account}"),
            language: Default::default(),
            limits: Default::default(),
            created_at: T0,
            updated_at: T0,
            revision: 0,
        })
        .await
        .unwrap();
    let business = BusinessId::from("biz");
    store
        .create_business(
            account.clone(),
            Business {
                id: business.clone(),
                name: "My Business".into(),
                created_at: T0,
                updated_at: T0,
                revision: 0,
            },
        )
        .await
        .unwrap();
    let channel = ChannelId::from("ch");
    store
        .create_channel(account.clone(), channel_row(&channel, &business))
        .await
        .unwrap();
    let mut contexts = Vec::new();
    for i in 0..devices {
        contexts.push(Arc::new(
            device(store, &account, &channel, &format!("dev{i}")).await,
        ));
    }
    Tree {
        account,
        business,
        channel,
        devices: contexts,
    }
}

pub fn channel_row(id: &ChannelId, business: &BusinessId) -> Channel {
    Channel {
        id: id.clone(),
        name: format!("Channel {id}"),
        engine: "sms".into(),
        business_id: business.clone(),
        backup_channel_id: None,
        heartbeat_timeout_ms: None,
        grace_ms: None,
        created_at: T0,
        updated_at: T0,
        revision: 0,
    }
}

/// A device on `channel`, as its token finds it.
pub async fn device(
    store: &SharedStore,
    account: &AccountId,
    channel: &ChannelId,
    id: &str,
) -> DeviceContext {
    device_within(store, account, channel, id, u32::MAX)
        .await
        .unwrap()
}

/// As [`device`], made only if the account has fewer than `cap` devices.
pub async fn device_within(
    store: &SharedStore,
    account: &AccountId,
    channel: &ChannelId,
    id: &str,
    cap: u32,
) -> StoreResult<DeviceContext> {
    let token = format!("token-{account}-{id}");
    store
        .create_device(
            account.clone(),
            Device {
                id: DeviceId::from(id),
                name: format!("Phone {id}"),
                channel_id: channel.clone(),
                phone: Some("+62811".into()),
                status: Presence::Unknown,
                status_since: None,
                created_at: T0,
                updated_at: T0,
                revision: 0,
            },
            token_hash(&token),
            cap,
        )
        .await?;
    Ok(store
        .device_for_token(token_hash(&token))
        .await?
        .expect("the device's token finds it"))
}

/// An endpoint of every event and no filter, changed by `configure`.
pub async fn endpoint(
    store: &SharedStore,
    account: &AccountId,
    id: &str,
    configure: impl FnOnce(&mut Endpoint),
) -> Endpoint {
    endpoint_within(store, account, id, configure, u32::MAX)
        .await
        .unwrap()
}

/// As [`endpoint`], made only if the account has fewer than `cap` endpoints.
pub async fn endpoint_within(
    store: &SharedStore,
    account: &AccountId,
    id: &str,
    configure: impl FnOnce(&mut Endpoint),
    cap: u32,
) -> StoreResult<Endpoint> {
    let mut e = Endpoint {
        id: EndpointId::from(id),
        url: format!("https://example.com/{id}"),
        description: None,
        events: None,
        business_ids: Vec::new(),
        channel_ids: Vec::new(),
        device_ids: Vec::new(),
        format: BodyFormat::Json,
        secret_in_body: false,
        headers: BTreeMap::new(),
        ordering: None,
        max_concurrency: None,
        rate_limit: None,
        disabled: false,
        disabled_reason: None,
        disabled_at: None,
        failing_since: None,
        paused_until: None,
        created_at: T0,
        updated_at: T0,
        revision: 0,
    };
    configure(&mut e);
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string();
    store.create_endpoint(account.clone(), e, secret, cap).await
}

/// An SMS as a device posts it, prepared as the device API prepares it.
pub fn sms(device: &DeviceContext, rid: i64, message: &str) -> PreparedItem {
    item(device, Rid::Int(rid), message)
}

pub fn item(device: &DeviceContext, rid: Rid, message: &str) -> PreparedItem {
    sms_from(device, rid, "+639760713666", message)
}

/// An SMS from `phone`.
pub fn sms_from(device: &DeviceContext, rid: Rid, phone: &str, message: &str) -> PreparedItem {
    let sent = json!({"type": "sms", "rid": rid, "phone": phone, "message": message});
    PreparedItem {
        rid_key: rid_key(&rid).expect("a valid rid"),
        content_hash: canonical_digest(&sent),
        event: InboundEvent::Sms(Sms {
            id: 0,
            rid: rid.clone(),
            sim: 1,
            device: device.device_id.to_string(),
            phone: phone.into(),
            message: message.into(),
            timestamp: T0 / 1000,
        }),
        rid,
    }
}

/// The worker's room as a case sees it: `free` deliveries' worth, and what was handed over
/// once the write committed; with an offer, what it had no room for is offered to another
/// node until then, and what was offered once committed is kept too.
#[derive(Clone)]
pub struct Room {
    free: Arc<Mutex<usize>>,
    pub handed: Arc<Mutex<Vec<DueDelivery>>>,
    lease_until: i64,
    offer_until: Option<i64>,
    pub offered: Arc<Mutex<Vec<Offered>>>,
}

impl Room {
    pub fn new(free: usize, lease_until: i64) -> Room {
        Room {
            free: Arc::new(Mutex::new(free)),
            handed: Arc::default(),
            lease_until,
            offer_until: None,
            offered: Arc::default(),
        }
    }

    /// No room here: every delivery due now is offered to another node until `until`.
    pub fn offering(until: i64) -> Room {
        Room {
            offer_until: Some(until),
            ..Room::new(0, 0)
        }
    }

    /// None: every delivery is stored due, for the worker to claim.
    pub fn none() -> Box<dyn Reservation> {
        Room::new(0, 0).reserve()
    }

    pub fn reserve(&self) -> Box<dyn Reservation> {
        Box::new(Reserved {
            room: self.clone(),
            taken: 0,
            pushed: Vec::new(),
            offered: Vec::new(),
        })
    }

    pub fn free(&self) -> usize {
        *self.free.lock().unwrap()
    }
}

struct Reserved {
    room: Room,
    taken: usize,
    pushed: Vec<DueDelivery>,
    offered: Vec<Offered>,
}

impl Reservation for Reserved {
    fn take_room(&mut self, _endpoint: &EndpointId) -> bool {
        let mut free = self.room.free.lock().unwrap();
        if *free == 0 {
            return false;
        }
        *free -= 1;
        self.taken += 1;
        true
    }

    fn lease_until(&self) -> i64 {
        self.room.lease_until
    }

    fn offer_until(&mut self, _endpoint: &EndpointId) -> Option<i64> {
        self.room.offer_until
    }

    fn offered(&mut self, _endpoint: &EndpointId, delivery: Offered) {
        self.offered.push(delivery);
    }

    fn push(&mut self, delivery: DueDelivery) {
        self.pushed.push(delivery);
    }

    fn hand_over(mut self: Box<Self>) {
        self.taken = 0;
        let pushed = std::mem::take(&mut self.pushed);
        self.room.handed.lock().unwrap().extend(pushed);
        let offered = std::mem::take(&mut self.offered);
        self.room.offered.lock().unwrap().extend(offered);
    }

    fn unanswered(self: Box<Self>) {}
}

impl Drop for Reserved {
    fn drop(&mut self) {
        *self.room.free.lock().unwrap() += self.taken;
    }
}

/// Stores items of a device with no room in the worker: every delivery due.
pub async fn ingest(
    store: &SharedStore,
    device: &Arc<DeviceContext>,
    items: Vec<PreparedItem>,
    now: i64,
) -> IngestResult {
    store
        .ingest(device.clone(), items, now, Room::none())
        .await
        .unwrap()
}

/// The event a single item became.
pub async fn one_event(
    store: &SharedStore,
    device: &Arc<DeviceContext>,
    rid: i64,
    now: i64,
) -> EventId {
    let result = ingest(
        store,
        device,
        vec![sms(device, rid, &format!("m{rid}"))],
        now,
    )
    .await;
    result.items[0].event_id.clone()
}

pub async fn event(store: &SharedStore, account: &AccountId, id: &EventId) -> EventDetail {
    store.get_event(account.clone(), id.clone()).await.unwrap()
}

/// The event's deliveries to `endpoint`, oldest first.
pub fn to<'a>(event: &'a EventDetail, endpoint: &str) -> Vec<&'a DeliveryDetail> {
    event
        .deliveries
        .iter()
        .filter(|d| d.endpoint_id == endpoint)
        .collect()
}

/// The node the cases run as.
pub const NODE: &str = "node_contract";

/// Long enough that no test run outlives it.
pub const LONG: i64 = 3_600_000;

/// The fence of `node` once it joined (again) and took every slot free.
pub async fn fence_of(store: &SharedStore, node: &str) -> Arc<Fence> {
    store
        .join_cluster(node, "host", LONG)
        .await
        .unwrap()
        .expect("the database is free");
    let held = store
        .trade_slots(node, (0..SLOTS).collect(), Vec::new(), T0)
        .await
        .unwrap()
        .held;
    Arc::new(Fence {
        node: node.into(),
        epochs: held,
    })
}

/// The cases' node's fence, holding every slot.
pub async fn fence(store: &SharedStore) -> Arc<Fence> {
    fence_of(store, NODE).await
}

/// Everything due at `now`, leased until a minute later.
pub async fn claim(store: &SharedStore, now: i64) -> Vec<DueDelivery> {
    store
        .claim_due(fence(store).await, now, 1000, now + 60_000)
        .await
        .unwrap()
}

/// The endpoints of what was claimed, sorted.
pub fn endpoints_of(claimed: &[DueDelivery]) -> Vec<String> {
    let mut ids: Vec<String> = claimed.iter().map(|d| d.endpoint.id.to_string()).collect();
    ids.sort();
    ids
}

/// An attempt of `due` started at `at`, 5 ms long, answered `status`.
pub fn attempt(due: &DueDelivery, at: i64, status: Option<u16>, next: NextStep) -> AttemptRecord {
    AttemptRecord {
        delivery_id: due.delivery_id,
        endpoint: due.endpoint.clone(),
        attempt: due.attempt,
        started_at: at,
        duration_ms: 5,
        status_code: status,
        error_kind: status
            .filter(|s| !(200..300).contains(s))
            .map(|_| "http_status".into()),
        error: None,
        response_body: status.map(|s| format!("answer {s}")),
        next,
    }
}

/// Records the attempts in one batch.
pub async fn record(
    store: &SharedStore,
    attempts: Vec<AttemptRecord>,
    disable_after_ms: i64,
) -> merpati_domain::delivery::Recorded {
    store
        .record_attempts(fence(store).await, Arc::new(attempts), disable_after_ms)
        .await
        .unwrap()
}

/// A week: long enough that no case disables an endpoint for failing by accident.
pub const WEEK_MS: i64 = 7 * 24 * 3600 * 1000;
