//! The device tree of an account: businesses ("bisnis"), their channels, and the devices on
//! each channel; and what is known of a device when it speaks (`DeviceContext`).

use crate::ids::{AccountId, BusinessId, ChannelId, DeviceId};
use crate::storage::{Page, StoreResult};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Business {
    pub id: BusinessId,
    pub name: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub revision: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub id: ChannelId,
    pub name: String,
    /// `wa`, `telegram`, `slack`, `sms`, … an open set.
    pub engine: String,
    pub business_id: BusinessId,
    pub backup_channel_id: Option<ChannelId>,
    /// Lease settings for the devices of this channel (over the engine's and the defaults).
    pub heartbeat_timeout_ms: Option<i64>,
    pub grace_ms: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub revision: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub id: DeviceId,
    pub name: String,
    pub channel_id: ChannelId,
    /// The WhatsApp number (`wid` in whatsapp payloads).
    pub phone: Option<String>,
    /// The last announced presence, and since when.
    pub status: Presence,
    pub status_since: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub revision: i64,
}

/// A device's announced presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Presence {
    Unknown,
    Connected,
    Disconnected,
}

impl Presence {
    pub const ALL: [Presence; 3] = [
        Presence::Unknown,
        Presence::Connected,
        Presence::Disconnected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Presence::Unknown => "unknown",
            Presence::Connected => "connected",
            Presence::Disconnected => "disconnected",
        }
    }

    pub fn parse(s: &str) -> Option<Presence> {
        Presence::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// What an engine last said of its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineReport {
    Connected,
    Disconnected,
    LoggedOut,
}

impl EngineReport {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineReport::Connected => "connected",
            EngineReport::Disconnected => "disconnected",
            EngineReport::LoggedOut => "logged_out",
        }
    }

    pub fn parse(s: &str) -> Option<EngineReport> {
        [
            EngineReport::Connected,
            EngineReport::Disconnected,
            EngineReport::LoggedOut,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// Which of an account's devices to list.
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    pub status: Option<Presence>,
    pub engine: Option<String>,
    pub business_id: Option<BusinessId>,
    pub channel_id: Option<ChannelId>,
}

/// Everything known about an authenticated device, as of the request: the names that go
/// into its payloads, and what the presence hub starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceContext {
    pub account_id: AccountId,
    pub account_name: String,
    pub business_id: BusinessId,
    pub business_name: String,
    pub channel_id: ChannelId,
    pub channel_name: String,
    pub engine: String,
    pub device_id: DeviceId,
    pub device_name: String,
    pub phone: Option<String>,
    /// The presence last announced, and since when.
    pub presence: Presence,
    pub presence_since: Option<i64>,
    pub engine_state: Option<EngineReport>,
    /// The channel's own lease settings, if it has any.
    pub channel_heartbeat_ms: Option<i64>,
    pub channel_grace_ms: Option<i64>,
    /// Its account's own rates and caps.
    pub account_limits: crate::limits::AccountLimits,
}

impl DeviceContext {
    /// Where the device's events happen, for the endpoints' scope filters.
    pub fn scope(&self) -> Scope<'_> {
        Scope {
            business_id: Some(&self.business_id),
            channel_id: Some(&self.channel_id),
            device_id: Some(&self.device_id),
        }
    }
}

/// Where an event happened, for the scope filters; an account's own events (an endpoint
/// disabled) happen nowhere in particular.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scope<'a> {
    pub business_id: Option<&'a BusinessId>,
    pub channel_id: Option<&'a ChannelId>,
    pub device_id: Option<&'a DeviceId>,
}

#[async_trait::async_trait]
pub trait DeviceStore: Send + Sync {
    async fn create_business(&self, account: AccountId, b: Business) -> StoreResult<Business>;
    async fn list_businesses(&self, account: AccountId, page: Page) -> StoreResult<Vec<Business>>;
    async fn get_business(&self, account: AccountId, id: BusinessId) -> StoreResult<Business>;
    /// Stale when it changed since `b.revision`. Returns it as stored.
    async fn update_business(&self, account: AccountId, b: Business) -> StoreResult<Business>;
    /// Conflict while channels belong to it.
    async fn delete_business(&self, account: AccountId, id: BusinessId) -> StoreResult<()>;

    /// Invalid when the business or the backup channel is not the account's.
    async fn create_channel(&self, account: AccountId, c: Channel) -> StoreResult<Channel>;
    async fn list_channels(&self, account: AccountId, page: Page) -> StoreResult<Vec<Channel>>;
    async fn get_channel(&self, account: AccountId, id: ChannelId) -> StoreResult<Channel>;
    /// Stale when it changed since `c.revision`. Returns it as stored.
    async fn update_channel(&self, account: AccountId, c: Channel) -> StoreResult<Channel>;
    /// Conflict while devices are on it; channels backed up by it lose their backup.
    async fn delete_channel(&self, account: AccountId, id: ChannelId) -> StoreResult<()>;

    /// LimitReached when the account has `cap` devices.
    async fn create_device(
        &self,
        account: AccountId,
        d: Device,
        token_hash: Vec<u8>,
        cap: u32,
    ) -> StoreResult<Device>;
    async fn list_devices(
        &self,
        account: AccountId,
        page: Page,
        filter: DeviceFilter,
    ) -> StoreResult<Vec<Device>>;
    async fn get_device(&self, account: AccountId, id: DeviceId) -> StoreResult<Device>;
    /// Stale when it changed since `d.revision`. Returns it as stored.
    async fn update_device(&self, account: AccountId, d: Device) -> StoreResult<Device>;
    async fn delete_device(&self, account: AccountId, id: DeviceId) -> StoreResult<()>;
    /// Replaces the token; the old one stops working at once.
    async fn rotate_device_token(
        &self,
        account: AccountId,
        id: DeviceId,
        token_hash: Vec<u8>,
        now: i64,
    ) -> StoreResult<()>;
    async fn device_for_token(&self, token_hash: Vec<u8>) -> StoreResult<Option<DeviceContext>>;
}
