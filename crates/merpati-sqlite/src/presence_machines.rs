//! Each device's presence machine as stored, and the steps that move it: the rows a step
//! needs, the devices a sweep finds (deadlines come, links whose node is gone), and the
//! machines written back. What a step does is the domain's (`presence::step::plan`).

use std::collections::HashMap;
use std::sync::LazyLock;

use merpati_domain::ids::{AccountId, DeviceId};
use merpati_domain::presence::machine::{LiveStatus, Pending, Reason, StoredMachine};
use merpati_domain::presence::step::{
    after_restart, CloseWhy, DeviceKey, Loaded, MachineWrite, Swept,
};
use merpati_domain::presence::{HeldLink, LeaseSettings, PresenceStep, StoredView, SWEEP_LIMIT};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::devices::{context_row, presence_from_db, CONTEXT_QUERY};
use crate::error::DbResult;
use crate::rows::id;
use crate::writer::Tx;

use crate::cluster::NOW_MS;

/// A device's context and machine columns (16 onwards).
static MACHINE_QUERY: LazyLock<String> = LazyLock::new(|| {
    CONTEXT_QUERY.replacen(
        "FROM devices d",
        ", d.presence_link, d.presence_link_node, d.presence_heard,
           d.presence_pending_since, d.presence_pending_reason, d.presence_deadline
         FROM devices d",
        1,
    )
});

fn loaded_row(r: &Row<'_>) -> rusqlite::Result<Loaded> {
    let context = context_row(r)?;
    let pending = match (
        r.get::<_, Option<i64>>(19)?,
        r.get::<_, Option<String>>(20)?,
    ) {
        (Some(since), reason) => Some(Pending {
            since,
            reason: reason
                .as_deref()
                .and_then(Reason::parse)
                .unwrap_or(Reason::LinkClosed),
        }),
        _ => None,
    };
    let machine = StoredMachine {
        announced: context.presence.into(),
        announced_since: context.presence_since,
        link: r.get::<_, Option<i64>>(16)?.map(|l| l as u64),
        last_heartbeat: r.get(18)?,
        engine: context.engine_state,
        pending,
    };
    Ok(Loaded {
        context,
        machine,
        link_node: r.get(17)?,
        deadline: r.get(21)?,
    })
}

fn load(c: &Connection, key: &DeviceKey) -> DbResult<Option<Loaded>> {
    Ok(c.prepare_cached(&format!(
        "{} WHERE d.account_id = ?1 AND d.id = ?2",
        *MACHINE_QUERY
    ))?
    .query_row(params![key.0.as_str(), key.1.as_str()], loaded_row)
    .optional()?)
}

