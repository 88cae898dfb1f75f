//! The presence hub: one task per node steps the devices that talk to it, sweeps the
//! deadlines that came, and holds the node's links.
//!
//! Every device's machine lives in the database, and each step is one transaction that
//! locks the rows it moves (`PresenceStore::step_presence`), so any node may take the next
//! step of any device. Commands arrive on a channel; the hub takes all that are waiting,
//! steps them with the deadlines that came in one transaction, and only then answers: a
//! device that is told "connected" has its announcement on disk. A node alone knows every
//! deadline (the store answers the earliest), so it wakes only for them; nodes sharing the
//! database also sweep each second for the deadlines others wrote and the links of nodes
//! that are gone, and close their own links that a newer one replaced elsewhere.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use merpati_domain::clock::SharedClock;
use merpati_domain::device::DeviceContext;
use merpati_domain::ids::{AccountId, DeviceId, EventId};
pub use merpati_domain::presence::machine::LiveStatus;
use merpati_domain::presence::machine::{Input, Reason};
use merpati_domain::presence::step::{CloseWhy, DeviceKey, DeviceRequest, Request, Stepped};
use merpati_domain::presence::{HeldLink, LeaseSettings, PresenceStep};
use merpati_domain::{SharedStore, StoreError, StoreResult};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, Change as BusChange, DeviceStatus, StoredEvent};
use crate::cluster::Ownership;
use crate::delivery::DeliveryWaker;
use crate::metrics::Metrics;

/// What a phone says of itself with its heartbeats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Telemetry {
    /// Percent, 0–100.
    pub battery: Option<u8>,
    pub charging: Option<bool>,
    /// Signal strength as the device measures it (dBm, or bars).
    pub signal: Option<i32>,
    /// `wifi`, `4g`, …
    pub network: Option<String>,
}

fn on_bus(status: LiveStatus) -> Option<DeviceStatus> {
    match status {
        LiveStatus::Unknown => None,
        LiveStatus::Connected => Some(DeviceStatus::Connected),
        LiveStatus::Pending => Some(DeviceStatus::Pending),
        LiveStatus::Disconnected => Some(DeviceStatus::Disconnected),
    }
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: LiveStatus,
    /// The announcement this command caused, if any.
    pub event_id: Option<EventId>,
}

#[derive(Debug, Clone)]
pub struct LiveView {
    pub status: LiveStatus,
    pub link_open: bool,
    pub last_seen: Option<i64>,
    pub telemetry: Option<Telemetry>,
}

/// Why the hub closes a link: a WebSocket close code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkClose {
    pub code: u16,
    pub reason: &'static str,
}

pub const CLOSE_REPLACED: LinkClose = LinkClose {
    code: 4002,
    reason: "replaced by a newer link of this device",
};
pub const CLOSE_TOKEN: LinkClose = LinkClose {
    code: 4001,
    reason: "the device token was rotated or the device deleted",
};
/// The node lost its lease on the database: the others count its links as lost, so the
/// device is to connect again (to any node).
pub const CLOSE_NODE_LOST: LinkClose = LinkClose {
    code: 1012,
    reason: "this node lost its lease on the database; connect again",
};

fn close_for(why: CloseWhy) -> LinkClose {
    match why {
        CloseWhy::Replaced => CLOSE_REPLACED,
        CloseWhy::Revoked => CLOSE_TOKEN,
    }
}

type Reply<T> = oneshot::Sender<StoreResult<T>>;

enum Command {
    Input {
        key: DeviceKey,
        input: Input,
        reply: Reply<Outcome>,
    },
    Heartbeat {
        key: DeviceKey,
        telemetry: Telemetry,
        /// Err: refused for flooding, retry after this many ms.
        reply: Reply<Result<Outcome, i64>>,
    },
    /// A heartbeat inside a link: the link holds the lease, this only says "seen".
    Seen {
        key: DeviceKey,
        telemetry: Telemetry,
    },
    LinkOpened {
        key: DeviceKey,
        link: u64,
        closer: oneshot::Sender<LinkClose>,
        reply: Reply<Outcome>,
    },
    LinkClosed {
        key: DeviceKey,
        link: u64,
        reason: Reason,
    },
    Close {
        key: DeviceKey,
        close: LinkClose,
    },
    Heard {
        key: DeviceKey,
        reply: oneshot::Sender<Option<(Option<i64>, Option<Telemetry>)>>,
    },
    Tick {
        reply: oneshot::Sender<()>,
    },
}

