//! Endpoints as the API shows them.

use std::collections::BTreeMap;

use merpati_domain::endpoint::Endpoint;
use merpati_domain::ids::{BusinessId, ChannelId, DeviceId, EndpointId};
use serde::Serialize;

use crate::api::time::as_rfc3339;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EndpointView {
    #[schema(value_type = String)]
    pub id: EndpointId,
    pub url: String,
    pub description: Option<String>,
    /// Types or wildcards (`device.*`); `None` means every type.
    pub events: Option<Vec<String>>,
    /// Scope filters: an empty list means no restriction.
    #[schema(value_type = Vec<String>)]
    pub business_ids: Vec<BusinessId>,
    #[schema(value_type = Vec<String>)]
    pub channel_ids: Vec<ChannelId>,
    #[schema(value_type = Vec<String>)]
    pub device_ids: Vec<DeviceId>,
    /// `json` or `form`.
    pub format: &'static str,
    /// Also put the secret in the body (`"secret"` at top level), the legacy check.
    pub secret_in_body: bool,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
    /// `device`: each device's events in order, one at a time.
    pub ordering: Option<&'static str>,
    /// Requests under way at once; `None` for the configured default.
    pub max_concurrency: Option<u32>,
    /// Requests per second; `None` for no limit.
    pub rate_limit: Option<u32>,
    pub disabled: bool,
    /// `gone` (answered 410), `failing` (failed without pause too long) or `manual`.
    pub disabled_reason: Option<&'static str>,
    #[serde(with = "as_rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub disabled_at: Option<i64>,
    /// Since when every attempt has failed, while that lasts.
    #[serde(with = "as_rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub failing_since: Option<i64>,
    /// Until when its circuit breaker pauses it (one probe goes then), while it does.
    #[serde(with = "as_rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub paused_until: Option<i64>,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
    /// Only at creation: the one time the secret is shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl EndpointView {
    /// The endpoint, paused by its breaker until `paused_until` if it is.
    pub fn new(e: &Endpoint, paused_until: Option<i64>) -> Self {
        EndpointView {
            id: e.id.clone(),
            url: e.url.clone(),
            description: e.description.clone(),
            events: e.events.clone(),
            business_ids: e.business_ids.clone(),
            channel_ids: e.channel_ids.clone(),
            device_ids: e.device_ids.clone(),
            format: e.format.as_str(),
            secret_in_body: e.secret_in_body,
            headers: e.headers.clone(),
            ordering: e.ordering.map(|o| o.as_str()),
            max_concurrency: e.max_concurrency,
            rate_limit: e.rate_limit,
            disabled: e.disabled,
            disabled_reason: e.disabled_reason.map(|r| r.as_str()),
            disabled_at: e.disabled_at,
            failing_since: e.failing_since,
            paused_until,
            created_at: e.created_at,
            updated_at: e.updated_at,
            secret: None,
        }
    }
}
