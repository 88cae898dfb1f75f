//! The presence hub: one task owns every device's state machine and every deadline.
//!
//! Deadlines live in one ordered set, so 10,000 devices cost one timer, not 10,000 tasks,
//! and nothing polls the database. Commands arrive on a channel; the hub takes all that are
//! waiting, applies them and the deadlines that came due, writes every resulting change in
//! one group, and only then answers: a device that is told "connected" has its
//! announcement on disk.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use merpati_domain::clock::SharedClock;
use merpati_domain::device::DeviceContext;
use merpati_domain::ids::{AccountId, DeviceId, EventId};
use merpati_domain::presence::machine::{
    Announced, Change, DeviceState, EngineReport, Input, Reason, Timeouts,
};
use merpati_domain::presence::{Applied, LeaseSettings, PresenceWrite, WriteKind};
use merpati_domain::{SharedStore, StoreError, StoreResult};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, Change as BusChange, DeviceStatus, StoredEvent};
use crate::delivery::DeliveryWaker;
use crate::metrics::Metrics;

/// `account \0 device`: one allocation, cheap to clone into the deadline set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceKey(Arc<str>);

impl DeviceKey {
    pub fn new(account: &str, device: &str) -> Self {
        DeviceKey(format!("{account}\0{device}").into())
    }
    pub fn parts(&self) -> (&str, &str) {
        self.0.split_once('\0').expect("keys hold a separator")
    }

