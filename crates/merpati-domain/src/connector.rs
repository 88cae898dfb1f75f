//! Connectors: an engine people already run (WAHA, Evolution API, SMS Gateway for Android,
//! textbee, Telegram, Slack) pointed at merpati. Each has its own URL and secrets (rotated
//! with a grace, as endpoints' are), the channel its devices are on, and which device each
//! of the engine's sessions is: one device for all, or a binding per engine key.

use std::collections::BTreeMap;

use crate::ids::{AccountId, ChannelId, ConnectorId, DeviceId};
use crate::storage::StoreResult;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connector {
    pub id: ConnectorId,
    pub account_id: AccountId,
    /// `waha`, `evolution`, `android-sms-gateway`, `textbee`, `telegram`, `slack`.
    pub engine: String,
    pub channel_id: ChannelId,
    /// Every session of the engine is this device.
    pub device_id: Option<DeviceId>,
    /// Or each engine key (WAHA's session, Evolution's instance, the Android app's device)
    /// is its own device.
    pub bindings: BTreeMap<String, DeviceId>,
    /// The engine's own API, for polling its status.
    pub api: Option<EngineApi>,
    pub poll_interval_ms: Option<i64>,
    /// Telegram and Slack messages as `notification` items.
    pub notifications: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub revision: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineApi {
    pub base_url: String,
    pub key: String,
}

impl Connector {
    /// Where its engine posts, under the server's public address.
    pub fn inbound_url(&self, public_base: &str) -> String {
        format!(
            "{}/v1/connectors/{}/inbound",
            public_base.trim_end_matches('/'),
            self.id
        )
    }

    /// The device an engine key speaks for: the connector's one device, else its binding.
    pub fn device_for(&self, key: Option<&str>) -> Option<&DeviceId> {
        self.device_id
            .as_ref()
            .or_else(|| key.and_then(|k| self.bindings.get(k)))
    }

    /// Every device it speaks for.
    pub fn devices(&self) -> Vec<&DeviceId> {
        let mut all: Vec<&DeviceId> = self.device_id.iter().collect();
        for d in self.bindings.values() {
            if !all.contains(&d) {
                all.push(d);
            }
        }
        all
    }
}

/// A connector as inbound requests need it: with the secrets that verify them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundConnector {
    pub connector: Connector,
    /// Live secrets, newest first.
    pub secrets: Vec<String>,
}

#[async_trait::async_trait]
pub trait ConnectorStore: Send + Sync {
    /// Invalid when its channel or a device is not the account's, or a device is not on
    /// its channel.
    async fn create_connector(&self, c: Connector, secret: String) -> StoreResult<Connector>;
    async fn list_connectors(&self, account: AccountId) -> StoreResult<Vec<Connector>>;
    async fn get_connector(&self, account: AccountId, id: ConnectorId) -> StoreResult<Connector>;
    /// Stores it if still at `c.revision`; Stale when it changed since.
    async fn update_connector(&self, c: Connector) -> StoreResult<Connector>;
    async fn delete_connector(&self, account: AccountId, id: ConnectorId) -> StoreResult<()>;
    /// The new secret signs from now; the others until `old_expires_at`.
    async fn rotate_connector_secret(
        &self,
        account: AccountId,
        id: ConnectorId,
        new_secret: String,
        old_expires_at: i64,
        now: i64,
    ) -> StoreResult<()>;
    /// By id alone (the URL names it), with the secrets live at `now`; None when there is
    /// no such connector.
    async fn inbound_connector(
        &self,
        id: ConnectorId,
        now: i64,
    ) -> StoreResult<Option<InboundConnector>>;
    /// Every connector that polls its engine, across accounts.
    async fn polled_connectors(&self) -> StoreResult<Vec<Connector>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connector() -> Connector {
        Connector {
            id: "con_1".into(),
            account_id: "a".into(),
            engine: "waha".into(),
            channel_id: "ch".into(),
            device_id: None,
            bindings: [("default".to_string(), DeviceId::from("d1"))].into(),
            api: None,
            poll_interval_ms: None,
            notifications: false,
            created_at: 0,
            updated_at: 0,
            revision: 0,
        }
    }

    #[test]
    fn keys_find_their_device() {
        let mut c = connector();
        assert_eq!(c.device_for(Some("default")), Some(&"d1".into()));
        assert_eq!(c.device_for(Some("other")), None);
        assert_eq!(c.device_for(None), None);
        c.device_id = Some("d0".into());
        assert_eq!(c.device_for(Some("other")), Some(&"d0".into()));
        assert_eq!(c.devices().len(), 2);
    }
}
