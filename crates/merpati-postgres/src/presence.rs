//! Presence as stored: each announced change closes the device's open period and opens the
//! next, updates the device's announced presence, and becomes an event fanned out like any
//! other, all in the presence hub's one write; blips and engine reports beside them; and
//! the history read back by device, channel or business.

use std::collections::HashMap;
use std::sync::Arc;

use merpati_domain::device::DeviceContext;
use merpati_domain::fanout;
use merpati_domain::ids::{AccountId, DeviceId, EventId};
use merpati_domain::presence::announce::{announcement, Announcement};
use merpati_domain::presence::machine::Change;
use merpati_domain::presence::step::{plan, CloseWhy, DeviceKey, Stepped};
use merpati_domain::presence::{
    Applied, Blip, HeldLink, HistoryScope, LeaseSettings, Period, PeriodState, PresenceStep,
    PresenceStore, PresenceWrite, StoredView, WriteKind,
};
use merpati_domain::{StoreError, StoreResult};
use merpati_webhooks::Event;

use crate::conn::Conn;
use crate::devices::{context_row, presence_to_db, CONTEXTS_BY_KEYS};
use crate::error::DbResult;
use crate::fanout::{fan_out, insert_event, NewEvent};
use crate::presence_machines;
use crate::rows::word;
use crate::table::owned;
use crate::writer::Tx;
use crate::PostgresStore;

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