    fn ids(&self) -> (AccountId, DeviceId) {
        let (account, device) = self.parts();
        (account.into(), device.into())
    }
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveStatus {
    Unknown,
    Connected,
    /// Lost, inside the grace: not announced (yet).
    Pending,
    Disconnected,
}

impl LiveStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            LiveStatus::Unknown => "unknown",
            LiveStatus::Connected => "connected",
            LiveStatus::Pending => "pending",
            LiveStatus::Disconnected => "disconnected",
        }
    }

    fn on_bus(self) -> Option<DeviceStatus> {
        match self {
            LiveStatus::Unknown => None,
            LiveStatus::Connected => Some(DeviceStatus::Connected),
            LiveStatus::Pending => Some(DeviceStatus::Pending),
            LiveStatus::Disconnected => Some(DeviceStatus::Disconnected),
        }
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

/// A device as a request presents it: enough to start its machine if the hub has none.
#[derive(Debug, Clone)]
struct Target {
    key: DeviceKey,
    timeouts: Timeouts,
    announced: Announced,
    since: Option<i64>,
    engine: Option<EngineReport>,
}

impl Target {
    fn of(d: &DeviceContext, timeouts: Timeouts) -> Target {
        Target {
            key: DeviceKey::new(d.account_id.as_str(), d.device_id.as_str()),
            timeouts,
            announced: d.presence.into(),
            since: d.presence_since,
            engine: d.engine_state,
        }
    }
}

type Reply<T> = oneshot::Sender<StoreResult<T>>;

enum Command {
    Input {
        target: Target,
        input: Input,
        reply: Reply<Outcome>,
    },
    Heartbeat {
        target: Target,
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
        target: Target,
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
    View {
        key: DeviceKey,
        reply: oneshot::Sender<Option<LiveView>>,
    },
    Tick {
        reply: oneshot::Sender<()>,
    },
}

/// The rest of the server's way to the hub.
#[derive(Clone)]
pub struct PresenceHandle {
    tx: mpsc::Sender<Command>,
    next_link: Arc<AtomicU64>,
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

    pub async fn input(
        &self,
        device: &DeviceContext,
        timeouts: Timeouts,
        input: Input,
    ) -> StoreResult<Outcome> {
        let target = Target::of(device, timeouts);
        self.ask(|reply| Command::Input {
            target,
            input,
            reply,
        })
        .await?
    }

    pub async fn heartbeat(
        &self,
        device: &DeviceContext,
        timeouts: Timeouts,
        telemetry: Telemetry,
    ) -> StoreResult<Result<Outcome, i64>> {
        let target = Target::of(device, timeouts);
        self.ask(|reply| Command::Heartbeat {
            target,
            telemetry,
            reply,
        })
        .await?
    }

    /// A heartbeat frame on a link; dropped rather than waited for when the hub is busy.
    pub fn seen(&self, device: &DeviceContext, telemetry: Telemetry) {
        let key = DeviceKey::new(device.account_id.as_str(), device.device_id.as_str());
        let _ = self.tx.try_send(Command::Seen { key, telemetry });
    }

    /// Registers a new link; the receiver fires when the hub wants it closed.
    pub async fn link_opened(
        &self,
        device: &DeviceContext,
        timeouts: Timeouts,
    ) -> StoreResult<(u64, oneshot::Receiver<LinkClose>, Outcome)> {
        let link = self.next_link.fetch_add(1, Ordering::Relaxed);
        let (closer, closed) = oneshot::channel();
        let target = Target::of(device, timeouts);
        let outcome = self
            .ask(|reply| Command::LinkOpened {
                target,
                link,
                closer,
                reply,
            })
            .await??;
        Ok((link, closed, outcome))
    }

    pub async fn link_closed(&self, device: &DeviceContext, link: u64, reason: Reason) {
        let key = DeviceKey::new(device.account_id.as_str(), device.device_id.as_str());
        let _ = self
            .tx
            .send(Command::LinkClosed { key, link, reason })
            .await;
    }

    /// Closes the device's link, if it has one (its token changed, or it was deleted).
    pub async fn close_link(&self, account: &AccountId, device: &DeviceId, close: LinkClose) {
        let key = DeviceKey::new(account.as_str(), device.as_str());
        let _ = self.tx.send(Command::Close { key, close }).await;
    }

    pub async fn view(&self, account: &AccountId, device: &DeviceId) -> Option<LiveView> {
        let key = DeviceKey::new(account.as_str(), device.as_str());
        self.ask(|reply| Command::View { key, reply })
            .await
            .ok()
            .flatten()
    }

    /// Makes the hub look at its deadlines now and waits until what came due is written.
    /// With a manual clock, this is how tests move time.
    pub async fn tick(&self) {
        let _ = self.ask(|reply| Command::Tick { reply }).await;
    }
}

struct Entry {
    machine: DeviceState,
    deadline: Option<i64>,
    link: Option<(u64, oneshot::Sender<LinkClose>)>,
    last_seen: Option<i64>,
    telemetry: Option<Telemetry>,
    /// Heartbeat allowance (a token bucket), refilled over time.
    allowance: f64,
    allowance_at: i64,
}

/// The hub is gone: the server is stopping.
fn hub_gone() -> StoreError {
    StoreError::Unavailable("the presence hub has stopped".into())
}

impl Entry {
    fn status(&self) -> LiveStatus {
        if self.machine.is_pending() {
            return LiveStatus::Pending;
        }
        match self.machine.announced {
            Announced::Unknown => LiveStatus::Unknown,
            Announced::Up => LiveStatus::Connected,
            Announced::Down => LiveStatus::Disconnected,
        }
    }
}

/// Heartbeats a device may send at once before the steady rate applies.
const HEARTBEAT_BURST: f64 = 10.0;
const MAX_BATCH: usize = 2048;
const QUEUE: usize = 16_384;

pub struct Hub {
    entries: HashMap<DeviceKey, Entry>,
    deadlines: BTreeSet<(i64, DeviceKey)>,
    rx: mpsc::Receiver<Command>,
    store: SharedStore,
    clock: SharedClock,
    waker: DeliveryWaker,
    bus: Bus,
    lease: LeaseSettings,
    /// One heartbeat per this many ms, on average.
    heartbeat_every_ms: i64,
    announced_wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    /// The status each device the current batch touched had before it, to tell the bus
    /// what changed once the batch is written (kept only while someone listens).
    before: HashMap<DeviceKey, LiveStatus>,
}

/// What a command waits for: the write group's outcome.
enum Waiting {
    Outcome(Reply<Outcome>, DeviceKey, Option<usize>),
    Heartbeat(Reply<Result<Outcome, i64>>, DeviceKey, Option<usize>),
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
        shutdown,
    } = settings;
    let (tx, rx) = mpsc::channel(QUEUE);
    let handle = PresenceHandle {
        tx,
        next_link: Arc::new(AtomicU64::new(1)),
    };
    let hub = Hub {
        entries: HashMap::new(),
        deadlines: BTreeSet::new(),
        rx,
        store,
        clock,
        waker,
        bus,
        lease,
        heartbeat_every_ms: min_heartbeat_interval.as_millis().max(1) as i64,
        announced_wake: announced,
        metrics,
        shutdown,
        before: HashMap::new(),
    };
    (handle, hub)
}

impl Hub {
    pub async fn run(mut self) {
        let mut batch = Vec::new();
        loop {
            let wait = self.deadlines.first().map(|(at, _)| {
                let ms = (*at - self.clock.now_ms()).max(0) as u64;
                tokio::time::sleep(Duration::from_millis(ms))
            });
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                command = self.rx.recv() => match command {
                    Some(c) => batch.push(c),
                    None => break,
                },
                _ = async { wait.expect("guarded").await }, if wait.is_some() => {}
            }
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            self.process(std::mem::take(&mut batch)).await;
        }
    }

    /// Rebuilds every device that was up from the store. Done before the server accepts
    /// anything, so that restored leases start at the restart.
    pub async fn restore(&mut self) -> StoreResult<()> {
        let now = self.clock.now_ms();
        let stored = self.store.presence_to_restore().await?;
        let count = stored.len();
        for s in stored {
            let timeouts =
                self.lease
                    .timeouts(&s.engine, s.channel_heartbeat_ms, s.channel_grace_ms);
            let machine =
                DeviceState::restored(s.announced, s.since, s.engine_state, timeouts, now);
            let key = DeviceKey::new(s.account_id.as_str(), s.device_id.as_str());
            let entry = self.entry(key.clone(), || machine);
            entry.machine.timeouts = timeouts;
            self.reschedule(&key);
        }
        if count > 0 {
            tracing::info!(devices = count, "presence restored");
        }
        Ok(())
    }

    fn entry(&mut self, key: DeviceKey, make: impl FnOnce() -> DeviceState) -> &mut Entry {
        self.entries.entry(key).or_insert_with(|| Entry {
            machine: make(),
            deadline: None,
            link: None,
            last_seen: None,
            telemetry: None,
            allowance: HEARTBEAT_BURST,
            allowance_at: 0,
        })
    }

    fn target_entry(&mut self, t: &Target, now: i64) -> &mut Entry {
        let entry = self.entry(t.key.clone(), || {
            DeviceState::restored(t.announced, t.since, t.engine, t.timeouts, now)
        });
        // Settings may have changed since the machine was made.
        entry.machine.timeouts = t.timeouts;
        entry
    }

    fn reschedule(&mut self, key: &DeviceKey) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        let next = entry.machine.deadline();
        if next == entry.deadline {
            return;
        }
        if let Some(old) = entry.deadline {
            self.deadlines.remove(&(old, key.clone()));
        }
        if let Some(new) = next {
            self.deadlines.insert((new, key.clone()));
        }
        entry.deadline = next;
    }

    /// Applies an input; queues its changes; returns the index of its announcement.
    fn apply(
        &mut self,
        key: &DeviceKey,
        input: Input,
        now: i64,
        writes: &mut Vec<PresenceWrite>,
    ) -> Option<usize> {
        let entry = self.entries.get_mut(key)?;
        if self.bus.is_watched() {
            self.before
                .entry(key.clone())
                .or_insert_with(|| entry.status());
        }
        let changes = entry.machine.apply(input, now);
        let (account, device) = key.ids();
        let mut announcement = None;
        let engine = match input {
            Input::Report(report) => Some(Some(report)),
            Input::EngineWorking => Some(None),
            _ => None,
        };
        if let Some(report) = engine {
            writes.push(PresenceWrite {
                account_id: account.clone(),
                device_id: device.clone(),
                what: WriteKind::Engine(report),
            });
        }
        for change in changes {
            if matches!(
                change,
                Change::Connected { .. } | Change::Disconnected { .. }
            ) {
                announcement = Some(writes.len());
            }
            writes.push(PresenceWrite {
                account_id: account.clone(),
                device_id: device.clone(),
                what: WriteKind::Change(change),
            });
        }
        self.reschedule(key);
        announcement
    }

    async fn process(&mut self, batch: Vec<Command>) {
        let now = self.clock.now_ms();
        let mut writes = Vec::new();
        let mut waiting = Vec::new();
        for command in batch {
            match command {
                Command::Input {
                    target,
                    input,
                    reply,
                } => {
                    self.target_entry(&target, now);
                    let idx = self.apply(&target.key, input, now, &mut writes);
                    waiting.push(Waiting::Outcome(reply, target.key, idx));
                }
                Command::Heartbeat {
                    target,
                    telemetry,
                    reply,
                } => {
                    let every = self.heartbeat_every_ms as f64;
                    let entry = self.target_entry(&target, now);
                    let refill = (now - entry.allowance_at).max(0) as f64 / every;
                    entry.allowance = (entry.allowance + refill).min(HEARTBEAT_BURST);
                    entry.allowance_at = now;
                    if entry.allowance < 1.0 {
                        let wait = ((1.0 - entry.allowance) * every).ceil() as i64;
                        let _ = reply.send(Ok(Err(wait)));
                        continue;
                    }
                    entry.allowance -= 1.0;
                    entry.last_seen = Some(now);
                    entry.telemetry = Some(telemetry);
                    let idx = self.apply(&target.key, Input::Heartbeat, now, &mut writes);
                    waiting.push(Waiting::Heartbeat(reply, target.key, idx));
                }
                Command::Seen { key, telemetry } => {
                    if let Some(entry) = self.entries.get_mut(&key) {
                        entry.last_seen = Some(now);
                        entry.telemetry = Some(telemetry);
                    }
                }
                Command::LinkOpened {
                    target,
                    link,
                    closer,
                    reply,
                } => {
                    let entry = self.target_entry(&target, now);
                    if let Some((_, older)) = entry.link.replace((link, closer)) {
                        let _ = older.send(CLOSE_REPLACED);
                    }
                    entry.last_seen = Some(now);
                    let idx = self.apply(&target.key, Input::LinkOpened { link }, now, &mut writes);
                    waiting.push(Waiting::Outcome(reply, target.key, idx));
                }
                Command::LinkClosed { key, link, reason } => {
                    if let Some(entry) = self.entries.get_mut(&key) {
                        if entry.link.as_ref().is_some_and(|(l, _)| *l == link) {
                            entry.link = None;
                        }
                    }
                    self.apply(&key, Input::LinkClosed { link, reason }, now, &mut writes);
                }
                Command::Close { key, close } => {
                    if let Some((_, closer)) =
                        self.entries.get_mut(&key).and_then(|e| e.link.take())
                    {
                        let _ = closer.send(close);
                    }
                }
                Command::View { key, reply } => {
                    let view = self.entries.get(&key).map(|e| LiveView {
                        status: e.status(),
                        link_open: e.machine.link_open(),
                        last_seen: e.last_seen,
                        telemetry: e.telemetry.clone(),
                    });
                    let _ = reply.send(view);
                }
                Command::Tick { reply } => waiting.push(Waiting::Tick(reply)),
            }
        }
        // Every deadline that has come, in order.
        while let Some((at, key)) = self.deadlines.first().cloned() {
            if at > now {
                break;
            }
            self.deadlines.remove(&(at, key.clone()));
            if let Some(entry) = self.entries.get_mut(&key) {
                entry.deadline = None;
            }
            self.apply(&key, Input::Tick, now, &mut writes);
        }

        let announced = self.announced(&writes);
        let kinds: Vec<Option<&'static str>> = writes.iter().map(announcement_type).collect();
        let applied = if writes.is_empty() {
            Ok(Default::default())
        } else {
            let count = writes.len();
            let result = self.store.apply_presence(writes, now).await;
            match &result {
                Ok(a) if a.new_deliveries > 0 => self.waker.wake(),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, writes = count, "presence not recorded"),
            }
            result
        };
        let before = std::mem::take(&mut self.before);
        if let Ok(applied) = &applied {
            for i in applied.event_ids.keys() {
                if let Some(Some(event_type)) = kinds.get(*i) {
                    self.metrics.event(event_type);
                }
            }
            if !applied.event_ids.is_empty() {
                self.announced_wake.notify_one();
            }
            self.publish(announced, applied, before, now);
        }
        for w in waiting {
            let event_of = |idx: Option<usize>| {
                let applied = applied.as_ref().ok()?;
                idx.and_then(|i| applied.event_ids.get(&i).cloned())
            };
            let status_of = |key: &DeviceKey| {
                self.entries
                    .get(key)
                    .map(Entry::status)
                    .unwrap_or(LiveStatus::Unknown)
            };
            match w {
                Waiting::Outcome(reply, key, idx) => {
                    let answer = match &applied {
                        Ok(_) => Ok(Outcome {
                            status: status_of(&key),
                            event_id: event_of(idx),
                        }),
                        Err(e) => Err(e.clone()),
                    };
                    let _ = reply.send(answer);
                }
                Waiting::Heartbeat(reply, key, idx) => {
                    let answer = match &applied {
                        Ok(_) => Ok(Ok(Outcome {
                            status: status_of(&key),
                            event_id: event_of(idx),
                        })),
                        Err(e) => Err(e.clone()),
                    };
                    let _ = reply.send(answer);
                }
                Waiting::Tick(reply) => {
                    let _ = reply.send(());
                }
            }
        }
    }
}

