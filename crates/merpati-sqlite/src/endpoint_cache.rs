//! The writer's copy of what fan-out and delivery read about endpoints on every event: each
//! account's subscriptions and each endpoint's target (URL, format, headers, live secrets).
//!
//! The writer owns it (it is part of [`crate::writer::WriterState`]): only the writer
//! changes endpoints, so what it read stays true until a statement of its own touches
//! `endpoints` or `endpoint_secrets` (an update hook marks the cache stale) or a write is
//! rolled back (the writer empties it), and it never shows what the database does not hold.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use merpati_domain::clock::earliest;
use merpati_domain::endpoint::{BodyFormat, StoredBreaker, Subscription, Target};
use merpati_domain::ids::{AccountId, EndpointId};
use rusqlite::{params, Connection};

use crate::error::DbResult;
use crate::rows::{id, json_column};

pub(crate) struct EndpointCache {
    /// Set by the update hook when a statement changed endpoints.
    stale: Arc<AtomicBool>,
    subscriptions: HashMap<AccountId, Arc<Vec<Subscription>>>,
    /// A target, and when its live secrets next change (a rotated-out secret expires).
    targets: HashMap<EndpointId, (Arc<Target>, Option<i64>)>,
}

impl EndpointCache {
    /// A cache for the writer's connection, emptied whenever a statement on it changes
    /// endpoints.
    pub(crate) fn watching(conn: &Connection) -> EndpointCache {
        let stale = Arc::new(AtomicBool::new(false));
        let marks = stale.clone();
        conn.update_hook(Some(move |_, _: &str, table: &str, _| {
            if matches!(table, "endpoints" | "endpoint_secrets") {
                marks.store(true, Ordering::Relaxed);
            }
        }));
        EndpointCache {
            stale,
            subscriptions: HashMap::new(),
            targets: HashMap::new(),
        }
    }

    pub(crate) fn forget(&mut self) {
        self.stale.store(false, Ordering::Relaxed);
        self.subscriptions.clear();
        self.targets.clear();
    }

    /// Empties the cache if a statement changed endpoints since it was last looked at.
    fn fresh(&mut self) -> &mut Self {
        if self.stale.swap(false, Ordering::Relaxed) {
            self.subscriptions.clear();
            self.targets.clear();
        }
        self
    }
}

impl EndpointCache {
    /// An account's endpoints, as fan-out matches events against them.
    pub(crate) fn subscriptions(
        &mut self,
        c: &Connection,
        account: &AccountId,
    ) -> DbResult<Arc<Vec<Subscription>>> {
        if let Some(subs) = self.fresh().subscriptions.get(account) {
            return Ok(subs.clone());
        }
        let subs = Arc::new(load_subscriptions(c, account)?);
        self.subscriptions.insert(account.clone(), subs.clone());
        Ok(subs)
    }

    /// Where deliveries to the endpoint go, with the secrets live at `now`.
    pub(crate) fn target(
        &mut self,
        c: &Connection,
        endpoint: &EndpointId,
        now: i64,
    ) -> DbResult<Arc<Target>> {
        let hit = self
            .fresh()
            .targets
            .get(endpoint)
            .filter(|(_, changes_at)| changes_at.is_none_or(|at| now < at))
            .map(|(t, _)| t.clone());
        if let Some(target) = hit {
            return Ok(target);
        }
        let (target, changes_at) = load_target(c, endpoint, now)?;
        let target = Arc::new(target);
        self.targets
            .insert(endpoint.clone(), (target.clone(), changes_at));
        Ok(target)
    }
}

fn load_subscriptions(c: &Connection, account: &AccountId) -> DbResult<Vec<Subscription>> {
    let mut s = c.prepare_cached(
        "SELECT id, events, business_ids, channel_ids, device_ids, disabled, ordering
         FROM endpoints WHERE account_id = ?1 AND deleted_at IS NULL",
    )?;
    let rows = s.query_map([account.as_str()], |r| {
        let events: Option<String> = r.get(1)?;
        Ok(Subscription {
            endpoint_id: id(r, 0)?,
            events: events.as_deref().map(json_column).transpose()?,
            business_ids: json_column(&r.get::<_, String>(2)?)?,
            channel_ids: json_column(&r.get::<_, String>(3)?)?,
            device_ids: json_column(&r.get::<_, String>(4)?)?,
            disabled: r.get(5)?,
            ordered: r.get::<_, Option<String>>(6)?.as_deref() == Some("device"),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The target, and the earliest time one of its live secrets expires.
pub(crate) fn load_target(
    c: &Connection,
    endpoint: &EndpointId,
    now: i64,
) -> DbResult<(Target, Option<i64>)> {
    let (account, url, format, secret_in_body, headers, max_concurrency, rate_limit, ordering) = c
        .prepare_cached(
            "SELECT account_id, url, format, secret_in_body,
                    open_secret('endpoints.headers:' || id, headers), max_concurrency,
                    rate_limit, ordering
             FROM endpoints WHERE id = ?1",
        )?
        .query_row([endpoint.as_str()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, bool>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<u32>>(5)?,
                r.get::<_, Option<u32>>(6)?,
                r.get::<_, Option<String>>(7)?,
            ))
        })?;
    let breaker = c
        .prepare_cached("SELECT breaker_until, breaker_cooldown_ms FROM endpoints WHERE id = ?1")?
        .query_row([endpoint.as_str()], |r| {
            Ok(match (r.get(0)?, r.get(1)?) {
                (Some(until), Some(cooldown_ms)) => Some(StoredBreaker { until, cooldown_ms }),
                _ => None,
            })
        })?;
    let mut live = c.prepare_cached(
        "SELECT open_secret('endpoint_secrets.secret:' || endpoint_id, secret), expires_at
         FROM endpoint_secrets
         WHERE endpoint_id = ?1 AND (expires_at IS NULL OR expires_at > ?2)
         ORDER BY created_at DESC, rowid DESC",
    )?;
    let mut secrets = Vec::new();
    let mut changes_at: Option<i64> = None;
    for row in live.query_map(params![endpoint.as_str(), now], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?))
    })? {
        let (secret, expires_at) = row?;
        changes_at = earliest(changes_at, expires_at);
        secrets.push(secret);
    }
    let target = Target {
        id: endpoint.clone(),
        account_id: account.into(),
        url,
        format: BodyFormat::parse(&format).unwrap_or(BodyFormat::Json),
        secret_in_body,
        headers: json_column(&headers)?,
        secrets,
        max_concurrency,
        rate_limit,
        ordered: ordering.as_deref() == Some("device"),
        breaker,
    };
    Ok((target, changes_at))
}