fn scope_sql(
    c: &mut Conn,
    account: &AccountId,
    scope: &HistoryScope,
) -> DbResult<(&'static str, &'static str)> {
    let (table, what, join, condition) = match scope {
        HistoryScope::Device(_) => ("devices", "device", "", "p.device_id = $2"),
        HistoryScope::Channel(_) => (
            "channels",
            "channel",
            "JOIN devices d ON d.account_id = p.account_id AND d.id = p.device_id",
            "d.channel_id = $2",
        ),
        HistoryScope::Business(_) => (
            "businesses",
            "business",
            "JOIN devices d ON d.account_id = p.account_id AND d.id = p.device_id
             JOIN channels ch ON ch.account_id = d.account_id AND ch.id = d.channel_id",
            "ch.business_id = $2",
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

/// The devices' contexts (deleted devices absent), in one round trip.
fn contexts(
    tx: &mut Tx<'_>,
    writes: &[PresenceWrite],
) -> DbResult<HashMap<DeviceKey, DeviceContext>> {
    let (accounts, devices): (Vec<&str>, Vec<&str>) = writes
        .iter()
        .map(|w| (w.account_id.as_str(), w.device_id.as_str()))
        .unzip();
    tx.query(&CONTEXTS_BY_KEYS, &[&accounts, &devices])?
        .iter()
        .map(|r| {
            let d = context_row(r)?;
            Ok(((d.account_id.clone(), d.device_id.clone()), d))
        })
        .collect()
}

/// A period an announcement opens; `ended_at` when a later one of the same write closes it.
struct NewPeriod<'a> {
    device: &'a DeviceContext,
    announcement: &'a Announcement,
    ended_at: Option<i64>,
}

/// The history the announcements make: each device's open period closed at its first
/// announcement, one period per announcement (closed by the next of the same device), and
/// the device's announced presence as of its last, a statement each for them all.
fn periods(
    tx: &mut Tx<'_>,
    announced: &[(usize, DeviceContext, Announcement)],
    now: i64,
) -> DbResult<()> {
    let mut first: HashMap<DeviceKey, i64> = HashMap::new();
    let mut last: HashMap<DeviceKey, &Announcement> = HashMap::new();
    let mut opened: Vec<NewPeriod<'_>> = Vec::with_capacity(announced.len());
    let mut open_at: HashMap<DeviceKey, usize> = HashMap::new();
    for (_, d, a) in announced {
        let key = (d.account_id.clone(), d.device_id.clone());
        first.entry(key.clone()).or_insert(a.since);
        if let Some(previous) = open_at.insert(key.clone(), opened.len()) {
            let p = &mut opened[previous];
            p.ended_at = Some(p.announcement.since.max(a.since));
        }
        last.insert(key, a);
        opened.push(NewPeriod {
            device: d,
            announcement: a,
            ended_at: None,
        });
    }
    let (accounts, devices, since): (Vec<&str>, Vec<&str>, Vec<i64>) = first
        .iter()
        .map(|((account, device), since)| (account.as_str(), device.as_str(), *since))
        .collect();
    tx.execute(
        "UPDATE presence_periods p SET ended_at = GREATEST(p.started_at, c.since)
         FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[]) AS c(account_id, device_id, since)
         WHERE p.account_id = c.account_id AND p.device_id = c.device_id
           AND p.ended_at IS NULL",
        &[&accounts, &devices, &since],
    )?;
    let accounts: Vec<&str> = opened
        .iter()
        .map(|p| p.device.account_id.as_str())
        .collect();
    let devices: Vec<&str> = opened.iter().map(|p| p.device.device_id.as_str()).collect();
    let states: Vec<&str> = opened
        .iter()
        .map(|p| p.announcement.state.as_str())
        .collect();
    let started: Vec<i64> = opened.iter().map(|p| p.announcement.since).collect();
    let reasons: Vec<Option<&str>> = opened
        .iter()
        .map(|p| p.announcement.reason.map(|r| r.as_str()))
        .collect();
    let ended: Vec<Option<i64>> = opened.iter().map(|p| p.ended_at).collect();
    tx.execute(
        "INSERT INTO presence_periods
             (account_id, device_id, state, started_at, reason, ended_at, announced_at)
         SELECT account_id, device_id, state, started_at, reason, ended_at, $7
         FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[], $5::TEXT[], $6::BIGINT[])
              AS n(account_id, device_id, state, started_at, reason, ended_at)",
        &[
            &accounts, &devices, &states, &started, &reasons, &ended, &now,
        ],
    )?;
    let last: Vec<(&DeviceKey, &&Announcement)> = last.iter().collect();
    let accounts: Vec<&str> = last.iter().map(|(k, _)| k.0.as_str()).collect();
    let devices: Vec<&str> = last.iter().map(|(k, _)| k.1.as_str()).collect();
    let presences: Vec<&str> = last
        .iter()
        .map(|(_, a)| presence_to_db(a.state.presence()))
        .collect();
    let since: Vec<i64> = last.iter().map(|(_, a)| a.since).collect();
    let reasons: Vec<Option<&str>> = last
        .iter()
        .map(|(_, a)| a.reason.map(|r| r.as_str()))
        .collect();
    tx.execute(
        "UPDATE devices d SET presence = n.presence, presence_since = n.since,
                presence_reason = n.reason
         FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[], $5::TEXT[])
              AS n(account_id, id, presence, since, reason)
         WHERE d.account_id = n.account_id AND d.id = n.id",
        &[&accounts, &devices, &presences, &since, &reasons],
    )?;
    Ok(())
}

