//! What fan-out and delivery read about endpoints on every event (each account's
//! subscriptions and each endpoint's target: URL, format, headers, live secrets), read
//! once in a group and kept until the group ends or one of its statements changes
//! endpoints: other nodes change them too, so nothing is kept past a transaction.

use std::collections::HashMap;
use std::sync::Arc;

use merpati_domain::endpoint::{BodyFormat, StoredBreaker, Subscription, Target};
use merpati_domain::ids::{AccountId, EndpointId};

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

/// An endpoint's target, with the secrets live at `now`.
pub(crate) fn load_target(c: &mut Conn, endpoint: &EndpointId, now: i64) -> DbResult<Target> {
    let r = c.query_one(
        "SELECT account_id, url, format, secret_in_body, headers, max_concurrency,
                rate_limit, ordering, breaker_until, breaker_cooldown_ms
         FROM endpoints WHERE id = $1",
        &[&endpoint.as_str()],
    )?;
    let headers = c.open(&format!("endpoints.headers:{endpoint}"), r.get(4))?;
    let secrets = c
        .query(
            "SELECT secret FROM endpoint_secrets
             WHERE endpoint_id = $1 AND (expires_at IS NULL OR expires_at > $2)
             ORDER BY created_at DESC, id DESC",
            &[&endpoint.as_str(), &now],
        )?
        .iter()
        .map(|s| c.open(&format!("endpoint_secrets.secret:{endpoint}"), s.get(0)))
        .collect::<DbResult<Vec<String>>>()?;
    let format: &str = r.get(2);
    Ok(Target {
        id: endpoint.clone(),
        account_id: AccountId::from(r.get::<_, String>(0)),
        url: r.get(1),
        format: BodyFormat::parse(format).unwrap_or(BodyFormat::Json),
        secret_in_body: r.get(3),
        headers: json_column(&headers)?,
        secrets,
        max_concurrency: r.get::<_, Option<i64>>(5).map(|n| n as u32),
        rate_limit: r.get::<_, Option<i64>>(6).map(|n| n as u32),
        ordered: r.get::<_, Option<&str>>(7) == Some("device"),
        breaker: match (r.get(8), r.get(9)) {
            (Some(until), Some(cooldown_ms)) => Some(StoredBreaker { until, cooldown_ms }),
            _ => None,
        },
    })
}
