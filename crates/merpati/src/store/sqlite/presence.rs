use std::collections::HashMap;

use merpati_webhooks::{
    ChannelRef, DeviceEvent, DeviceEventKind, DeviceRef, DeviceStatus, Event, NamedRef,
};
use rusqlite::{params, Connection, OptionalExtension};

use super::devices::{
    context_row, engine_report_from_db, engine_report_to_db, owned, CONTEXT_QUERY,
};
use super::endpoint_cache::subscriptions;
use super::fanout::{fan_out, insert_event, NewEvent};
use super::ingest::scope;
use super::SqliteStore;
use crate::devices::{DeviceContext, Presence};
use crate::ids;
use crate::presence::machine::{Announced, Change};
use crate::presence::{
    Applied, Blip, HistoryScope, Period, PresenceStore, PresenceWrite, StoredPresence, WriteKind,
};
use crate::store::{StoreError, StoreResult};

fn device_ref(d: &DeviceContext) -> DeviceRef {
    DeviceRef {
        id: d.device_id.clone(),
        name: d.device_name.clone(),
        channel: ChannelRef {
            id: d.channel_id.clone(),
            name: d.channel_name.clone(),
            engine: d.engine.clone(),
        },
        bisnis: NamedRef {
            id: d.business_id.clone(),
            name: d.business_name.clone(),
        },
        user: NamedRef {
            id: d.account_id.clone(),
            name: d.account_name.clone(),
        },
    }
}