/// Records a group of presence writes: history, the device's announced presence, engine
/// reports, and each announcement's event and deliveries. Writes for devices deleted
/// meanwhile are skipped. Each kind of row is written for the whole group at once: a mass
/// drop's thousand announcements cost a few round trips, not a few thousand.
pub(crate) fn record(tx: &mut Tx<'_>, writes: Vec<PresenceWrite>, now: i64) -> DbResult<Applied> {
    let mut applied = Applied::default();
    let mut contexts = contexts(tx, &writes)?;
    let mut engines: HashMap<DeviceKey, Option<&'static str>> = HashMap::new();
    let mut blips: Vec<(DeviceKey, i64, i64, &str)> = Vec::new();
    let mut announced: Vec<(usize, DeviceContext, Announcement)> = Vec::new();
    for (i, w) in writes.into_iter().enumerate() {
        let key = (w.account_id, w.device_id);
        let Some(d) = contexts.get_mut(&key) else {
            continue;
        };
        let change = match w.what {
            WriteKind::Engine(report) => {
                engines.insert(key, report.map(|r| r.as_str()));
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
            blips.push((key.clone(), started_at, ended_at, reason.as_str()));
        }
        let Some(a) = announcement(&change, d) else {
            continue;
        };
        let before = d.clone();
        d.presence = a.state.presence();
        d.presence_since = Some(a.since);
        announced.push((i, before, a));
    }
    if !engines.is_empty() {
        let (keys, states): (Vec<_>, Vec<_>) = engines.into_iter().unzip();
        let (accounts, devices): (Vec<&str>, Vec<&str>) =
            keys.iter().map(|(a, d)| (a.as_str(), d.as_str())).unzip();
        tx.execute(
            "UPDATE devices d SET engine_state = n.state
             FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[]) AS n(account_id, id, state)
             WHERE d.account_id = n.account_id AND d.id = n.id",
            &[&accounts, &devices, &states],
        )?;
    }
    if !blips.is_empty() {
        let accounts: Vec<&str> = blips.iter().map(|b| b.0 .0.as_str()).collect();
        let devices: Vec<&str> = blips.iter().map(|b| b.0 .1.as_str()).collect();
        let started: Vec<i64> = blips.iter().map(|b| b.1).collect();
        let ended: Vec<i64> = blips.iter().map(|b| b.2).collect();
        let reasons: Vec<&str> = blips.iter().map(|b| b.3).collect();
        tx.execute(
            "INSERT INTO presence_blips (account_id, device_id, started_at, ended_at, reason)
             SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[], $5::TEXT[])",
            &[&accounts, &devices, &started, &ended, &reasons],
        )?;
    }
    if announced.is_empty() {
        return Ok(applied);
    }
    periods(tx, &announced, now)?;
    // Every number the events and their deliveries take, in one round trip.
    let mut deliveries = 0;
    for (_, d, a) in &announced {
        let subs = tx.subscriptions(&d.account_id)?;
        deliveries += fanout::plan(&subs, a.event_type(), d.scope()).count();
    }
    tx.reserve(announced.len(), deliveries)?;
    for (i, d, a) in announced {
        let (event_id, due) = announce(tx, &d, a, now)?;
        applied.event_ids.insert(i, event_id);
        applied.new_deliveries += due;
    }
    Ok(applied)
}

#[async_trait::async_trait]
impl PresenceStore for PostgresStore {
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
            c.query(
                &format!(
                    "SELECT p.device_id, p.state, p.started_at, p.ended_at, p.reason
                     FROM presence_periods p {join}
                     WHERE p.account_id = $1 AND {condition}
                       AND p.started_at < $4 AND (p.ended_at IS NULL OR p.ended_at > $3)
                     ORDER BY p.started_at, p.id"
                ),
                &[&account.as_str(), &scope_id(&scope), &from, &to],
            )?
            .iter()
            .map(|r| {
                Ok(Period {
                    device_id: DeviceId::from(r.get::<_, String>(0)),
                    state: word(r.get(1), PeriodState::parse)?,
                    started_at: r.get(2),
                    ended_at: r.get(3),
                    reason: r.get(4),
                })
            })
            .collect()
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
            Ok(c.query(
                &format!(
                    "SELECT p.device_id, p.started_at, p.ended_at, p.reason
                         FROM presence_blips p {join}
                         WHERE p.account_id = $1 AND {condition}
                           AND p.started_at < $4 AND p.ended_at > $3
                         ORDER BY p.started_at, p.id"
                ),
                &[&account.as_str(), &scope_id(&scope), &from, &to],
            )?
            .iter()
            .map(|r| Blip {
                device_id: DeviceId::from(r.get::<_, String>(0)),
                started_at: r.get(1),
                ended_at: r.get(2),
                reason: r.get(3),
            })
            .collect())
        })
        .await
    }
}
