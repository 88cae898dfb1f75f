//! What the targets share: the device a body comes from.

use merpati_domain::device::{DeviceContext, Presence};

pub fn device() -> DeviceContext {
    DeviceContext {
        account_id: "acct".into(),
        account_name: "Account".into(),
        business_id: "biz".into(),
        business_name: "Business".into(),
        channel_id: "ch".into(),
        channel_name: "Channel".into(),
        engine: "sms".into(),
        device_id: "dev".into(),
        device_name: "Device".into(),
        phone: Some("+6281100".into()),
        presence: Presence::Unknown,
        presence_since: None,
        engine_state: None,
        channel_heartbeat_ms: None,
        channel_grace_ms: None,
        account_limits: Default::default(),
    }
}
