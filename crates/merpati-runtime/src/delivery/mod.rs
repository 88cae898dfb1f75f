//! Delivery: the worker that takes due deliveries, sends each as one attempt and records the
//! outcome and the next step.
//!
//! - `handoff`: fresh deliveries from ingest to the worker, in memory, and the worker's room.
//! - `lane`: one endpoint's lane as pure logic (limits, pace, where to park); `breaker`: its
//!   circuit breaker.
//! - `lanes`: the worker's lanes together, and every delivery it holds a claim on.
//! - `worker`: the loop, as a struct and an enum of what woke it.
//! - `recorder`: writes attempts, many to a transaction.
//! - `send`: one attempt over the guarded HTTP client; `prepared`: each endpoint's signing
//!   keys and URL, worked out once; `guard`: the private-address guard.
//!
//! The worker never polls: it sleeps until the earliest due delivery or until ingest wakes
//! it. A claimed delivery is leased (its due time pushed past the attempt's timeout), so
//! a crash mid-attempt leaves it due again rather than lost. No database connection is held
//! while a request is under way: claim, send, record are three separate steps.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use merpati_domain::ids::{AccountId, EndpointId};

use crate::bus::{Bus, Change, EndpointState};

mod attempt;
mod breaker;
mod due_times;
pub mod guard;
mod handoff;
pub mod lane;
mod lane_writes;
mod lanes;
mod mail;
mod offers;
mod prepared;
mod recorder;
pub mod send;
mod worker;

pub use handoff::{handoff, DeliveryWaker, Handoff, Inbox, OwnersToWake};
pub use worker::Worker;

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Ranges exempt from the private-address guard.
    pub allowed_networks: Vec<IpNet>,
    /// Names resolved to these addresses instead of asking DNS (`name=addr,…`, like curl's
    /// `--resolve`); the guard vets them like any other.
    pub resolve: HashMap<String, Vec<std::net::IpAddr>>,
    /// Delays after the first attempt; its length is the number of retries.
    pub retry_schedule: Vec<Duration>,
    pub timeout: Duration,
    /// Outbound requests under way at once, all endpoints together.
    pub max_in_flight: usize,
    /// How long a rotated-out endpoint secret keeps signing beside the new one.
    pub secret_rotation_grace: Duration,
    /// An endpoint failing without a single success for this long is disabled.
    pub disable_after: Duration,
    /// Requests under way at once to one endpoint, unless the endpoint sets its own.
    pub endpoint_concurrency: usize,
    /// Unhealthy answers in a row (no answer, 5xx, 408, 429) that pause an endpoint.
    pub breaker_failures: u32,
    /// The first pause of a paused endpoint; each failed probe doubles it, up to
    /// `breaker_max_cooldown`.
    pub breaker_cooldown: Duration,
    pub breaker_max_cooldown: Duration,
    /// With nothing queued or under way for this long, the worker closes its kept-alive
    /// connections and the process gives its spare memory back.
    pub idle_release_after: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            allowed_networks: Vec::new(),
            resolve: HashMap::new(),
            retry_schedule: [5, 300, 1800, 7200, 18000, 36000, 36000]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            timeout: Duration::from_secs(15),
            max_in_flight: 512,
            secret_rotation_grace: Duration::from_secs(24 * 3600),
            disable_after: Duration::from_secs(5 * 24 * 3600),
            endpoint_concurrency: 256,
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(5),
            breaker_max_cooldown: Duration::from_secs(300),
            idle_release_after: Duration::from_secs(10),
        }
    }
}

/// Which endpoints their circuit breaker has paused, and until when: written by the worker
/// when a breaker opens or closes (and told on the bus), read by the endpoint API.
#[derive(Clone)]
pub struct Pauses {
    paused: Arc<std::sync::Mutex<HashMap<EndpointId, i64>>>,
    bus: Bus,
}

impl Pauses {
    pub fn new(bus: Bus) -> Pauses {
        Pauses {
            paused: Default::default(),
            bus,
        }
    }

    /// Endpoints paused past `now`.
    pub fn paused_at(&self, now: i64) -> usize {
        self.paused
            .lock()
            .expect("pauses lock")
            .values()
            .filter(|until| **until > now)
            .count()
    }

    pub fn until(&self, endpoint: &EndpointId) -> Option<i64> {
        self.paused
            .lock()
            .expect("pauses lock")
            .get(endpoint)
            .copied()
    }

    fn set(&self, account: &AccountId, endpoint: &EndpointId, until: Option<i64>) {
        let changed = {
            let mut paused = self.paused.lock().expect("pauses lock");
            match until {
                Some(at) => paused.insert(endpoint.clone(), at) != Some(at),
                None => paused.remove(endpoint).is_some(),
            }
        };
        if changed {
            let state = match until {
                Some(until) => EndpointState::Paused { until },
                None => EndpointState::Resumed,
            };
            self.bus.publish_with(|| Change::Endpoint {
                account: account.clone(),
                endpoint: endpoint.clone(),
                state,
            });
        }
    }

    /// A deleted endpoint is paused no more; nobody is told.
    fn forget(&self, endpoint: &EndpointId) {
        self.paused.lock().expect("pauses lock").remove(endpoint);
    }
}