fn key_of(device: &DeviceContext) -> DeviceKey {
    (device.account_id.clone(), device.device_id.clone())
}

/// The rest of the server's way to the hub.
#[derive(Clone)]
pub struct PresenceHandle {
    tx: mpsc::Sender<Command>,
    next_link: Arc<AtomicU64>,
    store: SharedStore,
}

impl PresenceHandle {
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(command(reply)).await.map_err(|_| hub_gone())?;
        answer.await.map_err(|_| hub_gone())
    }

    pub async fn input(&self, device: &DeviceContext, input: Input) -> StoreResult<Outcome> {
        let key = key_of(device);
        self.ask(|reply| Command::Input { key, input, reply })
            .await?
    }

    pub async fn heartbeat(
        &self,
        device: &DeviceContext,
        telemetry: Telemetry,
    ) -> StoreResult<Result<Outcome, i64>> {
        let key = key_of(device);
        self.ask(|reply| Command::Heartbeat {
            key,
            telemetry,
            reply,
        })
        .await?
    }

    /// A heartbeat frame on a link; dropped rather than waited for when the hub is busy.
    pub fn seen(&self, device: &DeviceContext, telemetry: Telemetry) {
        let _ = self.tx.try_send(Command::Seen {
            key: key_of(device),
            telemetry,
        });
    }

    /// Registers a new link; the receiver fires when the hub wants it closed.
    pub async fn link_opened(
        &self,
        device: &DeviceContext,
    ) -> StoreResult<(u64, oneshot::Receiver<LinkClose>, Outcome)> {
        let link = self.next_link.fetch_add(1, Ordering::Relaxed);
        let (closer, closed) = oneshot::channel();
        let key = key_of(device);
        let outcome = self
            .ask(|reply| Command::LinkOpened {
                key,
                link,
                closer,
                reply,
            })
            .await??;
        Ok((link, closed, outcome))
    }

    pub async fn link_closed(&self, device: &DeviceContext, link: u64, reason: Reason) {
        let key = key_of(device);
        let _ = self
            .tx
            .send(Command::LinkClosed { key, link, reason })
            .await;
    }

    /// Closes the device's link, on whichever node it is (its token changed, or it was
    /// deleted).
    pub async fn close_link(&self, account: &AccountId, device: &DeviceId, close: LinkClose) {
        let key = (account.clone(), device.clone());
        let _ = self.tx.send(Command::Close { key, close }).await;
    }

    /// The device's presence as stored, with what this node heard from it.
    pub async fn view(&self, account: &AccountId, device: &DeviceId) -> Option<LiveView> {
        let stored = self
            .store
            .presence_view(account.clone(), device.clone())
            .await
            .ok()
            .flatten()?;
        let key = (account.clone(), device.clone());
        let (last_seen, telemetry) = self
            .ask(|reply| Command::Heard { key, reply })
            .await
            .ok()
            .flatten()
            .unwrap_or((None, None));
        Some(LiveView {
            status: stored.status,
            link_open: stored.link_open,
            last_seen: last_seen.or(stored.last_heartbeat),
            telemetry,
        })
    }

    /// Makes the hub look at its deadlines now and waits until what came due is written.
    /// With a manual clock, this is how tests move time.
    pub async fn tick(&self) {
        let _ = self.ask(|reply| Command::Tick { reply }).await;
    }
}

/// What this node heard from a device: for views, and its heartbeat allowance.
struct Heard {
    last_seen: Option<i64>,
    telemetry: Option<Telemetry>,
    /// Heartbeat allowance (a token bucket), refilled over time.
    allowance: f64,
    allowance_at: i64,
}

