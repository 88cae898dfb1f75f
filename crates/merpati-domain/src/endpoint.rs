//! Endpoints: an account's webhook subscriptions (URL, secrets, event and scope filters, body
//! format and options), which events each one receives, and what an attempt needs of one.

use std::collections::BTreeMap;

use merpati_webhooks::events::type_matches;

use crate::device::Scope;
use crate::ids::{AccountId, BusinessId, ChannelId, DeviceId, EndpointId};
use crate::storage::{Owned, Page, StoreError, StoreResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    Json,
    /// `application/x-www-form-urlencoded`, nested keys PHP-style.
    Form,
}

impl BodyFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            BodyFormat::Json => "json",
            BodyFormat::Form => "form",
        }
    }
    pub fn parse(s: &str) -> Option<BodyFormat> {
        match s {
            "json" => Some(BodyFormat::Json),
            "form" => Some(BodyFormat::Form),
            _ => None,
        }
    }
}

/// How an endpoint wants its deliveries ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ordering {
    /// Each device's events in order, one at a time.
    Device,
}

impl Ordering {
    pub fn as_str(self) -> &'static str {
        "device"
    }
    pub fn parse(s: &str) -> Option<Ordering> {
        (s == "device").then_some(Ordering::Device)
    }
}

/// Why an endpoint is disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisableReason {
    /// It answered 410 Gone.
    Gone,
    /// It failed without a success for too long.
    Failing,
    /// Its owner disabled it.
    Manual,
}

impl DisableReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DisableReason::Gone => "gone",
            DisableReason::Failing => "failing",
            DisableReason::Manual => "manual",
        }
    }
    pub fn parse(s: &str) -> Option<DisableReason> {
        [
            DisableReason::Gone,
            DisableReason::Failing,
            DisableReason::Manual,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub id: EndpointId,
    pub url: String,
    pub description: Option<String>,
    /// Types or wildcards (`device.*`); `None` means every type.
    pub events: Option<Vec<String>>,
    /// Scope filters: an empty list means no restriction.
    pub business_ids: Vec<BusinessId>,
    pub channel_ids: Vec<ChannelId>,
    pub device_ids: Vec<DeviceId>,
    pub format: BodyFormat,
    /// Also put the secret in the body (`"secret"` at top level), the legacy check.
    pub secret_in_body: bool,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
    pub ordering: Option<Ordering>,
    /// Requests under way at once; `None` for the configured default.
    pub max_concurrency: Option<u32>,
    /// Requests per second; `None` for no limit.
    pub rate_limit: Option<u32>,
    pub disabled: bool,
    pub disabled_reason: Option<DisableReason>,
    pub disabled_at: Option<i64>,
    /// Since when every attempt has failed, while that lasts.
    pub failing_since: Option<i64>,
    /// Until when its circuit breaker pauses it, as its owner last kept it (it may have
    /// passed: a probe decides).
    pub paused_until: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub revision: i64,
}

/// What fan-out needs to know of an endpoint to decide whether an event goes to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    pub endpoint_id: EndpointId,
    pub events: Option<Vec<String>>,
    pub business_ids: Vec<BusinessId>,
    pub channel_ids: Vec<ChannelId>,
    pub device_ids: Vec<DeviceId>,
    /// `ordering: "device"`: deliveries queue per device.
    pub ordered: bool,
    pub disabled: bool,
}

impl Subscription {
    /// Whether an event of this type, happening there, goes to the endpoint.
    pub fn matches(&self, event_type: &str, scope: Scope<'_>) -> bool {
        fn within<T: PartialEq>(filter: &[T], id: Option<&T>) -> bool {
            filter.is_empty() || id.is_some_and(|id| filter.contains(id))
        }
        let type_ok = match &self.events {
            None => true,
            Some(patterns) => patterns.iter().any(|p| type_matches(p, event_type)),
        };
        type_ok
            && within(&self.business_ids, scope.business_id)
            && within(&self.channel_ids, scope.channel_id)
            && within(&self.device_ids, scope.device_id)
    }

