//! Device presence: a device's lease as a pure state machine (`machine`), what its changes
//! announce and record (`announce`), availability over a window (`history`), the lease
//! settings that apply to a device, one step of many machines as any node takes it
//! (`step`), and what the store keeps of it all.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::device::{DeviceContext, Presence};
use crate::ids::{AccountId, BusinessId, ChannelId, DeviceId, EventId};
use crate::storage::StoreResult;

pub mod announce;
pub mod bar;
pub mod history;
pub mod machine;
pub mod step;

use machine::{Change, EngineReport, LiveStatus, Timeouts};
use step::{CloseWhy, DeviceRequest, Stepped};

/// One thing to record for one device.
#[derive(Debug, Clone)]
pub struct PresenceWrite {
    pub account_id: AccountId,
    pub device_id: DeviceId,
    pub what: WriteKind,
}

#[derive(Debug, Clone)]
pub enum WriteKind {
    Change(Change),
    /// The engine's last report; `None` once a connector's engine works again (its lease,
    /// not a report, keeps it up from then on).
    Engine(Option<EngineReport>),
}

/// What a group of writes produced: the event id of each announcement, by write index.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    pub event_ids: HashMap<usize, EventId>,
    pub new_deliveries: usize,
}

/// One step of presence ([`step`]), taken by `node` at `now` on its clock.
#[derive(Debug, Clone)]
pub struct PresenceStep {
    pub node: String,
    pub now: i64,
    pub lease: Arc<LeaseSettings>,
    pub requests: Vec<DeviceRequest>,
    /// Also steps devices whose deadline has come and devices whose link's node is gone,
    /// up to [`SWEEP_LIMIT`]; rows another node is stepping are left to it.
    pub sweep: bool,
}

/// The most devices one step sweeps.
pub const SWEEP_LIMIT: usize = 1_000;

/// A device's presence as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredView {
    pub status: LiveStatus,
    pub link_open: bool,
    pub last_heartbeat: Option<i64>,
}

/// One of a node's links, to ask whether it is still its device's.
#[derive(Debug, Clone)]
pub struct HeldLink {
    pub link: u64,
    pub account_id: AccountId,
    pub device_id: DeviceId,
}

/// The state of a period of a device's history: what was announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeriodState {
    Up,
    Down,
}

impl PeriodState {
    pub fn as_str(self) -> &'static str {
        match self {
            PeriodState::Up => "up",
            PeriodState::Down => "down",
        }
    }
    pub fn parse(s: &str) -> Option<PeriodState> {
        match s {
            "up" => Some(PeriodState::Up),
            "down" => Some(PeriodState::Down),
            _ => None,
        }
    }
    /// The presence a device in this state shows.
    pub fn presence(self) -> Presence {
        match self {
            PeriodState::Up => Presence::Connected,
            PeriodState::Down => Presence::Disconnected,
        }
    }
}

/// One announced state of one device over time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    pub device_id: DeviceId,
    pub state: PeriodState,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub reason: Option<String>,
}

/// Lost and back inside the grace: recorded, never announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blip {
    pub device_id: DeviceId,
    pub started_at: i64,
    pub ended_at: i64,
    pub reason: String,
}

/// Whose history: one device, or every device of a channel or of a business.
#[derive(Debug, Clone)]
pub enum HistoryScope {
    Device(DeviceId),
    Channel(ChannelId),
    Business(BusinessId),
}

#[async_trait::async_trait]
pub trait PresenceStore: Send + Sync {
    /// Records the writes in one transaction: history, the device's presence columns, and
    /// for each announcement ([`announce::announcement`]) its event and deliveries. Writes
    /// for devices deleted meanwhile are skipped.
    async fn apply_presence(&self, writes: Vec<PresenceWrite>, now: i64) -> StoreResult<Applied>;
    /// Takes one step in one transaction: locks the rows of the devices asked about (and
    /// those swept), plans it ([`step::plan`]), records the plan's writes and machines.
    async fn step_presence(&self, step: PresenceStep) -> StoreResult<Stepped>;
    /// After every node was down: every machine as [`step::after_restart`] makes it.
    /// Returns how many changed.
    async fn restart_presence(&self, lease: Arc<LeaseSettings>, now: i64) -> StoreResult<usize>;
    async fn presence_view(
        &self,
        account: AccountId,
        device: DeviceId,
    ) -> StoreResult<Option<StoredView>>;
    /// Those of `node`'s links that are no longer their device's, and why: another link
    /// replaced it, or it was revoked or lost (or the device deleted).
    async fn stale_links(
        &self,
        node: String,
        links: Vec<HeldLink>,
    ) -> StoreResult<Vec<(u64, CloseWhy)>>;
    /// Periods overlapping [from, to), oldest first. NotFound when the scope is not the
    /// account's.
    async fn presence_periods(
        &self,
        account: AccountId,
        scope: HistoryScope,
        from: i64,
        to: i64,
    ) -> StoreResult<Vec<Period>>;
    async fn presence_blips(
        &self,
        account: AccountId,
        scope: HistoryScope,
        from: i64,
        to: i64,
    ) -> StoreResult<Vec<Blip>>;
}

/// Lease settings: the defaults, and per engine over them.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub heartbeat_timeout: Duration,
    pub grace: Duration,
    /// Per engine (`wa`, `telegram`, …): settings over the defaults above.
    pub engines: BTreeMap<String, EngineLease>,
}

#[derive(Debug, Clone, Default)]
pub struct EngineLease {
    pub heartbeat_timeout: Option<Duration>,
    pub grace: Option<Duration>,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings {
            heartbeat_timeout: Duration::from_secs(90),
            grace: Duration::from_secs(30),
            engines: BTreeMap::new(),
        }
    }
}

impl LeaseSettings {
    /// A device's timeouts: its channel's, else its engine's, else the defaults.
    pub fn timeouts(
        &self,
        engine: &str,
        channel_heartbeat_ms: Option<i64>,
        channel_grace_ms: Option<i64>,
    ) -> Timeouts {
        let per_engine = self.engines.get(engine);
        let ms = |d: Duration| d.as_millis() as i64;
        Timeouts {
            heartbeat_ms: channel_heartbeat_ms
                .or_else(|| per_engine.and_then(|e| e.heartbeat_timeout).map(ms))
                .unwrap_or(ms(self.heartbeat_timeout)),
            grace_ms: channel_grace_ms
                .or_else(|| per_engine.and_then(|e| e.grace).map(ms))
                .unwrap_or(ms(self.grace)),
        }
    }

    pub fn for_device(&self, d: &DeviceContext) -> Timeouts {
        self.timeouts(&d.engine, d.channel_heartbeat_ms, d.channel_grace_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_specific_lease_setting_wins() {
        let mut settings = LeaseSettings::default();
        settings.engines.insert(
            "wa".into(),
            EngineLease {
                heartbeat_timeout: Some(Duration::from_secs(20)),
                grace: None,
            },
        );
        let t = |engine, hb, grace| settings.timeouts(engine, hb, grace);
        assert_eq!(
            t("sms", None, None),
            Timeouts {
                heartbeat_ms: 90_000,
                grace_ms: 30_000
            }
        );
        assert_eq!(
            t("wa", None, None),
            Timeouts {
                heartbeat_ms: 20_000,
                grace_ms: 30_000
            }
        );
        assert_eq!(
            t("wa", Some(5_000), Some(1_000)),
            Timeouts {
                heartbeat_ms: 5_000,
                grace_ms: 1_000
            }
        );
    }
}