impl Default for Heard {
    fn default() -> Self {
        Heard {
            last_seen: None,
            telemetry: None,
            allowance: HEARTBEAT_BURST,
            allowance_at: 0,
        }
    }
}

struct OpenLink {
    key: DeviceKey,
    closer: oneshot::Sender<LinkClose>,
}

/// The hub is gone: the server is stopping.
fn hub_gone() -> StoreError {
    StoreError::Unavailable("the presence hub has stopped".into())
}

/// Heartbeats a device may send at once before the steady rate applies.
const HEARTBEAT_BURST: f64 = 10.0;
const MAX_BATCH: usize = 2048;
const QUEUE: usize = 16_384;
/// How often nodes sharing the database sweep and look at their links.
const LOOK_EVERY: Duration = Duration::from_secs(1);

pub struct Hub {
    rx: mpsc::Receiver<Command>,
    store: SharedStore,
    clock: SharedClock,
    waker: DeliveryWaker,
    bus: Bus,
    lease: Arc<LeaseSettings>,
    /// One heartbeat per this many ms, on average.
    heartbeat_every_ms: i64,
    announced_wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    ownership: Arc<Ownership>,
    shutdown: CancellationToken,
    /// The node this hub's links are stored under.
    node: String,
    heard: HashMap<DeviceKey, Heard>,
    links: HashMap<u64, OpenLink>,
    /// The earliest deadline of any device, as the last step found it.
    next_deadline: Option<i64>,
    /// The last sweep stopped at its limit.
    more_due: bool,
}

/// What a command waits for: the step's outcome.
enum Waiting {
    Outcome(Reply<Outcome>, usize),
    Heartbeat(Reply<Result<Outcome, i64>>, usize),
    Tick(oneshot::Sender<()>),
}

/// What the hub needs.
pub struct HubSettings {
    pub store: SharedStore,
    pub clock: SharedClock,
    pub waker: DeliveryWaker,
    pub bus: Bus,
    pub lease: LeaseSettings,
    /// Heartbeats faster than one per this (after a burst of ten) are refused.
    pub min_heartbeat_interval: Duration,
    /// Notified once a batch with announcements is written (the alert runner waits on it).
    pub announced: Arc<Notify>,
    pub metrics: Arc<Metrics>,
    /// Whose node this is, and whether others share the database.
    pub ownership: Arc<Ownership>,
    pub shutdown: CancellationToken,
}

pub fn hub(settings: HubSettings) -> (PresenceHandle, Hub) {
    let HubSettings {
        store,
        clock,
        waker,
        bus,
        lease,
        min_heartbeat_interval,
        announced,
        metrics,
        ownership,
        shutdown,
    } = settings;
    let (tx, rx) = mpsc::channel(QUEUE);
    // Link numbers are the node's own; starting each run at random keeps a restarted
    // node's numbers apart from what it stored before.
    let first_link = rand::random::<u64>() >> 2 | 1;
    let handle = PresenceHandle {
        tx,
        next_link: Arc::new(AtomicU64::new(first_link)),
        store: store.clone(),
    };
    let hub = Hub {
        rx,
        store,
        clock,
        waker,
        bus,
        lease: Arc::new(lease),
        heartbeat_every_ms: min_heartbeat_interval.as_millis().max(1) as i64,
        announced_wake: announced,
        metrics,
        node: ownership.node(),
        ownership,
        shutdown,
        heard: HashMap::new(),
        links: HashMap::new(),
        next_deadline: None,
        more_due: false,
    };
    (handle, hub)
}

impl Hub {
    /// Gets the hub ready before the server accepts anything: after every node was down
    /// (`after_restart`), every machine restarts (no link survived, and nobody could hear
    /// the devices meanwhile); then one sweep, which also finds the earliest deadline.
    pub async fn start(&mut self, after_restart: bool) -> StoreResult<()> {
        if after_restart {
            let now = self.clock.now_ms();
            let count = self.store.restart_presence(self.lease.clone(), now).await?;
            if count > 0 {
                tracing::info!(devices = count, "presence restarted");
            }
        }
        self.process(Vec::new(), true).await;
        Ok(())
    }

