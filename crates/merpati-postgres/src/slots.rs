//! Slots and their owners, and the fence every write of an owner checks.
//!
//! A fenced statement starts with [`fence_cte`]: the slots whose rows still name this
//! node at the epochs it holds, while its lease is live, locked `FOR SHARE` until the
//! write commits. A node taking a slot over updates its row, so it waits for such a write
//! to commit and then voids what that write leased: a write of the old owner either
//! commits before the takeover or finds the slot gone.

use merpati_domain::slots::{Fence, Offer, Slot, SlotLease, SlotStore, SlotsTaken};
use merpati_domain::StoreResult;

use crate::conn::Conn;
use crate::error::DbResult;
use crate::listener::Listening;
use crate::notices::{due_channel, notices};
use crate::PostgresStore;

use crate::cluster::NOW_MS;

/// `fence AS (…)`: the slots the fence (node `$node`, slots `$slots`, epochs `$epochs`,
/// as parameter numbers) still holds, locked until the write commits.
pub(crate) fn fence_cte(node: usize, slots: usize, epochs: usize) -> String {
    format!(
        "fence AS (
             SELECT s.slot FROM slot_leases s
             JOIN cluster_nodes n ON n.id = s.node_id AND n.lease_until > {NOW_MS}
             JOIN UNNEST(${slots}::SMALLINT[], ${epochs}::BIGINT[]) AS f(slot, epoch)
               ON f.slot = s.slot AND f.epoch = s.epoch
             WHERE s.node_id = ${node}
             FOR SHARE OF s
         )"
    )
}

/// The fence as statement parameters: node, slots, epochs.
pub(crate) fn fence_params(fence: &Fence) -> (String, Vec<i16>, Vec<i64>) {
    let (slots, epochs) = fence.columns();
    (
        fence.node.clone(),
        slots.into_iter().map(|s| s as i16).collect(),
        epochs,
    )
}

/// Makes the deliveries of `slots` that were leased or parked due now; returns how many.
fn void_leases(c: &mut Conn, slots: &[i16], now: i64) -> DbResult<usize> {
    if slots.is_empty() {
        return Ok(0);
    }
    Ok(c.execute(
        "UPDATE deliveries SET claimed_at = NULL, parked = FALSE,
                next_attempt_at = LEAST(next_attempt_at, $1)
         WHERE slot = ANY($2) AND status = 'pending' AND (claimed_at IS NOT NULL OR parked)",
        &[&now, &slots],
    )? as usize)
}

#[async_trait::async_trait]
impl SlotStore for PostgresStore {
    async fn trade_slots(
        &self,
        node: &str,
        wanted: Vec<Slot>,
        give_back: Vec<Slot>,
        now: i64,
    ) -> StoreResult<SlotsTaken> {
        let node = node.to_owned();
        let wanted: Vec<i16> = wanted.into_iter().map(|s| s as i16).collect();
        let give_back: Vec<i16> = give_back.into_iter().map(|s| s as i16).collect();
        self.write(move |tx| {
            let c = tx.conn();
            // The node's own lease row, locked: it cannot run out unseen while it trades.
            let live = c
                .query_opt(
                    &format!(
                        "SELECT 1 FROM cluster_nodes WHERE id = $1 AND lease_until > {NOW_MS}
                         FOR SHARE"
                    ),
                    &[&node],
                )?
                .is_some();
            if !live {
                return Ok(SlotsTaken::default());
            }
            c.execute(
                "INSERT INTO slot_leases (slot, node_id, epoch, since)
                 SELECT s, NULL, 0, 0 FROM UNNEST($1::SMALLINT[]) AS s
                 ON CONFLICT (slot) DO NOTHING",
                &[&wanted],
            )?;
            // A slot is free when no live node holds it; rows are taken in slot order, so
            // that two nodes trading at once do not deadlock.
            let taken: Vec<i16> = c
                .query(
                    &format!(
                        "WITH free AS (
                             SELECT slot FROM slot_leases
                             WHERE slot = ANY($2)
                               AND (node_id IS NULL OR node_id NOT IN
                                    (SELECT id FROM cluster_nodes WHERE lease_until > {NOW_MS}))
                             ORDER BY slot
                             FOR UPDATE
                         )
                         UPDATE slot_leases s SET node_id = $1, epoch = s.epoch + 1,
                                since = {NOW_MS}
                         FROM free WHERE s.slot = free.slot
                         RETURNING s.slot"
                    ),
                    &[&node, &wanted],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let mut released = void_leases(c, &taken, now)?;
            let given: Vec<i16> = c
                .query(
                    "SELECT slot FROM slot_leases WHERE node_id = $1 AND slot = ANY($2)
                     ORDER BY slot FOR UPDATE",
                    &[&node, &give_back],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            released += void_leases(c, &given, now)?;
            c.execute(
                "UPDATE slot_leases SET node_id = NULL WHERE node_id = $1 AND slot = ANY($2)",
                &[&node, &given],
            )?;
            let held = c
                .query(
                    "SELECT slot, epoch FROM slot_leases WHERE node_id = $1",
                    &[&node],
                )?
                .iter()
                .map(|r| (r.get::<_, i16>(0) as Slot, r.get(1)))
                .collect();
            Ok(SlotsTaken { held, released })
        })
        .await
    }

    async fn slot_leases(&self) -> StoreResult<Vec<SlotLease>> {
        self.read(|c| {
            Ok(c.query(
                "SELECT slot, node_id, epoch, since FROM slot_leases
                 WHERE epoch > 0 ORDER BY slot",
                &[],
            )?
            .iter()
            .map(|r| SlotLease {
                slot: r.get::<_, i16>(0) as Slot,
                node: r.get(1),
                epoch: r.get(2),
                since: r.get(3),
            })
            .collect())
        })
        .await
    }

    async fn offer_to_owners(&self, offers: Vec<Offer>) -> StoreResult<()> {
        if offers.is_empty() {
            return Ok(());
        }
        let notices: String = notices(&offers)
            .iter()
            .map(|(slot, payload)| format!("NOTIFY {}, '{payload}';", due_channel(*slot)))
            .collect();
        // On a read connection: NOTIFY takes a lock held through commit, never inside a
        // data transaction. Its commit would otherwise wait for a flush of the log, and an
        // offer a crash loses costs only its lease. The payloads are digits and separators.
        self.read(move |c| {
            let sent = c.batch(&format!(
                "BEGIN; SET LOCAL synchronous_commit TO OFF; {notices} COMMIT"
            ));
            if sent.is_err() {
                // The connection goes back to the pool out of any transaction.
                let _ = c.batch("ROLLBACK");
            }
            sent
        })
        .await
    }

    fn listen_for_offers(&self, take: Box<dyn Fn(Vec<Offer>) + Send + Sync>) -> StoreResult<()> {
        self.start_listener(take)
    }

    fn listen_to_slots(&self, node: &str, slots: Vec<Slot>) {
        *self.listened.lock().expect("listened lock") = Listening {
            node: Some(node.to_owned()),
            slots: slots.into_iter().collect(),
        };
    }
}
