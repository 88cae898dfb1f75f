//! Device presence: a device's lease as a pure state machine (`machine`), what its changes
//! announce and record (`announce`), availability over a window (`history`), the lease
//! settings that apply to a device, and what the store keeps of it all.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::device::{DeviceContext, Presence};
use crate::ids::{AccountId, BusinessId, ChannelId, DeviceId, EventId};
use crate::storage::StoreResult;

pub mod announce;
pub mod bar;
pub mod history;
pub mod machine;

use machine::{Announced, Change, EngineReport, Timeouts};

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

/// A device's presence as stored, to rebuild the hub after a restart.
#[derive(Debug, Clone)]
pub struct StoredPresence {
    pub account_id: AccountId,
    pub device_id: DeviceId,
    pub announced: Announced,
    pub since: Option<i64>,
    pub engine_state: Option<EngineReport>,
    pub engine: String,
    pub channel_heartbeat_ms: Option<i64>,
    pub channel_grace_ms: Option<i64>,
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
    /// Every device announced up or with an engine state.
    async fn presence_to_restore(&self) -> StoreResult<Vec<StoredPresence>>;
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
