//! The presence hub: one task owns every device's state machine (the domain's
//! `presence::machine`) and every deadline.

pub mod hub;

pub use hub::{
    hub, HubSettings, LinkClose, LiveStatus, LiveView, Outcome, PresenceHandle, Telemetry,
    CLOSE_REPLACED, CLOSE_TOKEN,
};
