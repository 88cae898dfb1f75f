//! The writer's copy of what fan-out and delivery read about endpoints on every event: each
//! account's subscriptions and each endpoint's target (URL, format, headers, live secrets).
//!
//! It lives on the writer thread, the only one that changes endpoints, and is emptied
//! whenever a statement there touches `endpoints` or `endpoint_secrets` (an update hook) and
//! whenever a write is rolled back, so it never shows what the database does not hold. Other
//! connections bypass it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{params, Connection};

use super::parse_json_column;
use crate::delivery::{earliest, Target};
use crate::endpoints::{BodyFormat, Subscription};
use crate::store::StoreResult;

#[derive(Default)]
struct Cache {
    subscriptions: HashMap<String, Arc<Vec<Subscription>>>,
    /// A target, and when its live secrets next change (a rotated-out secret expires).
    targets: HashMap<String, (Arc<Target>, Option<i64>)>,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

/// Installs the hook that empties the cache when endpoints change through `conn`.
pub(super) fn watch(conn: &Connection) {
    conn.update_hook(Some(|_, _: &str, table: &str, _| {
        if matches!(table, "endpoints" | "endpoint_secrets") {
            forget();
        }
    }));
}

/// Empties the cache of this thread.
pub(super) fn forget() {
    CACHE.with(|c| *c.borrow_mut() = Cache::default());
}

fn cached(c: &Connection) -> bool {
    // Only the writer watches its changes; read-only connections run on pool threads.
    !c.is_readonly("main").unwrap_or(true)
}

/// An account's endpoints, as fan-out matches events against them.
pub(super) fn subscriptions(c: &Connection, account: &str) -> StoreResult<Arc<Vec<Subscription>>> {
    if !cached(c) {
        return Ok(Arc::new(load_subscriptions(c, account)?));
    }
    if let Some(subs) = CACHE.with(|cache| cache.borrow().subscriptions.get(account).cloned()) {
        return Ok(subs);
    }
    let subs = Arc::new(load_subscriptions(c, account)?);
    CACHE.with(|cache| {
        cache
            .borrow_mut()
            .subscriptions
            .insert(account.to_owned(), subs.clone())
    });
    Ok(subs)
}

/// Where deliveries to the endpoint go, with the secrets live at `now`.
pub(super) fn target(c: &Connection, endpoint_id: &str, now: i64) -> StoreResult<Arc<Target>> {
    if !cached(c) {
        return Ok(Arc::new(load_target(c, endpoint_id, now)?.0));
    }
    let hit = CACHE.with(|cache| {
        cache
            .borrow()
            .targets
            .get(endpoint_id)
            .filter(|(_, changes_at)| changes_at.is_none_or(|at| now < at))
            .map(|(t, _)| t.clone())
    });
    if let Some(target) = hit {
        return Ok(target);
    }
    let (target, changes_at) = load_target(c, endpoint_id, now)?;
    let target = Arc::new(target);
    CACHE.with(|cache| {
        cache
            .borrow_mut()
            .targets
            .insert(endpoint_id.to_owned(), (target.clone(), changes_at))
    });
    Ok(target)
}

fn load_subscriptions(c: &Connection, account: &str) -> StoreResult<Vec<Subscription>> {
    let mut s = c.prepare_cached(
        "SELECT id, events, business_ids, channel_ids, device_ids, disabled, ordering
         FROM endpoints WHERE account_id = ?1 AND deleted_at IS NULL",
    )?;
    let rows = s.query_map([account], |r| {
        let events: Option<String> = r.get(1)?;
        Ok(Subscription {
            endpoint_id: r.get(0)?,
            events: events.as_deref().map(parse_json_column).transpose()?,
            business_ids: parse_json_column(&r.get::<_, String>(2)?)?,
            channel_ids: parse_json_column(&r.get::<_, String>(3)?)?,
            device_ids: parse_json_column(&r.get::<_, String>(4)?)?,
            disabled: r.get(5)?,
            ordered: r.get::<_, Option<String>>(6)?.as_deref() == Some("device"),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The target, and the earliest time one of its live secrets expires.
fn load_target(c: &Connection, endpoint_id: &str, now: i64) -> StoreResult<(Target, Option<i64>)> {
    let (url, format, secret_in_body, headers, max_concurrency, rate_limit, ordering) = c
        .prepare_cached(
            "SELECT url, format, secret_in_body, headers, max_concurrency, rate_limit, ordering
             FROM endpoints WHERE id = ?1",
        )?
        .query_row([endpoint_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, bool>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<u32>>(4)?,
                r.get::<_, Option<u32>>(5)?,
                r.get::<_, Option<String>>(6)?,
            ))
        })?;
    let mut live = c.prepare_cached(
        "SELECT secret, expires_at FROM endpoint_secrets
         WHERE endpoint_id = ?1 AND (expires_at IS NULL OR expires_at > ?2)
         ORDER BY created_at DESC, rowid DESC",
    )?;
    let mut secrets = Vec::new();
    let mut changes_at: Option<i64> = None;
    for row in live.query_map(params![endpoint_id, now], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?))
    })? {
        let (secret, expires_at) = row?;
        changes_at = earliest(changes_at, expires_at);
        secrets.push(secret);
    }
    let target = Target {
        id: endpoint_id.to_owned(),
        url,
        format: BodyFormat::parse(&format).unwrap_or(BodyFormat::Json),
        secret_in_body,
        headers: parse_json_column(&headers)?,
        secrets,
        max_concurrency,
        rate_limit,
        ordered: ordering.as_deref() == Some("device"),
        prepared: Default::default(),
    };
    Ok((target, changes_at))
}