    pub async fn run(mut self) {
        let mut batch = Vec::new();
        let mut last_look = Instant::now();
        loop {
            let deadline = self.next_deadline.map(|at| {
                let ms = (at - self.clock.now_ms()).max(0) as u64;
                tokio::time::sleep(Duration::from_millis(ms))
            });
            let shared = self.ownership.shared();
            let mut looked = false;
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                command = self.rx.recv() => match command {
                    Some(c) => batch.push(c),
                    None => break,
                },
                _ = async { deadline.expect("guarded").await }, if deadline.is_some() => {}
                _ = tokio::time::sleep_until(last_look + LOOK_EVERY), if shared => looked = true,
                _ = std::future::ready(()), if self.more_due => {}
            }
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            let now = self.clock.now_ms();
            let sweep = looked || self.more_due || self.next_deadline.is_some_and(|at| at <= now);
            self.process(std::mem::take(&mut batch), sweep).await;
            if looked {
                last_look = Instant::now();
                self.close_stale_links().await;
            }
        }
    }

    /// A node whose lease ran out comes back as another: the others count the links it
    /// held as lost, so they are closed for their devices to connect again.
    fn follow_node(&mut self) {
        let node = self.ownership.node();
        if node == self.node {
            return;
        }
        let links = std::mem::take(&mut self.links);
        if !links.is_empty() {
            tracing::warn!(
                links = links.len(),
                "closing this node's links: it lost its lease"
            );
        }
        for (_, open) in links {
            let _ = open.closer.send(CLOSE_NODE_LOST);
        }
        self.node = node;
    }

    /// Closes this node's links that are no longer their device's: replaced by a newer
    /// link on another node, or revoked there.
    async fn close_stale_links(&mut self) {
        if self.links.is_empty() {
            return;
        }
        let held: Vec<HeldLink> = self
            .links
            .iter()
            .map(|(link, open)| HeldLink {
                link: *link,
                account_id: open.key.0.clone(),
                device_id: open.key.1.clone(),
            })
            .collect();
        match self.store.stale_links(self.node.clone(), held).await {
            Ok(stale) => {
                for (link, why) in stale {
                    if let Some(open) = self.links.remove(&link) {
                        let _ = open.closer.send(close_for(why));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot look whether this node's links are current")
            }
        }
    }

    fn heard(&mut self, key: &DeviceKey) -> &mut Heard {
        self.heard.entry(key.clone()).or_default()
    }

    /// Steps what the batch asks, sweeping too when `sweep` (or when asked to tick).
    async fn process(&mut self, batch: Vec<Command>, mut sweep: bool) {
        self.follow_node();
        let now = self.clock.now_ms();
        let mut requests = Vec::new();
        let mut waiting = Vec::new();
        let request = |key: &DeviceKey, request: Request| DeviceRequest {
            account_id: key.0.clone(),
            device_id: key.1.clone(),
            request,
        };
        for command in batch {
            match command {
                Command::Input { key, input, reply } => {
                    waiting.push(Waiting::Outcome(reply, requests.len()));
                    requests.push(request(&key, Request::Input(input)));
                }
                Command::Heartbeat {
                    key,
                    telemetry,
                    reply,
                } => {
                    let every = self.heartbeat_every_ms as f64;
                    let heard = self.heard(&key);
                    let refill = (now - heard.allowance_at).max(0) as f64 / every;
                    heard.allowance = (heard.allowance + refill).min(HEARTBEAT_BURST);
                    heard.allowance_at = now;
                    if heard.allowance < 1.0 {
                        let wait = ((1.0 - heard.allowance) * every).ceil() as i64;
                        let _ = reply.send(Ok(Err(wait)));
                        continue;
                    }
                    heard.allowance -= 1.0;
                    heard.last_seen = Some(now);
                    heard.telemetry = Some(telemetry);
                    waiting.push(Waiting::Heartbeat(reply, requests.len()));
                    requests.push(request(&key, Request::Input(Input::Heartbeat)));
                }
                Command::Seen { key, telemetry } => {
                    let heard = self.heard(&key);
                    heard.last_seen = Some(now);
                    heard.telemetry = Some(telemetry);
                }
                Command::LinkOpened {
                    key,
                    link,
                    closer,
                    reply,
                } => {
                    self.heard(&key).last_seen = Some(now);
                    waiting.push(Waiting::Outcome(reply, requests.len()));
                    requests.push(request(&key, Request::Input(Input::LinkOpened { link })));
                    self.links.insert(link, OpenLink { key, closer });
                }
                Command::LinkClosed { key, link, reason } => {
                    self.links.remove(&link);
                    requests.push(request(
                        &key,
                        Request::Input(Input::LinkClosed { link, reason }),
                    ));
                }
                Command::Close { key, close } => {
                    // A link here is closed at once (its close is then stepped as any);
                    // one elsewhere is revoked in the database, for its node to close.
                    let here = self
                        .links
                        .iter()
                        .find_map(|(link, open)| (open.key == key).then_some(*link));
                    match here.and_then(|link| self.links.remove(&link)) {
                        Some(open) => {
                            let _ = open.closer.send(close);
                        }
                        None => requests.push(request(&key, Request::Revoke)),
                    }
                }
                Command::Heard { key, reply } => {
                    let heard = self
                        .heard
                        .get(&key)
                        .map(|h| (h.last_seen, h.telemetry.clone()));
                    let _ = reply.send(heard);
                }
                Command::Tick { reply } => {
                    sweep = true;
                    waiting.push(Waiting::Tick(reply));
                }
            }
        }
        if requests.is_empty() && !sweep {
            // Nothing to step, and so nobody waits.
            return;
        }
        let count = requests.len();
        let step = PresenceStep {
            node: self.node.clone(),
            now,
            lease: self.lease.clone(),
            requests,
            sweep,
        };
        let stepped = self.store.step_presence(step).await;
        match &stepped {
            Ok(s) => self.stepped(s),
            Err(e) => {
                tracing::error!(error = %e, requests = count, "presence not recorded");
                // Looked at again soon rather than forgotten.
                self.more_due = sweep;
            }
        }
        for w in waiting {
            let outcome = |i: usize| -> StoreResult<Outcome> {
                let s = stepped.as_ref().map_err(Clone::clone)?;
                let (status, event_id) = s
                    .answers
                    .get(i)
                    .cloned()
                    .flatten()
                    .unwrap_or((LiveStatus::Unknown, None));
                Ok(Outcome { status, event_id })
            };
            match w {
                Waiting::Outcome(reply, i) => {
                    let _ = reply.send(outcome(i));
                }
                Waiting::Heartbeat(reply, i) => {
                    let _ = reply.send(outcome(i).map(Ok));
                }
                Waiting::Tick(reply) => {
                    let _ = reply.send(());
                }
            }
        }
    }

    /// Acts on a step written: closes the links it replaced here, wakes what waits on new
    /// deliveries and announcements, and tells the bus.
    fn stepped(&mut self, s: &Stepped) {
        self.next_deadline = s.next_deadline;
        self.more_due = s.more;
        for c in &s.closes {
            if c.node != self.node {
                continue;
            }
            if let Some(open) = self.links.remove(&c.link) {
                let _ = open.closer.send(close_for(c.why));
            }
        }
        if s.new_deliveries > 0 {
            self.waker.wake();
        }
        for a in &s.announced {
            self.metrics.event(a.event_type);
        }
        if !s.announced.is_empty() {
            self.announced_wake.notify_one();
        }
        if !self.bus.is_watched() {
            return;
        }
        for a in &s.announced {
            self.bus.publish(BusChange::EventsStored {
                account: a.account_id.clone(),
                events: Arc::new([StoredEvent {
                    id: a.event_id.clone(),
                    event_type: a.event_type,
                    device: Some(a.device_id.clone()),
                }]),
            });
        }
        for m in &s.moves {
            let Some(status) = on_bus(m.status) else {
                continue;
            };
            self.bus.publish(BusChange::Device {
                account: m.account_id.clone(),
                device: m.device_id.clone(),
                status,
                at: m.at,
            });
        }
    }
}
