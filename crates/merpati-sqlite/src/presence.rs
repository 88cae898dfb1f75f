//! Presence as stored: each device's announced state and history (periods and blips),
//! and the announcements, which go out through the same events and deliveries as every
//! event. What a change announces and records is the domain's rule
//! (`merpati_domain::presence::announce`).

use std::collections::HashMap;
use std::sync::Arc;

use merpati_domain::device::DeviceContext;
use merpati_domain::ids::{AccountId, DeviceId, EventId};
use merpati_domain::presence::announce::{announcement, Announcement};
use merpati_domain::presence::machine::Change;
use merpati_domain::presence::step::{plan, CloseWhy, Stepped};
use merpati_domain::presence::{
    Applied, Blip, HeldLink, HistoryScope, LeaseSettings, Period, PeriodState, PresenceStep,
    PresenceStore, PresenceWrite, StoredView, WriteKind,
};
use merpati_domain::{StoreError, StoreResult};
use merpati_webhooks::Event;
use rusqlite::{params, Connection, OptionalExtension};

use crate::devices::{context_row, presence_to_db, CONTEXT_QUERY};
use crate::error::DbResult;
use crate::fanout::{fan_out, insert_event, NewEvent};
use crate::presence_machines;
use crate::rows::{id, word};
use crate::table::owned;
use crate::writer::Tx;
use crate::SqliteStore;

/// Ends the device's open period where the announcement's begins, and opens that one.
fn next_period(c: &Connection, d: &DeviceContext, a: &Announcement, now: i64) -> DbResult<()> {
    let (account, device) = (d.account_id.as_str(), d.device_id.as_str());
    c.prepare_cached(
        "UPDATE presence_periods SET ended_at = MAX(started_at, ?3)
         WHERE account_id = ?1 AND device_id = ?2 AND ended_at IS NULL",
    )?
    .execute(params![account, device, a.since])?;
    let reason = a.reason.map(|r| r.as_str());
    c.prepare_cached(
        "INSERT INTO presence_periods
             (account_id, device_id, state, started_at, reason, announced_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        account,
        device,
        a.state.as_str(),
        a.since,
        reason,
        now
    ])?;
    c.prepare_cached(
        "UPDATE devices SET presence = ?3, presence_since = ?4, presence_reason = ?5
         WHERE account_id = ?1 AND id = ?2",
    )?
    .execute(params![
        account,
        device,
        presence_to_db(a.state.presence()),
        a.since,
        reason
    ])?;
    Ok(())
}

/// Stores the announcement's event and fans it out; returns its id and how many
/// deliveries are due.
fn announce(
    tx: &mut Tx<'_>,
    d: &DeviceContext,
    a: Announcement,
    now: i64,
) -> DbResult<(EventId, usize)> {
    let event_id = EventId::generate();
    let kind = a.event_type();
    let new = NewEvent {
        id: &event_id,
        account_id: &d.account_id,
        event_type: kind,
        scope: d.scope(),
        created_at: now,
        inbound: None,
    };
    let body = String::from_utf8(Event::Device(a.event).to_json()).expect("JSON is UTF-8");
    let (seq, _) = insert_event(tx, &new, |_| body)?;
    let subs = tx.subscriptions(&d.account_id)?;
    let due = fan_out(tx, &subs, seq, kind, d.scope(), now, None)?;
    Ok((event_id, due))
}

/// The scope's rows as (join, condition on its id), after checking it is the account's.
fn scope_sql(
    c: &Connection,
    account: &AccountId,
    scope: &HistoryScope,
) -> DbResult<(&'static str, &'static str)> {
    let (table, what, join, condition) = match scope {
        HistoryScope::Device(_) => ("devices", "device", "", "p.device_id = ?2"),
        HistoryScope::Channel(_) => (
            "channels",
            "channel",
            "JOIN devices d ON d.account_id = p.account_id AND d.id = p.device_id",
            "d.channel_id = ?2",
        ),
        HistoryScope::Business(_) => (
            "businesses",
            "business",
            "JOIN devices d ON d.account_id = p.account_id AND d.id = p.device_id
             JOIN channels ch ON ch.account_id = d.account_id AND ch.id = d.channel_id",
            "ch.business_id = ?2",
        ),
    };
    if !owned(c, table, account.as_str(), scope_id(scope))? {
        return Err(StoreError::NotFound(what).into());
    }
    Ok((join, condition))
}

