//! Slots and their owners. One SQLite file has one node at a time, which takes every slot
//! when it starts (voiding what a stopped run had leased); the statements are those of a
//! cluster all the same, so that both backends keep one contract.

use merpati_domain::slots::{slot_of, Fence, Offer, Slot, SlotLease, SlotStore, SlotsTaken, SLOTS};
use merpati_domain::StoreResult;
use rusqlite::functions::FunctionFlags;
use rusqlite::{params, Connection};

use crate::error::DbResult;
use crate::SqliteStore;

/// The time now, in ms (the machine's, like the nodes' leases).
use crate::cluster::NOW_MS;

/// Gives `conn` `merpati_slot(id)`, the domain's slot of an endpoint id.
pub(crate) fn register(conn: &Connection) -> rusqlite::Result<()> {
    conn.create_scalar_function(
        "merpati_slot",
        1,
        FunctionFlags::SQLITE_UTF8
            | FunctionFlags::SQLITE_DETERMINISTIC
            | FunctionFlags::SQLITE_DIRECTONLY,
        |ctx| Ok(i64::from(slot_of(&ctx.get::<String>(0)?.into()))),
    )
}

/// Which slots the fence still holds: the node's lease is live and the slot is still its
/// at the epoch the fence names.
pub(crate) fn held(c: &Connection, fence: &Fence) -> DbResult<[bool; SLOTS as usize]> {
    let mut s = c.prepare_cached(&format!(
        "SELECT s.slot, s.epoch FROM slot_leases s
         JOIN cluster_nodes n ON n.id = s.node_id AND n.lease_until > {NOW_MS}
         WHERE s.node_id = ?1"
    ))?;
    let rows = s
        .query_map([&fence.node], |r| Ok((r.get::<_, Slot>(0)?, r.get(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(fence.still_held(rows))
}

/// The slots held, as a JSON list for `json_each`, or None when they are all of them.
pub(crate) fn held_list(held: &[bool; SLOTS as usize]) -> Option<String> {
    if held.iter().all(|h| *h) {
        return None;
    }
    let slots: Vec<usize> = (0..held.len()).filter(|&s| held[s]).collect();
    Some(serde_json::to_string(&slots).expect("a list of numbers"))
}

/// Makes the deliveries of `slots` that were leased or parked due now; returns how many.
fn void_leases(c: &Connection, slots: &[Slot], now: i64) -> DbResult<usize> {
    if slots.is_empty() {
        return Ok(0);
    }
    let list = serde_json::to_string(slots).expect("a list of numbers");
    Ok(c.prepare_cached(
        "UPDATE deliveries SET claimed_at = NULL, parked = 0,
                next_attempt_at = MIN(next_attempt_at, ?1)
         WHERE status = 'pending' AND (claimed_at IS NOT NULL OR parked = 1)
           AND endpoint_id IN (SELECT id FROM endpoints
                               WHERE slot IN (SELECT value FROM json_each(?2)))",
    )?
    .execute(params![now, list])?)
}

#[async_trait::async_trait]
impl SlotStore for SqliteStore {
    async fn trade_slots(
        &self,
        node: &str,
        wanted: Vec<Slot>,
        give_back: Vec<Slot>,
        now: i64,
    ) -> StoreResult<SlotsTaken> {
        let node = node.to_owned();
        self.write(move |c| {
            let live: bool = c.query_row(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM cluster_nodes
                                    WHERE id = ?1 AND lease_until > {NOW_MS})"
                ),
                [&node],
                |r| r.get(0),
            )?;
            if !live {
                return Ok(SlotsTaken::default());
            }
            let mut taken = Vec::new();
            {
                let mut take = c.prepare_cached(&format!(
                    "INSERT INTO slot_leases (slot, node_id, epoch, since)
                     VALUES (?1, ?2, 1, {NOW_MS})
                     ON CONFLICT (slot) DO UPDATE
                         SET node_id = excluded.node_id, epoch = epoch + 1,
                             since = excluded.since
                         WHERE node_id IS NULL OR node_id NOT IN
                             (SELECT id FROM cluster_nodes WHERE lease_until > {NOW_MS})
                     RETURNING slot"
                ))?;
                for slot in wanted {
                    if take.exists(params![slot, node])? {
                        taken.push(slot);
                    }
                }
            }
            let mut released = void_leases(c, &taken, now)?;
            let mine: Vec<Slot> = {
                let mut s = c.prepare_cached("SELECT slot FROM slot_leases WHERE node_id = ?1")?;
                let rows = s.query_map([&node], |r| r.get(0))?;
                rows.collect::<Result<_, _>>()?
            };
            let given: Vec<Slot> = give_back.into_iter().filter(|s| mine.contains(s)).collect();
            released += void_leases(c, &given, now)?;
            {
                let mut give = c.prepare_cached(
                    "UPDATE slot_leases SET node_id = NULL WHERE slot = ?1 AND node_id = ?2",
                )?;
                for slot in &given {
                    give.execute(params![slot, node])?;
                }
            }
            let mut s =
                c.prepare_cached("SELECT slot, epoch FROM slot_leases WHERE node_id = ?1")?;
            let held = s
                .query_map([&node], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            Ok(SlotsTaken { held, released })
        })
        .await
    }

    async fn slot_leases(&self) -> StoreResult<Vec<SlotLease>> {
        self.read(|c| {
            let mut s = c.prepare_cached(
                "SELECT slot, node_id, epoch, since FROM slot_leases ORDER BY slot",
            )?;
            let rows = s.query_map([], |r| {
                Ok(SlotLease {
                    slot: r.get(0)?,
                    node: r.get(1)?,
                    epoch: r.get(2)?,
                    since: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn offer_to_owners(&self, _offers: Vec<Offer>) -> StoreResult<()> {
        Ok(())
    }

    fn listen_for_offers(&self, _take: Box<dyn Fn(Vec<Offer>) + Send + Sync>) -> StoreResult<()> {
        Ok(())
    }

    fn listen_to_slots(&self, _node: &str, _slots: Vec<Slot>) {}
}
