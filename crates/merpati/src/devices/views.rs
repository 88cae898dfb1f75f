//! Businesses, channels and devices as the API shows them.

use merpati_domain::device::{Business, Channel, Device};
use merpati_domain::ids::{BusinessId, ChannelId, DeviceId};
use serde::Serialize;

use crate::api::time::{as_duration, as_rfc3339};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BusinessView {
    #[schema(value_type = String)]
    pub id: BusinessId,
    pub name: String,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
}

impl From<&Business> for BusinessView {
    fn from(b: &Business) -> Self {
        BusinessView {
            id: b.id.clone(),
            name: b.name.clone(),
            created_at: b.created_at,
            updated_at: b.updated_at,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChannelView {
    #[schema(value_type = String)]
    pub id: ChannelId,
    pub name: String,
    pub engine: String,
    #[schema(value_type = String)]
    pub business_id: BusinessId,
    #[schema(value_type = Option<String>)]
    pub backup_channel_id: Option<ChannelId>,
    /// Lease settings for the devices of this channel (over the engine's and the defaults).
    #[serde(with = "as_duration::option")]
    #[schema(value_type = Option<String>, example = "1m 30s")]
    pub heartbeat_timeout: Option<i64>,
    #[serde(with = "as_duration::option")]
    #[schema(value_type = Option<String>, example = "1m 30s")]
    pub presence_grace: Option<i64>,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
}

impl From<&Channel> for ChannelView {
    fn from(c: &Channel) -> Self {
        ChannelView {
            id: c.id.clone(),
            name: c.name.clone(),
            engine: c.engine.clone(),
            business_id: c.business_id.clone(),
            backup_channel_id: c.backup_channel_id.clone(),
            heartbeat_timeout: c.heartbeat_timeout_ms,
            presence_grace: c.grace_ms,
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeviceView {
    #[schema(value_type = String)]
    pub id: DeviceId,
    pub name: String,
    #[schema(value_type = String)]
    pub channel_id: ChannelId,
    /// The WhatsApp number (`wid` in whatsapp payloads).
    pub phone: Option<String>,
    /// `unknown`, `connected` or `disconnected`: the last announced presence.
    pub status: &'static str,
    #[serde(with = "as_rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub status_since: Option<i64>,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
    /// Only right after the device got a token: the one time it is shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl DeviceView {
    pub fn with_token(d: &Device, token: String) -> Self {
        DeviceView {
            token: Some(token),
            ..d.into()
        }
    }
}

impl From<&Device> for DeviceView {
    fn from(d: &Device) -> Self {
        DeviceView {
            id: d.id.clone(),
            name: d.name.clone(),
            channel_id: d.channel_id.clone(),
            phone: d.phone.clone(),
            status: d.status.as_str(),
            status_since: d.status_since,
            created_at: d.created_at,
            updated_at: d.updated_at,
            token: None,
        }
    }
}