    /// The same endpoint with no filter: one named explicitly (a replay to it) gets the
    /// event whatever its filters say.
    pub fn unfiltered(&self) -> Subscription {
        Subscription {
            events: None,
            business_ids: Vec::new(),
            channel_ids: Vec::new(),
            device_ids: Vec::new(),
            ..self.clone()
        }
    }
}

/// Where deliveries to an endpoint go, and how: what an attempt needs of its endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub id: EndpointId,
    pub account_id: AccountId,
    pub url: String,
    pub format: BodyFormat,
    pub secret_in_body: bool,
    pub headers: BTreeMap<String, String>,
    /// Live secrets, newest first.
    pub secrets: Vec<String>,
    pub max_concurrency: Option<u32>,
    pub rate_limit: Option<u32>,
    /// Whether it takes each device's events in order (`ordering: "device"`).
    pub ordered: bool,
    /// Its circuit breaker as its last owner left it; None when closed.
    pub breaker: Option<StoredBreaker>,
}

/// An endpoint's circuit breaker, opened: nothing goes before `until`; then one probe,
/// whose failure opens it for twice `cooldown_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredBreaker {
    pub until: i64,
    pub cooldown_ms: i64,
}

/// The most addresses one e-mail endpoint sends to.
pub const MAX_MAIL_RECIPIENTS: usize = 10;

/// An e-mail endpoint's recipients: `None` when `url` is not a `mailto:` URL, else its
/// addresses (`mailto:a@example.com,b@example.com`), or why they are not valid.
pub fn mail_recipients(url: &str) -> Option<Result<Vec<String>, String>> {
    let list = url.strip_prefix("mailto:")?;
    // A query (`?subject=`) is not ours to honour.
    if list.contains('?') {
        return Some(Err(
            "a mailto: endpoint takes addresses only, no ?query".into()
        ));
    }
    let addrs: Vec<String> = list
        .split(',')
        .map(|a| a.trim().replace("%40", "@"))
        .filter(|a| !a.is_empty())
        .collect();
    if addrs.is_empty() {
        return Some(Err("mailto: names no address".into()));
    }
    if addrs.len() > MAX_MAIL_RECIPIENTS {
        return Some(Err(format!(
            "mailto: names {} addresses, at most {MAX_MAIL_RECIPIENTS}",
            addrs.len()
        )));
    }
    if let Some(bad) = addrs
        .iter()
        .find(|a| !crate::alert::notifier::is_email_address(a))
    {
        return Some(Err(format!("{bad:?} is not an e-mail address")));
    }
    Some(Ok(addrs))
}

#[async_trait::async_trait]
pub trait EndpointStore: Send + Sync {
    /// Invalid when a scope id is not the account's; LimitReached when the account has
    /// `cap` endpoints.
    async fn create_endpoint(
        &self,
        account: AccountId,
        e: Endpoint,
        secret: String,
        cap: u32,
    ) -> StoreResult<Endpoint>;
    async fn list_endpoints(&self, account: AccountId, page: Page) -> StoreResult<Vec<Endpoint>>;
    async fn get_endpoint(&self, account: AccountId, id: EndpointId) -> StoreResult<Endpoint>;
    /// Stores what its owner may change (not its disabled state, which changes through
    /// `set_endpoint_enabled`) if it is still at `e.revision`; Stale when it changed since.
    /// Switching ordering off takes its deliveries out of their device queues. Returns it as
    /// stored.
    async fn update_endpoint(&self, account: AccountId, e: Endpoint) -> StoreResult<Endpoint>;
    /// Disabling holds its pending deliveries; enabling releases the held ones (returns how
    /// many are due again).
    async fn set_endpoint_enabled(
        &self,
        account: AccountId,
        id: EndpointId,
        enabled: bool,
        now: i64,
    ) -> StoreResult<usize>;
    /// Gone at once from every view and from fan-out; its deliveries, whatever their
    /// outcome, and their attempts go later, through `purge_deleted_endpoint`.
    async fn delete_endpoint(
        &self,
        account: AccountId,
        id: EndpointId,
        now: i64,
    ) -> StoreResult<()>;
    /// Removes up to `limit` rows of a deleted endpoint (its deliveries, then itself);
    /// returns how many, 0 once no deleted endpoint is left.
    async fn purge_deleted_endpoint(&self, limit: usize) -> StoreResult<usize>;
    /// `new_secret` signs from now on; the current ones keep signing until `old_expires_at`.
    async fn rotate_endpoint_secret(
        &self,
        account: AccountId,
        id: EndpointId,
        new_secret: String,
        old_expires_at: i64,
        now: i64,
    ) -> StoreResult<()>;
}

