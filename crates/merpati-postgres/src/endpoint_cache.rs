//! What fan-out and delivery read about endpoints on every event (each account's
//! subscriptions and each endpoint's target: URL, format, headers, live secrets), read
//! once in a group and kept until the group ends or one of its statements changes
//! endpoints: other nodes change them too, so nothing is kept past a transaction.

use std::collections::HashMap;
use std::sync::Arc;

use merpati_domain::endpoint::{BodyFormat, StoredBreaker, Subscription, Target};
use merpati_domain::ids::{AccountId, EndpointId};
use merpati_domain::StoreError;

use crate::conn::Conn;
use crate::error::DbResult;
use crate::rows::json_column;

#[derive(Default)]
pub(crate) struct EndpointCache {
    subscriptions: HashMap<AccountId, Arc<Vec<Subscription>>>,
    targets: HashMap<EndpointId, Arc<Target>>,
}

impl EndpointCache {
    pub(crate) fn forget(&mut self) {
        self.subscriptions.clear();
        self.targets.clear();
    }

    /// An account's endpoints, as fan-out matches events against them.
    pub(crate) fn subscriptions(
        &mut self,
        c: &mut Conn,
        account: &AccountId,
    ) -> DbResult<Arc<Vec<Subscription>>> {
        if let Some(subs) = self.subscriptions.get(account) {
            return Ok(subs.clone());
        }
        let subs = Arc::new(load_subscriptions(c, account)?);
        self.subscriptions.insert(account.clone(), subs.clone());
        Ok(subs)
    }

    /// Where deliveries to the endpoint go, with the secrets live at `now` (a group's
    /// writes share one `now` to within milliseconds).
    pub(crate) fn target(
        &mut self,
        c: &mut Conn,
        endpoint: &EndpointId,
        now: i64,
    ) -> DbResult<Arc<Target>> {
        if let Some(target) = self.targets.get(endpoint) {
            return Ok(target.clone());
        }
        let target = Arc::new(load_target(c, endpoint, now)?);
        self.targets.insert(endpoint.clone(), target.clone());
        Ok(target)
    }
}

fn load_subscriptions(c: &mut Conn, account: &AccountId) -> DbResult<Vec<Subscription>> {
    let rows = c.query(
        "SELECT id, events, business_ids, channel_ids, device_ids, disabled, ordering
         FROM endpoints WHERE account_id = $1 AND deleted_at IS NULL",
        &[&account.as_str()],
    )?;
    rows.iter()
        .map(|r| {
            let events: Option<String> = r.get(1);
            Ok(Subscription {
                endpoint_id: EndpointId::from(r.get::<_, String>(0)),
                events: events.as_deref().map(json_column).transpose()?,
                business_ids: json_column(r.get(2))?,
                channel_ids: json_column(r.get(3))?,
                device_ids: json_column(r.get(4))?,
                disabled: r.get(5),
                ordered: r.get::<_, Option<&str>>(6) == Some("device"),
            })
        })
        .collect()
}

/// The targets of endpoints, with the secrets live at `now`, in one round trip: each
/// endpoint one probe of its key, its live secrets newest first.
const TARGETS: &str =
    "SELECT ep.id, ep.account_id, ep.url, ep.format, ep.secret_in_body, ep.headers,
            ep.max_concurrency, ep.rate_limit, ep.ordering, ep.breaker_until,
            ep.breaker_cooldown_ms,
            ARRAY(SELECT s.secret FROM endpoint_secrets s
                  WHERE s.endpoint_id = ep.id AND (s.expires_at IS NULL OR s.expires_at > $2)
                  ORDER BY s.created_at DESC, s.id DESC)
     FROM UNNEST($1::TEXT[]) AS k(id)
     CROSS JOIN LATERAL (SELECT * FROM endpoints ep WHERE ep.id = k.id LIMIT 1) ep";

/// An endpoint's target, with the secrets live at `now`.
pub(crate) fn load_target(c: &mut Conn, endpoint: &EndpointId, now: i64) -> DbResult<Target> {
    load_targets(c, std::slice::from_ref(endpoint), now)?
        .remove(endpoint)
        .ok_or_else(|| StoreError::Internal(format!("endpoint {endpoint} is gone")).into())
}

/// The targets of those of `endpoints` that exist, with the secrets live at `now`.
pub(crate) fn load_targets(
    c: &mut Conn,
    endpoints: &[EndpointId],
    now: i64,
) -> DbResult<HashMap<EndpointId, Target>> {
    let ids: Vec<&str> = endpoints.iter().map(EndpointId::as_str).collect();
    let rows = c.query(TARGETS, &[&ids, &now])?;
    let mut targets = HashMap::with_capacity(rows.len());
    for r in &rows {
        let endpoint = EndpointId::from(r.get::<_, String>(0));
        let headers = c.open(&format!("endpoints.headers:{endpoint}"), r.get(5))?;
        let secrets = r
            .get::<_, Vec<String>>(11)
            .iter()
            .map(|s| c.open(&format!("endpoint_secrets.secret:{endpoint}"), s))
            .collect::<DbResult<Vec<String>>>()?;
        let format: &str = r.get(3);
        let target = Target {
            id: endpoint.clone(),
            account_id: AccountId::from(r.get::<_, String>(1)),
            url: r.get(2),
            format: BodyFormat::parse(format).unwrap_or(BodyFormat::Json),
            secret_in_body: r.get(4),
            headers: json_column(&headers)?,
            secrets,
            max_concurrency: r.get::<_, Option<i64>>(6).map(|n| n as u32),
            rate_limit: r.get::<_, Option<i64>>(7).map(|n| n as u32),
            ordered: r.get::<_, Option<&str>>(8) == Some("device"),
            breaker: match (r.get(9), r.get(10)) {
                (Some(until), Some(cooldown_ms)) => Some(StoredBreaker { until, cooldown_ms }),
                _ => None,
            },
        };
        targets.insert(endpoint, target);
    }
    Ok(targets)
}
