//! Each device's presence machine as stored, and the steps that move it. A step locks the
//! rows it asks about in key order (two nodes stepping the same devices take turns, never
//! deadlock), sweeps with `SKIP LOCKED` (a row another node is stepping is left to it:
//! that node's step sees it), and writes the machines back in one statement. What a step
//! does is the domain's (`presence::step::plan`).

use std::collections::HashMap;
use std::sync::LazyLock;

use merpati_domain::ids::{AccountId, DeviceId};
use merpati_domain::presence::machine::{LiveStatus, Pending, Reason, StoredMachine};
use merpati_domain::presence::step::{
    after_restart, CloseWhy, DeviceKey, Loaded, MachineWrite, Swept,
};
use merpati_domain::presence::{HeldLink, LeaseSettings, PresenceStep, StoredView, SWEEP_LIMIT};
use postgres::Row;

use crate::cluster::NOW_MS;
use crate::conn::Conn;
use crate::devices::{by_keys, context_row, presence_from_db, CONTEXT_QUERY};
use crate::error::DbResult;
use crate::writer::Tx;

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

/// The machine query over keyed devices, locked and in key order (see `load`): made once,
/// as it runs for every presence group.
static LOAD_QUERY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{} ORDER BY d.account_id, d.id",
        by_keys(&MACHINE_QUERY, true)
    )
});

fn loaded_row(r: &Row) -> DbResult<Loaded> {
    let context = context_row(r)?;
    let pending = r.get::<_, Option<i64>>(19).map(|since| Pending {
        since,
        reason: r
            .get::<_, Option<&str>>(20)
            .and_then(Reason::parse)
            .unwrap_or(Reason::LinkClosed),
    });
    let machine = StoredMachine {
        announced: context.presence.into(),
        announced_since: context.presence_since,
        link: r.get::<_, Option<i64>>(16).map(|l| l as u64),
        last_heartbeat: r.get(18),
        engine: context.engine_state,
        pending,
    };
    Ok(Loaded {
        context,
        machine,
        link_node: r.get(17),
        deadline: r.get(21),
    })
}

/// Loads and locks the devices' rows, in key order.
fn load(tx: &mut Tx<'_>, keys: &[DeviceKey]) -> DbResult<Vec<Loaded>> {
    let mut sorted: Vec<&DeviceKey> = keys.iter().collect();
    sorted.sort();
    sorted.dedup();
    let accounts: Vec<&str> = sorted.iter().map(|k| k.0.as_str()).collect();
    let devices: Vec<&str> = sorted.iter().map(|k| k.1.as_str()).collect();
    tx.query(&LOAD_QUERY, &[&accounts, &devices])?
        .iter()
        .map(loaded_row)
        .collect()
}

fn key_of(r: &Row) -> DeviceKey {
    (
        AccountId::from(r.get::<_, String>(0)),
        DeviceId::from(r.get::<_, String>(1)),
    )
}

/// The devices a sweep steps, locked: deadlines come, then links whose node's lease ran
/// out (lost at that node's last renewal). Rows locked by another node's step are left.
fn swept(tx: &mut Tx<'_>, now: i64) -> DbResult<Vec<(DeviceKey, Swept)>> {
    let limit = SWEEP_LIMIT as i64;
    let mut out: Vec<(DeviceKey, Swept)> = tx
        .query(
            "SELECT account_id, id FROM devices
             WHERE presence_deadline <= $1 ORDER BY presence_deadline LIMIT $2
             FOR UPDATE SKIP LOCKED",
            &[&now, &limit],
        )?
        .iter()
        .map(|r| (key_of(r), Swept::Due))
        .collect();
    let orphaned = tx.query(
        &format!(
            "SELECT d.account_id, d.id, COALESCE(n.renewed_at, $1)
             FROM devices d LEFT JOIN cluster_nodes n ON n.id = d.presence_link_node
             WHERE d.presence_link_node IS NOT NULL
               AND (n.id IS NULL OR n.lease_until <= {NOW_MS})
             LIMIT $2
             FOR UPDATE OF d SKIP LOCKED"
        ),
        &[&now, &limit],
    )?;
    out.extend(
        orphaned
            .iter()
            .map(|r| (key_of(r), Swept::Orphaned { since: r.get(2) })),
    );
    Ok(out)
}

fn write_machines(tx: &mut Tx<'_>, machines: &[MachineWrite]) -> DbResult<()> {
    if machines.is_empty() {
        return Ok(());
    }
    let accounts: Vec<&str> = machines.iter().map(|m| m.account_id.as_str()).collect();
    let devices: Vec<&str> = machines.iter().map(|m| m.device_id.as_str()).collect();
    let links: Vec<Option<i64>> = machines
        .iter()
        .map(|m| m.machine.link.map(|l| l as i64))
        .collect();
    let nodes: Vec<Option<&str>> = machines.iter().map(|m| m.link_node.as_deref()).collect();
    let heard: Vec<Option<i64>> = machines.iter().map(|m| m.machine.last_heartbeat).collect();
    let pending_since: Vec<Option<i64>> = machines
        .iter()
        .map(|m| m.machine.pending.map(|p| p.since))
        .collect();
    let pending_reason: Vec<Option<&str>> = machines
        .iter()
        .map(|m| m.machine.pending.map(|p| p.reason.as_str()))
        .collect();
    let deadlines: Vec<Option<i64>> = machines.iter().map(|m| m.deadline).collect();
    tx.execute(
        "UPDATE devices d SET presence_link = u.link, presence_link_node = u.node,
             presence_heard = u.heard, presence_pending_since = u.pending_since,
             presence_pending_reason = u.pending_reason, presence_deadline = u.deadline
         FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bigint[],
                     $6::bigint[], $7::text[], $8::bigint[])
              AS u(account_id, id, link, node, heard, pending_since, pending_reason, deadline)
         WHERE d.account_id = u.account_id AND d.id = u.id",
        &[
            &accounts,
            &devices,
            &links,
            &nodes,
            &heard,
            &pending_since,
            &pending_reason,
            &deadlines,
        ],
    )?;
    Ok(())
}