fn keys(c: &Connection, sql: &str, args: impl rusqlite::Params) -> DbResult<Vec<DeviceKey>> {
    let mut s = c.prepare_cached(sql)?;
    let rows = s.query_map(args, |r| Ok((id(r, 0)?, id(r, 1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The devices a sweep steps: deadlines come, then links whose node's lease ran out (lost
/// at that node's last renewal).
fn swept(c: &Connection, now: i64) -> DbResult<Vec<(DeviceKey, Swept)>> {
    let limit = SWEEP_LIMIT as i64;
    let mut out: Vec<(DeviceKey, Swept)> = keys(
        c,
        "SELECT account_id, id FROM devices
         WHERE presence_deadline <= ?1 ORDER BY presence_deadline LIMIT ?2",
        params![now, limit],
    )?
    .into_iter()
    .map(|k| (k, Swept::Due))
    .collect();
    let mut s = c.prepare_cached(&format!(
        "SELECT d.account_id, d.id, COALESCE(n.renewed_at, ?1)
         FROM devices d LEFT JOIN cluster_nodes n ON n.id = d.presence_link_node
         WHERE d.presence_link_node IS NOT NULL
           AND (n.id IS NULL OR n.lease_until <= {NOW_MS})
         LIMIT ?2"
    ))?;
    let rows = s.query_map(params![now, limit], |r| {
        Ok(((id(r, 0)?, id(r, 1)?), r.get::<_, i64>(2)?))
    })?;
    for row in rows {
        let (key, since) = row?;
        out.push((key, Swept::Orphaned { since }));
    }
    Ok(out)
}

fn write_machine(c: &Connection, m: &MachineWrite) -> DbResult<()> {
    let pending = m.machine.pending;
    c.prepare_cached(
        "UPDATE devices SET presence_link = ?3, presence_link_node = ?4, presence_heard = ?5,
             presence_pending_since = ?6, presence_pending_reason = ?7, presence_deadline = ?8
         WHERE account_id = ?1 AND id = ?2",
    )?
    .execute(params![
        m.account_id.as_str(),
        m.device_id.as_str(),
        m.machine.link.map(|l| l as i64),
        m.link_node,
        m.machine.last_heartbeat,
        pending.map(|p| p.since),
        pending.map(|p| p.reason.as_str()),
        m.deadline,
    ])?;
    Ok(())
}

fn next_deadline(c: &Connection) -> DbResult<Option<i64>> {
    Ok(
        c.prepare_cached("SELECT MIN(presence_deadline) FROM devices")?
            .query_row([], |r| r.get(0))?,
    )
}

/// What a step works on: the rows of the devices asked about and of those swept, locked
/// in the step's transaction; what was swept and why; and whether the sweep stopped at
/// its limit.
pub(crate) type StepRows = (HashMap<DeviceKey, Loaded>, Vec<(DeviceKey, Swept)>, bool);

pub(crate) fn load_step(tx: &mut Tx<'_>, step: &PresenceStep) -> DbResult<StepRows> {
    let mut loaded: HashMap<DeviceKey, Loaded> = HashMap::new();
    let swept = if step.sweep {
        swept(tx, step.now)?
    } else {
        Vec::new()
    };
    let more = swept.len() >= SWEEP_LIMIT;
    let asked = step
        .requests
        .iter()
        .map(|r| (r.account_id.clone(), r.device_id.clone()));
    for key in swept.iter().map(|(k, _)| k.clone()).chain(asked) {
        if let std::collections::hash_map::Entry::Vacant(slot) = loaded.entry(key) {
            if let Some(row) = load(tx, slot.key())? {
                slot.insert(row);
            }
        }
    }
    Ok((loaded, swept, more))
}

/// Writes the step's machines; answers the earliest deadline of any device now.
pub(crate) fn write_step(tx: &mut Tx<'_>, machines: &[MachineWrite]) -> DbResult<Option<i64>> {
    for m in machines {
        write_machine(tx, m)?;
    }
    next_deadline(tx)
}

pub(crate) fn restart(tx: &mut Tx<'_>, lease: &LeaseSettings, now: i64) -> DbResult<usize> {
    let rows: Vec<Loaded> = {
        let mut s = tx.prepare_cached(&format!(
            "{} WHERE d.presence = 'up' OR d.presence_link IS NOT NULL
                   OR d.presence_pending_since IS NOT NULL",
            *MACHINE_QUERY
        ))?;
        let rows = s.query_map([], loaded_row)?;
        rows.collect::<Result<_, _>>()?
    };
    let mut changed = 0;
    for row in &rows {
        let key = (
            row.context.account_id.clone(),
            row.context.device_id.clone(),
        );
        if let Some(m) = after_restart(&key, row, lease, now) {
            write_machine(tx, &m)?;
            changed += 1;
        }
    }
    Ok(changed)
}

pub(crate) fn view(
    c: &Connection,
    account: &AccountId,
    device: &DeviceId,
) -> DbResult<Option<StoredView>> {
    Ok(c.prepare_cached(
        "SELECT presence, presence_pending_since IS NOT NULL, presence_link IS NOT NULL,
                    presence_heard
             FROM devices WHERE account_id = ?1 AND id = ?2",
    )?
    .query_row(params![account.as_str(), device.as_str()], |r| {
        let pending: bool = r.get(1)?;
        Ok(StoredView {
            status: if pending {
                LiveStatus::Pending
            } else {
                presence_from_db(&r.get::<_, String>(0)?).into()
            },
            link_open: r.get(2)?,
            last_heartbeat: r.get(3)?,
        })
    })
    .optional()?)
}

pub(crate) fn stale_links(
    c: &Connection,
    node: &str,
    links: &[HeldLink],
) -> DbResult<Vec<(u64, CloseWhy)>> {
    let mut s = c.prepare_cached(
        "SELECT presence_link, presence_link_node FROM devices WHERE account_id = ?1 AND id = ?2",
    )?;
    let mut stale = Vec::new();
    for l in links {
        let current: Option<(Option<i64>, Option<String>)> = s
            .query_row(params![l.account_id.as_str(), l.device_id.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let why = match current {
            Some((Some(link), Some(n))) if link as u64 == l.link && n == node => continue,
            Some((Some(_), _)) => CloseWhy::Replaced,
            _ => CloseWhy::Revoked,
        };
        stale.push((l.link, why));
    }
    Ok(stale)
}