fn scope_id(scope: &HistoryScope) -> &str {
    match scope {
        HistoryScope::Device(id) => id.as_str(),
        HistoryScope::Channel(id) => id.as_str(),
        HistoryScope::Business(id) => id.as_str(),
    }
}

/// Records a group of presence writes: history, the device's announced presence, engine
/// reports, and each announcement's event and deliveries. Writes for devices deleted
/// meanwhile are skipped.
pub(crate) fn record(tx: &mut Tx<'_>, writes: Vec<PresenceWrite>, now: i64) -> DbResult<Applied> {
    let mut applied = Applied::default();
    let mut contexts: HashMap<(AccountId, DeviceId), Option<DeviceContext>> = HashMap::new();
    for (i, w) in writes.into_iter().enumerate() {
        let key = (w.account_id.clone(), w.device_id.clone());
        if !contexts.contains_key(&key) {
            let ctx = tx
                .prepare_cached(&format!(
                    "{CONTEXT_QUERY} WHERE d.account_id = ?1 AND d.id = ?2"
                ))?
                .query_row(params![key.0.as_str(), key.1.as_str()], context_row)
                .optional()?;
            contexts.insert(key.clone(), ctx);
        }
        // Deleted since: nothing to record.
        let Some(d) = contexts[&key].clone() else {
            continue;
        };
        let (account, device) = (d.account_id.as_str(), d.device_id.as_str());
        let change = match w.what {
            WriteKind::Engine(report) => {
                tx.prepare_cached(
                    "UPDATE devices SET engine_state = ?3 WHERE account_id = ?1 AND id = ?2",
                )?
                .execute(params![account, device, report.map(|r| r.as_str())])?;
                continue;
            }
            WriteKind::Change(change) => change,
        };
        if let Change::Blip {
            started_at,
            ended_at,
            reason,
        } = change
        {
            tx.prepare_cached(
                "INSERT INTO presence_blips (account_id, device_id, started_at, ended_at, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                account,
                device,
                started_at,
                ended_at,
                reason.as_str()
            ])?;
        }
        let Some(a) = announcement(&change, &d) else {
            continue;
        };
        next_period(tx, &d, &a, now)?;
        let (state, since) = (a.state, a.since);
        let (event_id, due) = announce(tx, &d, a, now)?;
        applied.event_ids.insert(i, event_id);
        applied.new_deliveries += due;
        // Later writes of this batch see the device as it now is.
        if let Some(Some(ctx)) = contexts.get_mut(&key) {
            ctx.presence = state.presence();
            ctx.presence_since = Some(since);
        }
    }
    Ok(applied)
}

#[async_trait::async_trait]
impl PresenceStore for SqliteStore {
    async fn apply_presence(&self, writes: Vec<PresenceWrite>, now: i64) -> StoreResult<Applied> {
        self.write(move |tx| record(tx, writes, now)).await
    }

    async fn step_presence(&self, step: PresenceStep) -> StoreResult<Stepped> {
        self.write(move |tx| {
            let (loaded, swept, more) = presence_machines::load_step(tx, &step)?;
            let plan = plan(
                &step.node,
                step.now,
                &step.lease,
                &loaded,
                &swept,
                &step.requests,
            );
            let applied = record(tx, plan.writes.clone(), step.now)?;
            let next = presence_machines::write_step(tx, &plan.machines)?;
            Ok(plan.finish(&applied, next, more))
        })
        .await
    }

    async fn restart_presence(&self, lease: Arc<LeaseSettings>, now: i64) -> StoreResult<usize> {
        self.write(move |tx| presence_machines::restart(tx, &lease, now))
            .await
    }

    async fn presence_view(
        &self,
        account: AccountId,
        device: DeviceId,
    ) -> StoreResult<Option<StoredView>> {
        self.read(move |c| presence_machines::view(c, &account, &device))
            .await
    }

    async fn stale_links(
        &self,
        node: String,
        links: Vec<HeldLink>,
    ) -> StoreResult<Vec<(u64, CloseWhy)>> {
        self.read(move |c| presence_machines::stale_links(c, &node, &links))
            .await
    }

    async fn presence_periods(
        &self,
        account: AccountId,
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
            let rows = s.query_map(params![account.as_str(), scope_id(&scope), from, to], |r| {
                Ok(Period {
                    device_id: id(r, 0)?,
                    state: word(r, 1, PeriodState::parse)?,
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
        account: AccountId,
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
            let rows = s.query_map(params![account.as_str(), scope_id(&scope), from, to], |r| {
                Ok(Blip {
                    device_id: id(r, 0)?,
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
