//! `incident.opened`, `incident.acknowledged`, `incident.resolved`: merpati's alerts as
//! events, in the device events' shape (`event`, `timestamp`, then the incident).

use serde::{Deserialize, Serialize};

use crate::refs::{ChannelRef, NamedRef};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentEvent {
    pub event: IncidentEventKind,
    /// Unix seconds when it happened.
    pub timestamp: i64,
    pub incident: IncidentRef,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IncidentEventKind {
    #[serde(rename = "incident.opened")]
    Opened,
    #[serde(rename = "incident.acknowledged")]
    Acknowledged,
    #[serde(rename = "incident.resolved")]
    Resolved,
}

impl IncidentEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentEventKind::Opened => "incident.opened",
            IncidentEventKind::Acknowledged => "incident.acknowledged",
            IncidentEventKind::Resolved => "incident.resolved",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentRef {
    pub id: String,
    /// `open`, `acknowledged` or `resolved`.
    pub state: String,
    /// `critical` or `warning`.
    pub severity: String,
    pub bisnis: NamedRef,
    pub devices: Vec<IncidentDevice>,
    /// Unix seconds.
    pub opened_at: i64,
    pub acknowledged_at: Option<i64>,
    pub acknowledged_by: Option<String>,
    pub resolved_at: Option<i64>,
    /// Distinct senders on the channels hit in the window before the drop.
    pub affected_conversations: usize,
    pub backup_channel_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentDevice {
    pub id: String,
    pub name: String,
    pub channel: ChannelRef,
    /// Unix seconds: when its disconnect was announced.
    pub down_at: i64,
    pub up_at: Option<i64>,
}
