//! What fan-out and delivery read about endpoints on every event (each account's
//! subscriptions and each endpoint's target: URL, format, headers, live secrets), kept by
//! a writer from one transaction to the next while nothing of it changes. Other nodes
//! change endpoints too: each transaction first reads the number every such change raises
//! (`endpoint_changes`, migration 9), and what was kept under another number goes. The
//! number is read before anything is loaded, so what is kept is never older than the number
//! it is kept under. A target is kept no longer than its earliest live secret lives.

use std::collections::HashMap;
use std::sync::Arc;

use merpati_domain::endpoint::{BodyFormat, StoredBreaker, Subscription, Target};
use merpati_domain::ids::{AccountId, EndpointId};
use merpati_domain::StoreError;

use crate::conn::Conn;
use crate::error::DbResult;
use crate::rows::json_column;

/// The number every change to endpoints raises, read in the transaction under way.
pub(crate) const CHANGES: &str = "SELECT version FROM endpoint_changes";

#[derive(Default)]
pub(crate) struct EndpointCache {
    subscriptions: HashMap<AccountId, Arc<Vec<Subscription>>>,
    /// Each target, and when its earliest live secret expires.
    targets: HashMap<EndpointId, (Arc<Target>, Option<i64>)>,
    /// The number of changes what is kept was read under; none: nothing is kept.
    version: Option<i64>,
    /// Whether the transaction under way read the number.
    checked: bool,
}

impl EndpointCache {
    /// Forgets everything kept: a statement of the transaction changed endpoints, or the
    /// transaction was undone.
    pub(crate) fn forget(&mut self) {
        self.subscriptions.clear();
        self.targets.clear();
        self.version = None;
        self.checked = false;
    }

    /// The transaction ended: what is kept stays, to be checked by the next.
    pub(crate) fn end_transaction(&mut self) {
        self.checked = false;
    }

    /// The number of changes as the transaction under way read it: what was kept under
    /// another goes.
    pub(crate) fn check(&mut self, version: i64) {
        if self.version != Some(version) {
            self.subscriptions.clear();
            self.targets.clear();
            self.version = Some(version);
        }
        self.checked = true;
    }

    fn checked(&mut self, c: &mut Conn) -> DbResult<()> {
        if !self.checked {
            let version = c.query_one(CHANGES, &[])?.get(0);
            self.check(version);
        }
        Ok(())
    }

    /// The number of changes the transaction under way read, while what it changed of
    /// endpoints (if anything) has not made what is kept go.
    pub(crate) fn seen(&self) -> Option<i64> {
        self.version.filter(|_| self.checked)
    }

    /// An account's endpoints as kept, unchecked: for guesses only.
    pub(crate) fn kept_subscriptions(&self, account: &AccountId) -> Option<Arc<Vec<Subscription>>> {
        self.subscriptions.get(account).cloned()
    }

    /// An account's endpoints, as fan-out matches events against them.
    pub(crate) fn subscriptions(
        &mut self,
        c: &mut Conn,
        account: &AccountId,
    ) -> DbResult<Arc<Vec<Subscription>>> {
        self.checked(c)?;
        if let Some(subs) = self.subscriptions.get(account) {
            return Ok(subs.clone());
        }
        let subs = Arc::new(load_subscriptions(c, account)?);
        self.subscriptions.insert(account.clone(), subs.clone());
        Ok(subs)
    }

    /// Where deliveries to the endpoint go, with the secrets live at `now`.
    pub(crate) fn target(
        &mut self,
        c: &mut Conn,
        endpoint: &EndpointId,
        now: i64,
    ) -> DbResult<Arc<Target>> {
        self.checked(c)?;
        if let Some((target, expires)) = self.targets.get(endpoint) {
            if expires.is_none_or(|at| now < at) {
                return Ok(target.clone());
            }
        }
        let (target, expires) =
            load_targets(c, std::slice::from_ref(endpoint), now, TargetsOf::All)?
                .remove(endpoint)
                .ok_or_else(|| StoreError::Internal(format!("endpoint {endpoint} is gone")))?;
        let target = Arc::new(target);
        self.targets
            .insert(endpoint.clone(), (target.clone(), expires));
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
                  ORDER BY s.created_at DESC, s.id DESC),
            (SELECT MIN(s.expires_at) FROM endpoint_secrets s
             WHERE s.endpoint_id = ep.id AND s.expires_at > $2),
            ep.disabled
     FROM UNNEST($1::TEXT[]) AS k(id)
     CROSS JOIN LATERAL (SELECT * FROM endpoints ep WHERE ep.id = k.id LIMIT 1) ep";

/// Which endpoints' targets [`load_targets`] answers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum TargetsOf {
    All,
    /// Disabled or deleted ones left out (a deleted one is disabled too).
    Enabled,
}

/// The targets of those of `endpoints` that exist, with the secrets live at `now`, and
/// when the earliest of those secrets expires.
pub(crate) fn load_targets(
    c: &mut Conn,
    endpoints: &[EndpointId],
    now: i64,
    of: TargetsOf,
) -> DbResult<HashMap<EndpointId, (Target, Option<i64>)>> {
    let ids: Vec<&str> = endpoints.iter().map(EndpointId::as_str).collect();
    let rows = c.query(TARGETS, &[&ids, &now])?;
    let mut targets = HashMap::with_capacity(rows.len());
    for r in &rows {
        if of == TargetsOf::Enabled && r.get::<_, bool>(13) {
            continue;
        }
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
        targets.insert(endpoint, (target, r.get(12)));
    }
    Ok(targets)
}