/// Ends the device's open period at `at` and opens one in `state` from `at`.
fn next_period(
    c: &Connection,
    d: &DeviceContext,
    state: &str,
    at: i64,
    reason: Option<&str>,
) -> StoreResult<()> {
    c.prepare_cached(
        "UPDATE presence_periods SET ended_at = MAX(started_at, ?3)
         WHERE account_id = ?1 AND device_id = ?2 AND ended_at IS NULL",
    )?
    .execute(params![d.account_id, d.device_id, at])?;
    c.prepare_cached(
        "INSERT INTO presence_periods (account_id, device_id, state, started_at, reason)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![d.account_id, d.device_id, state, at, reason])?;
    c.prepare_cached(
        "UPDATE devices SET presence = ?3, presence_since = ?4, presence_reason = ?5
         WHERE account_id = ?1 AND id = ?2",
    )?
    .execute(params![
        d.account_id,
        d.device_id,
        if state == "up" {
            Presence::Connected.as_db()
        } else {
            Presence::Disconnected.as_db()
        },
        at,
        reason
    ])?;
    Ok(())
}

/// Stores the announcement and fans it out; returns its event id and how many deliveries
/// are due.
fn announce(
    c: &Connection,
    d: &DeviceContext,
    payload: DeviceEvent,
    now: i64,
) -> StoreResult<(String, usize)> {
    let event_id = ids::new_id("evt");
    let kind = payload.event.as_str();
    let new = NewEvent {
        id: &event_id,
        account_id: &d.account_id,
        event_type: kind,
        scope: scope(d),
        created_at: now,
        inbound: None,
    };
    let body = String::from_utf8(Event::Device(payload).to_json()).expect("JSON is UTF-8");
    let (seq, _) = insert_event(c, &new, |_| body)?;
    let subs = subscriptions(c, &d.account_id)?;
    let due = fan_out(c, &subs, seq, kind, scope(d), now, None)?;
    Ok((event_id, due))
}

/// The scope's rows as (join, condition on its id), after checking it is the account's.
fn scope_sql(
    c: &Connection,
    account: &str,
    scope: &HistoryScope,
) -> StoreResult<(&'static str, String)> {
    let (table, id, what, join, condition) = match scope {
        HistoryScope::Device(id) => ("devices", id, "device", "", "p.device_id = ?2"),
        HistoryScope::Channel(id) => (
            "channels",
            id,
            "channel",
            "JOIN devices d ON d.account_id = p.account_id AND d.id = p.device_id",
            "d.channel_id = ?2",
        ),
        HistoryScope::Business(id) => (
            "businesses",
            id,
            "business",
            "JOIN devices d ON d.account_id = p.account_id AND d.id = p.device_id
             JOIN channels ch ON ch.account_id = d.account_id AND ch.id = d.channel_id",
            "ch.business_id = ?2",
        ),
    };
    if !owned(c, table, account, id)? {
        return Err(StoreError::NotFound(what));
    }
    Ok((join, condition.to_string()))
}

fn scope_id(scope: &HistoryScope) -> &str {
    match scope {
        HistoryScope::Device(id) | HistoryScope::Channel(id) | HistoryScope::Business(id) => id,
    }
}

#[async_trait::async_trait]
impl PresenceStore for SqliteStore {
    async fn apply_presence(&self, writes: Vec<PresenceWrite>, now: i64) -> StoreResult<Applied> {
        self.write(move |c| {
            let mut applied = Applied::default();
            let mut contexts: HashMap<(String, String), Option<DeviceContext>> = HashMap::new();
            for (i, w) in writes.into_iter().enumerate() {
                let key = (w.account_id.clone(), w.device_id.clone());
                if !contexts.contains_key(&key) {
                    let ctx = c
                        .prepare_cached(&format!(
                            "{CONTEXT_QUERY} WHERE d.account_id = ?1 AND d.id = ?2"
                        ))?
                        .query_row(params![w.account_id, w.device_id], context_row)
                        .optional()?;
                    contexts.insert(key.clone(), ctx);
                }
                // Deleted since: nothing to record.
                let Some(d) = contexts[&key].clone() else {
                    continue;
                };
                let (kind, status, state, since, reason, offline_seconds, timestamp) = match w.what
                {
                    WriteKind::Engine(report) => {
                        c.prepare_cached(
                            "UPDATE devices SET engine_state = ?3 WHERE account_id = ?1 AND id = ?2",
                        )?
                        .execute(params![d.account_id, d.device_id, engine_report_to_db(report)])?;
                        continue;
                    }
                    WriteKind::Change(Change::Blip {
                        started_at,
                        ended_at,
                        reason,
                    }) => {
                        c.prepare_cached(
                            "INSERT INTO presence_blips (account_id, device_id, started_at, ended_at, reason)
                             VALUES (?1, ?2, ?3, ?4, ?5)",
                        )?
                        .execute(params![d.account_id, d.device_id, started_at, ended_at, reason.as_str()])?;
                        continue;
                    }
                    WriteKind::Change(Change::Connected {
                        at,
                        offline_seconds,
                    }) => (
                        DeviceEventKind::Connected,
                        DeviceStatus::Connected,
                        "up",
                        at,
                        None,
                        offline_seconds,
                        at,
                    ),
                    // Dated from when the device was lost, not from when that was announced.
                    WriteKind::Change(Change::Disconnected { since, reason, .. }) => (
                        DeviceEventKind::Disconnected,
                        DeviceStatus::Disconnected,
                        "down",
                        since,
                        Some(reason.as_str()),
                        None,
                        since,
                    ),
                };
                next_period(c, &d, state, since, reason)?;
                let payload = DeviceEvent {
                    event: kind,
                    timestamp: timestamp.div_euclid(1000),
                    device: device_ref(&d),
                    status,
                    reason: reason.map(str::to_owned),
                    offline_seconds,
                };
                let (event_id, due) = announce(c, &d, payload, now)?;
                applied.event_ids.insert(i, event_id);
                applied.new_deliveries += due;
                // Later writes of this batch see the device as it now is.
                if let Some(Some(ctx)) = contexts.get_mut(&key) {
                    ctx.presence = if state == "up" {
                        Presence::Connected
                    } else {
                        Presence::Disconnected
                    };
                    ctx.presence_since = Some(since);
                }
            }
            Ok(applied)
        })
        .await
    }

    async fn presence_to_restore(&self) -> StoreResult<Vec<StoredPresence>> {
        self.read(|c| {
            let mut s = c.prepare_cached(
                "SELECT d.account_id, d.id, d.presence, d.presence_since, d.engine_state,
                        ch.engine, ch.heartbeat_timeout_ms, ch.grace_ms
                 FROM devices d
                 JOIN channels ch ON ch.account_id = d.account_id AND ch.id = d.channel_id
                 WHERE d.presence = 'up' OR d.engine_state IS NOT NULL",
            )?;
            let rows = s.query_map([], |r| {
                Ok(StoredPresence {
                    account_id: r.get(0)?,
                    device_id: r.get(1)?,
                    announced: match Presence::from_db(&r.get::<_, String>(2)?) {
                        Presence::Unknown => Announced::Unknown,
                        Presence::Connected => Announced::Up,
                        Presence::Disconnected => Announced::Down,
                    },
                    since: r.get(3)?,
                    engine_state: r
                        .get::<_, Option<String>>(4)?
                        .as_deref()
                        .and_then(engine_report_from_db),
                    engine: r.get(5)?,
                    channel_heartbeat_ms: r.get(6)?,
                    channel_grace_ms: r.get(7)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn presence_periods(
        &self,
        account: String,
        scope: HistoryScope,
        from: i64,
        to: i64,
    ) -> StoreResult<Vec<Period>> {
        self.read(move |c| {
            let (join, condition) = scope_sql(c, &account, &scope)?;
            let mut s = c.prepare_cached(&format!(
                "SELECT p.device_id, p.state, p.started_at, p.ended_at, p.reason
                 FROM presence_periods p {join}
                 WHERE p.account_id = ?1 AND {condition}
                   AND p.started_at < ?4 AND (p.ended_at IS NULL OR p.ended_at > ?3)
                 ORDER BY p.started_at, p.id"
            ))?;
            let rows = s.query_map(params![account, scope_id(&scope), from, to], |r| {
                Ok(Period {
                    device_id: r.get(0)?,
                    state: r.get(1)?,
                    started_at: r.get(2)?,
                    ended_at: r.get(3)?,
                    reason: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn presence_blips(
        &self,
        account: String,
        scope: HistoryScope,
        from: i64,
        to: i64,
    ) -> StoreResult<Vec<Blip>> {
        self.read(move |c| {
            let (join, condition) = scope_sql(c, &account, &scope)?;
            let mut s = c.prepare_cached(&format!(
                "SELECT p.device_id, p.started_at, p.ended_at, p.reason
                 FROM presence_blips p {join}
                 WHERE p.account_id = ?1 AND {condition}
                   AND p.started_at < ?4 AND p.ended_at > ?3
                 ORDER BY p.started_at, p.id"
            ))?;
            let rows = s.query_map(params![account, scope_id(&scope), from, to], |r| {
                Ok(Blip {
                    device_id: r.get(0)?,
                    started_at: r.get(1)?,
                    ended_at: r.get(2)?,
                    reason: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }
}