/// What a step works on: the rows of the devices asked about and of those swept, locked
/// in the step's transaction; what was swept and why; and whether the sweep stopped at
/// its limit.
pub(crate) type StepRows = (HashMap<DeviceKey, Loaded>, Vec<(DeviceKey, Swept)>, bool);

pub(crate) fn load_step(tx: &mut Tx<'_>, step: &PresenceStep) -> DbResult<StepRows> {
    let asked: Vec<DeviceKey> = step
        .requests
        .iter()
        .map(|r| (r.account_id.clone(), r.device_id.clone()))
        .collect();
    let mut loaded: HashMap<DeviceKey, Loaded> = load(tx, &asked)?
        .into_iter()
        .map(|l| {
            (
                (l.context.account_id.clone(), l.context.device_id.clone()),
                l,
            )
        })
        .collect();
    let swept = if step.sweep {
        swept(tx, step.now)?
    } else {
        Vec::new()
    };
    let more = swept.len() >= SWEEP_LIMIT;
    let missing: Vec<DeviceKey> = swept
        .iter()
        .map(|(k, _)| k.clone())
        .filter(|k| !loaded.contains_key(k))
        .collect();
    for l in load(tx, &missing)? {
        loaded.insert(
            (l.context.account_id.clone(), l.context.device_id.clone()),
            l,
        );
    }
    Ok((loaded, swept, more))
}

/// Writes the step's machines; answers the earliest deadline of any device now.
pub(crate) fn write_step(tx: &mut Tx<'_>, machines: &[MachineWrite]) -> DbResult<Option<i64>> {
    write_machines(tx, machines)?;
    Ok(tx
        .query_one("SELECT MIN(presence_deadline) FROM devices", &[])?
        .get(0))
}

pub(crate) fn restart(tx: &mut Tx<'_>, lease: &LeaseSettings, now: i64) -> DbResult<usize> {
    let rows = tx.query(
        &format!(
            "{} WHERE d.presence = 'up' OR d.presence_link IS NOT NULL
                   OR d.presence_pending_since IS NOT NULL
             FOR UPDATE OF d",
            *MACHINE_QUERY
        ),
        &[],
    )?;
    let mut writes = Vec::new();
    for r in &rows {
        let row = loaded_row(r)?;
        let key = (
            row.context.account_id.clone(),
            row.context.device_id.clone(),
        );
        writes.extend(after_restart(&key, &row, lease, now));
    }
    write_machines(tx, &writes)?;
    Ok(writes.len())
}

pub(crate) fn view(
    c: &mut Conn,
    account: &AccountId,
    device: &DeviceId,
) -> DbResult<Option<StoredView>> {
    Ok(c.query_opt(
        "SELECT presence, presence_pending_since IS NOT NULL, presence_link IS NOT NULL,
                    presence_heard
             FROM devices WHERE account_id = $1 AND id = $2",
        &[&account.as_str(), &device.as_str()],
    )?
    .map(|r| StoredView {
        status: if r.get(1) {
            LiveStatus::Pending
        } else {
            presence_from_db(r.get(0)).into()
        },
        link_open: r.get(2),
        last_heartbeat: r.get(3),
    }))
}

pub(crate) fn stale_links(
    c: &mut Conn,
    node: &str,
    links: &[HeldLink],
) -> DbResult<Vec<(u64, CloseWhy)>> {
    let ids: Vec<i64> = links.iter().map(|l| l.link as i64).collect();
    let accounts: Vec<&str> = links.iter().map(|l| l.account_id.as_str()).collect();
    let devices: Vec<&str> = links.iter().map(|l| l.device_id.as_str()).collect();
    Ok(c.query(
        "SELECT k.link, d.presence_link IS NOT NULL
             FROM unnest($1::bigint[], $2::text[], $3::text[]) AS k(link, account_id, id)
             LEFT JOIN devices d ON d.account_id = k.account_id AND d.id = k.id
             WHERE d.id IS NULL OR d.presence_link IS DISTINCT FROM k.link
                OR d.presence_link_node IS DISTINCT FROM $4",
        &[&ids, &accounts, &devices, &node],
    )?
    .iter()
    .map(|r| {
        let why = if r.get::<_, Option<bool>>(1) == Some(true) {
            CloseWhy::Replaced
        } else {
            CloseWhy::Revoked
        };
        (r.get::<_, i64>(0) as u64, why)
    })
    .collect())
}
