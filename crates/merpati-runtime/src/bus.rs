//! Committed changes as events in the process: each write that changes what a person
//! watches (an event stored, a delivery's outcome, an endpoint disabled, paused or enabled,
//! a device up, pending or down, a job's progress) publishes a typed [`Change`] once its
//! commit is durable. Alerts and the dashboard's live view subscribe.
//!
//! The bus is bounded: a subscriber that falls behind misses the oldest changes and is told
//! how many it missed ([`Received::Missed`]), so it never holds the publishers up. Nothing
//! depends on it for correctness: the store is the truth, and a subscriber that missed
//! changes reads what it needs from there.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use merpati_domain::alert::IncidentState;
use merpati_domain::endpoint::DisableReason;
use merpati_domain::ids::{
    AccountId, DeliveryId, DeviceId, EndpointId, EventId, IncidentId, JobId,
};
use tokio::sync::broadcast;

/// What changed.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Events stored by one write: inbound items, announcements, notices.
    EventsStored {
        account: AccountId,
        events: Arc<[StoredEvent]>,
    },
    /// An attempt's outcome, recorded.
    Delivery(Arc<DeliveryChange>),
    Endpoint {
        account: AccountId,
        endpoint: EndpointId,
        state: EndpointState,
    },
    /// A device's presence as the presence hub sees it.
    Device {
        account: AccountId,
        device: DeviceId,
        status: DeviceStatus,
        /// When it took this status.
        at: i64,
    },
    /// An incident opened, was acknowledged or resolved.
    Incident {
        account: AccountId,
        incident: IncidentId,
        state: IncidentState,
    },
    Job {
        account: AccountId,
        job: JobId,
        done: i64,
        total: i64,
        finished: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub id: EventId,
    pub event_type: &'static str,
    pub device: Option<DeviceId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryChange {
    pub account: AccountId,
    pub endpoint: EndpointId,
    pub delivery: DeliveryId,
    pub attempt: i64,
    pub outcome: DeliveryOutcome,
    pub status_code: Option<u16>,
    pub duration_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Succeeded,
    Failed,
    /// To be attempted again at this time.
    Retrying(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointState {
    Disabled(DisableReason),
    Enabled,
    /// Its circuit breaker pauses it until then.
    Paused {
        until: i64,
    },
    /// Its breaker closed: it answers again.
    Resumed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStatus {
    Connected,
    /// Lost, inside the grace: not announced (yet).
    Pending,
    Disconnected,
}

/// The publishers' end; cheap to clone.
#[derive(Clone)]
pub struct Bus {
    sender: broadcast::Sender<Change>,
    subscribers: Arc<AtomicUsize>,
}

/// Changes a subscriber may fall behind by before it misses the oldest.
pub const DEFAULT_CAPACITY: usize = 4096;

impl Bus {
    pub fn new(capacity: usize) -> Bus {
        Bus {
            sender: broadcast::channel(capacity.max(1)).0,
            subscribers: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Whether anyone listens: publishers skip building a change nobody would read.
    pub fn is_watched(&self) -> bool {
        self.subscribers.load(Ordering::Relaxed) > 0
    }

    pub fn publish(&self, change: Change) {
        // No subscriber is no error: nothing depends on the bus.
        let _ = self.sender.send(change);
    }

    /// Builds and publishes a change only when someone listens.
    pub fn publish_with(&self, change: impl FnOnce() -> Change) {
        if self.is_watched() {
            self.publish(change());
        }
    }

    pub fn subscribe(&self) -> Subscriber {
        self.subscribers.fetch_add(1, Ordering::Relaxed);
        Subscriber {
            receiver: self.sender.subscribe(),
            subscribers: self.subscribers.clone(),
        }
    }
}

impl Default for Bus {
    fn default() -> Self {
        Bus::new(DEFAULT_CAPACITY)
    }
}

/// What a subscriber gets next.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    Change(Change),
    /// It fell behind and this many changes were dropped before the next one.
    Missed(u64),
}

pub struct Subscriber {
    receiver: broadcast::Receiver<Change>,
    subscribers: Arc<AtomicUsize>,
}

impl Subscriber {
    /// The next change, or how many were missed; `None` once every publisher is gone.
    pub async fn recv(&mut self) -> Option<Received> {
        match self.receiver.recv().await {
            Ok(change) => Some(Received::Change(change)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(Received::Missed(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// As `recv`, without waiting: `None` when nothing is waiting (or every publisher is
    /// gone).
    pub fn try_recv(&mut self) -> Option<Received> {
        match self.receiver.try_recv() {
            Ok(change) => Some(Received::Change(change)),
            Err(broadcast::error::TryRecvError::Lagged(n)) => Some(Received::Missed(n)),
            Err(_) => None,
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(done: i64) -> Change {
        Change::Job {
            account: "a".into(),
            job: "job_1".into(),
            done,
            total: 10,
            finished: false,
        }
    }

    #[tokio::test]
    async fn a_slow_subscriber_misses_the_oldest_and_is_told_how_many() {
        let bus = Bus::new(4);
        let mut slow = bus.subscribe();
        for done in 0..10 {
            bus.publish(job(done));
        }
        assert_eq!(slow.recv().await, Some(Received::Missed(6)));
        for done in 6..10 {
            assert_eq!(slow.recv().await, Some(Received::Change(job(done))));
        }
        assert_eq!(slow.try_recv(), None, "caught up");
    }

    #[tokio::test]
    async fn every_subscriber_gets_every_change_and_none_is_built_for_nobody() {
        let bus = Bus::new(8);
        let mut built = 0;
        bus.publish_with(|| {
            built += 1;
            job(0)
        });
        assert_eq!(built, 0, "nobody listens");
        let (mut a, mut b) = (bus.subscribe(), bus.subscribe());
        bus.publish_with(|| job(1));
        assert_eq!(a.recv().await, Some(Received::Change(job(1))));
        assert_eq!(b.recv().await, Some(Received::Change(job(1))));
        drop((a, b));
        assert!(!bus.is_watched());
        let mut late = bus.subscribe();
        drop(bus);
        assert_eq!(late.recv().await, None, "every publisher is gone");
    }
}