/// The event a write announces, if it announces one.
fn announcement_type(w: &PresenceWrite) -> Option<&'static str> {
    match w.what {
        WriteKind::Change(Change::Connected { .. }) => Some("device.connected"),
        WriteKind::Change(Change::Disconnected { .. }) => Some("device.disconnected"),
        _ => None,
    }
}

impl Hub {
    /// The announcements among the writes, by write index, for the bus: (account, device,
    /// event type). Empty while nobody listens.
    fn announced(
        &self,
        writes: &[PresenceWrite],
    ) -> Vec<(usize, AccountId, DeviceId, &'static str)> {
        if !self.bus.is_watched() {
            return Vec::new();
        }
        writes
            .iter()
            .enumerate()
            .filter_map(|(i, w)| {
                let event_type = announcement_type(w)?;
                Some((i, w.account_id.clone(), w.device_id.clone(), event_type))
            })
            .collect()
    }

    /// Tells the bus what a batch, now written, changed: the announcements stored, and each
    /// device whose status moved.
    fn publish(
        &self,
        announced: Vec<(usize, AccountId, DeviceId, &'static str)>,
        applied: &Applied,
        before: HashMap<DeviceKey, LiveStatus>,
        now: i64,
    ) {
        for (i, account, device, event_type) in announced {
            let Some(id) = applied.event_ids.get(&i) else {
                continue;
            };
            self.bus.publish(BusChange::EventsStored {
                account,
                events: Arc::new([StoredEvent {
                    id: id.clone(),
                    event_type,
                    device: Some(device),
                }]),
            });
        }
        for (key, was) in before {
            let Some(entry) = self.entries.get(&key) else {
                continue;
            };
            let status = entry.status();
            let Some(on_bus) = status.on_bus().filter(|_| status != was) else {
                continue;
            };
            let at = match status {
                LiveStatus::Pending => now,
                _ => entry.machine.announced_since.unwrap_or(now),
            };
            let (account, device) = key.ids();
            self.bus.publish(BusChange::Device {
                account,
                device,
                status: on_bus,
                at,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_back() {
        let k = DeviceKey::new("acct", "dev:1");
        assert_eq!(k.parts(), ("acct", "dev:1"));
    }
}