/// Every scope id an endpoint names must be one of its account's own (`owned` answers).
pub fn check_scope<E: From<StoreError>>(
    e: &Endpoint,
    mut owned: impl FnMut(Owned, &str) -> Result<bool, E>,
) -> Result<(), E> {
    let scopes: [(Owned, &str, Vec<&str>); 3] = [
        (
            Owned::Business,
            "business_ids",
            e.business_ids.iter().map(|i| i.as_str()).collect(),
        ),
        (
            Owned::Channel,
            "channel_ids",
            e.channel_ids.iter().map(|i| i.as_str()).collect(),
        ),
        (
            Owned::Device,
            "device_ids",
            e.device_ids.iter().map(|i| i.as_str()).collect(),
        ),
    ];
    for (kind, field, ids) in scopes {
        for id in ids {
            if !owned(kind, id)? {
                return Err(StoreError::Invalid(format!("{field}: {id:?} does not exist")).into());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailto_urls_name_one_to_ten_addresses() {
        assert_eq!(mail_recipients("https://x.example/hook"), None);
        assert_eq!(
            mail_recipients("mailto:a@toko.example, b%40toko.example"),
            Some(Ok(vec!["a@toko.example".into(), "b@toko.example".into()]))
        );
        for bad in [
            "mailto:",
            "mailto:nobody",
            "mailto:a@toko.example?subject=hi",
            "mailto:a@b,c@d.example",
        ] {
            assert!(matches!(mail_recipients(bad), Some(Err(_))), "{bad}");
        }
        let eleven = format!("mailto:{}", ["a@b.example"; 11].join(","));
        assert!(matches!(mail_recipients(&eleven), Some(Err(_))));
    }

    fn sub(events: Option<&[&str]>, channels: &[&str]) -> Subscription {
        Subscription {
            events: events.map(|e| e.iter().map(|s| s.to_string()).collect()),
            channel_ids: channels.iter().map(|s| ChannelId::from(*s)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn no_filter_matches_everything() {
        assert!(sub(None, &[]).matches("sms", Scope::default()));
    }

    #[test]
    fn type_filters_and_wildcards() {
        let s = sub(Some(&["device.*", "ussd"]), &[]);
        assert!(s.matches("device.disconnected", Scope::default()));
        assert!(s.matches("ussd", Scope::default()));
        assert!(!s.matches("sms", Scope::default()));
    }

    #[test]
    fn scope_filters_need_the_event_to_be_inside() {
        let s = sub(None, &["ch_1"]);
        let (one, two) = (ChannelId::from("ch_1"), ChannelId::from("ch_2"));
        let inside = Scope {
            channel_id: Some(&one),
            ..Default::default()
        };
        let outside = Scope {
            channel_id: Some(&two),
            ..Default::default()
        };
        assert!(s.matches("sms", inside));
        assert!(!s.matches("sms", outside));
        assert!(!s.matches("sms", Scope::default()));
    }

    #[test]
    fn a_named_endpoint_gets_what_its_filters_would_refuse() {
        let s = sub(Some(&["ussd"]), &["ch_1"]);
        assert!(!s.matches("sms", Scope::default()));
        assert!(s.unfiltered().matches("sms", Scope::default()));
    }
}
