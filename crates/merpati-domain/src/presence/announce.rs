//! What a presence change announces to receivers, and what it records in the device's
//! history: the payloads of `device.connected` / `device.disconnected` and the periods.

use merpati_webhooks::{
    ChannelRef, DeviceEvent, DeviceEventKind, DeviceRef, DeviceStatus, NamedRef,
};

use super::machine::{Announced, Change, Reason};
use super::PeriodState;
use crate::device::{DeviceContext, Presence};

/// An announcement: the event to deliver and the period it opens.
#[derive(Debug, Clone, PartialEq)]
pub struct Announcement {
    /// The state of the period it opens.
    pub state: PeriodState,
    /// When the period began: for an outage, when the device was lost, not when that was
    /// announced.
    pub since: i64,
    pub reason: Option<Reason>,
    pub event: DeviceEvent,
}

impl Announcement {
    pub fn event_type(&self) -> &'static str {
        self.event.event.as_str()
    }
}

/// The announcement a change makes, if any: blips are recorded, never announced.
pub fn announcement(change: &Change, device: &DeviceContext) -> Option<Announcement> {
    let (kind, status, state, since, reason, offline_seconds) = match *change {
        Change::Blip { .. } => return None,
        Change::Connected {
            at,
            offline_seconds,
        } => (
            DeviceEventKind::Connected,
            DeviceStatus::Connected,
            PeriodState::Up,
            at,
            None,
            offline_seconds,
        ),
        Change::Disconnected { since, reason, .. } => (
            DeviceEventKind::Disconnected,
            DeviceStatus::Disconnected,
            PeriodState::Down,
            since,
            Some(reason),
            None,
        ),
    };
    Some(Announcement {
        state,
        since,
        reason,
        event: DeviceEvent {
            event: kind,
            timestamp: since.div_euclid(1000),
            device: device_ref(device),
            status,
            reason: reason.map(|r| r.as_str().to_owned()),
            offline_seconds,
        },
    })
}

/// The device as its events name it: its channel, business and account, as of now.
pub fn device_ref(d: &DeviceContext) -> DeviceRef {
    DeviceRef {
        id: d.device_id.to_string(),
        name: d.device_name.clone(),
        channel: ChannelRef {
            id: d.channel_id.to_string(),
            name: d.channel_name.clone(),
            engine: d.engine.clone(),
        },
        bisnis: NamedRef {
            id: d.business_id.to_string(),
            name: d.business_name.clone(),
        },
        user: NamedRef {
            id: d.account_id.to_string(),
            name: d.account_name.clone(),
        },
    }
}

impl From<Presence> for Announced {
    fn from(p: Presence) -> Announced {
        match p {
            Presence::Unknown => Announced::Unknown,
            Presence::Connected => Announced::Up,
            Presence::Disconnected => Announced::Down,
        }
    }
}

impl From<Announced> for Presence {
    fn from(a: Announced) -> Presence {
        match a {
            Announced::Unknown => Presence::Unknown,
            Announced::Up => Presence::Connected,
            Announced::Down => Presence::Disconnected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> DeviceContext {
        DeviceContext {
            account_id: "merchant_456".into(),
            account_name: "Merchant Name".into(),
            business_id: "biz_123".into(),
            business_name: "My Business".into(),
            channel_id: "ch_1".into(),
            channel_name: "WA".into(),
            engine: "wa".into(),
            device_id: "device_abc123".into(),
            device_name: "Phone".into(),
            phone: None,
            presence: Presence::Unknown,
            presence_since: None,
            engine_state: None,
            channel_heartbeat_ms: None,
            channel_grace_ms: None,
            account_limits: Default::default(),
        }
    }

    #[test]
    fn an_outage_is_dated_from_when_the_device_was_lost() {
        let change = Change::Disconnected {
            at: 90_000,
            since: 60_500,
            reason: Reason::HeartbeatTimeout,
        };
        let a = announcement(&change, &device()).unwrap();
        assert_eq!((a.state, a.since), (PeriodState::Down, 60_500));
        assert_eq!(a.event_type(), "device.disconnected");
        assert_eq!(a.event.timestamp, 60);
        assert_eq!(a.event.reason.as_deref(), Some("heartbeat_timeout"));
        assert_eq!(a.event.device.bisnis.id, "biz_123");
        assert_eq!(a.event.device.user.name, "Merchant Name");
    }

    #[test]
    fn a_connect_after_an_outage_says_how_long_it_lasted_and_blips_announce_nothing() {
        let change = Change::Connected {
            at: 5_000,
            offline_seconds: Some(37),
        };
        let a = announcement(&change, &device()).unwrap();
        assert_eq!((a.state, a.since, a.reason), (PeriodState::Up, 5_000, None));
        assert_eq!(a.event.offline_seconds, Some(37));
        let blip = Change::Blip {
            started_at: 1,
            ended_at: 2,
            reason: Reason::LinkClosed,
        };
        assert_eq!(announcement(&blip, &device()), None);
    }
}
