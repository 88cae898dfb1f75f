//! The event log in parts (migration 7): events, deliveries and attempts are partitioned by
//! number ranges of [`PART_SIZE`], part n holding the numbers from n × `PART_SIZE`. The
//! leader moves the numbers onto the next part once a part's span has passed, so that a
//! part is a span of the log, and retention drops a part whole once the domain's rule lets
//! it go ([`part_fate`]) instead of deleting its rows.
//!
//! What keeps a drop from leaving anything behind:
//! - a delivery's id is taken after its event's number, and the delivery numbers move on
//!   before the event numbers do, so a delivery is never numbered in an earlier part than
//!   its event; the later deliveries of a part's events (resent, replayed) go before it;
//! - attempts are numbered by their delivery's id, so they sit in their delivery's part;
//! - the rids, unique across parts and so in a table of their own, go before the part;
//! - the drop detaches the events' part first, then looks again for anything owed.
//!
//! Neither making nor dropping a part takes a lock that would hold reads or writes of the
//! log up: a part is made beside its table and attached, and detached (`CONCURRENTLY`)
//! before it is dropped. Both run on a read connection, in short transactions that give
//! up after [`LOCK_WAIT`] for a lock rather than wait; the next pass tries again.

use std::time::Duration;

use merpati_domain::retention::{part_fate, part_turn_due, LogPart, PartFate};
use merpati_domain::StoreResult;

use crate::conn::Conn;
use crate::error::{is_lock_timeout, DbResult};
use crate::events::{delete_events, owed_statuses};
use crate::writer::Tx;
use crate::PostgresStore;

/// The numbers in one part: 10^10, room for a day at over 100,000 events a second, and a
/// part turns early once half of it is used.
pub(crate) const PART_SIZE: i64 = 10_000_000_000;

/// How long making or dropping a part waits for the tables' locks before it gives up.
const LOCK_WAIT: &str = "200ms";

/// The tables kept in parts, in the order their locks are taken.
const PARTED: [&str; 3] = ["events", "deliveries", "attempts"];

/// The first number of part `number`, and the first after it.
fn bounds(number: i64) -> (i64, i64) {
    (number * PART_SIZE, (number + 1) * PART_SIZE)
}

/// The parts the numbers have moved past, oldest first.
fn closed_parts(c: &mut Conn) -> DbResult<Vec<i64>> {
    let mut opened: Vec<i64> = c
        .query(
            "SELECT number FROM log_parts WHERE opened_at IS NOT NULL ORDER BY number",
            &[],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    opened.pop();
    Ok(opened)
}

/// As SQL, whether delivery `d` is owed: in an owed status, to an endpoint that is still
/// there (one whose row is gone is never claimed again, so it owes nothing).
fn owing(d: &str) -> String {
    format!(
        "{d}.status IN ({}) AND EXISTS (SELECT 1 FROM endpoints ep WHERE ep.id = {d}.endpoint_id)",
        owed_statuses()
    )
}

/// Whether a delivery of one of the part's events, or one numbered in the part, is owed.
fn owes(c: &mut Conn, number: i64) -> DbResult<bool> {
    let (lo, hi) = bounds(number);
    let owed = owing("d");
    Ok(c.query_one(
        &format!(
            "SELECT EXISTS (SELECT 1 FROM deliveries d
                            WHERE d.event_seq >= $1 AND d.event_seq < $2 AND {owed})
                 OR EXISTS (SELECT 1 FROM deliveries d
                            WHERE d.id >= $1 AND d.id < $2 AND {owed})"
        ),
        &[&lo, &hi],
    )?
    .get(0))
}

/// What retention needs to know of a part.
fn shape(c: &mut Conn, number: i64) -> DbResult<LogPart> {
    let (lo, hi) = bounds(number);
    let newest_event_at = c
        .query_opt(
            "SELECT created_at FROM events WHERE seq >= $1 AND seq < $2
             ORDER BY seq DESC LIMIT 1",
            &[&lo, &hi],
        )?
        .map(|r| r.get(0));
    Ok(LogPart {
        newest_event_at,
        owed: owes(c, number)?,
    })
}

/// Deletes up to `limit` of the part's events created before `before` that nothing owes,
/// with their deliveries, attempts and rids; returns how many events went.
fn thin(c: &mut Tx<'_>, number: i64, before: i64, limit: usize) -> DbResult<usize> {
    let (lo, hi) = bounds(number);
    let gone = format!(
        "SELECT e.seq FROM events e
         WHERE e.seq >= $1 AND e.seq < $2 AND e.created_at < $3
           AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq AND {})
         ORDER BY e.seq LIMIT $4",
        owing("d")
    );
    Ok(c.execute(&delete_events(&gone), &[&lo, &hi, &before, &(limit as i64)])? as usize)
}

/// Deletes up to `limit` rids of the part's events and up to `limit` of its events' later
/// deliveries that nothing owes (with their attempts): what the part's drop must not leave
/// behind. Returns how many rows went.
fn clear_ahead(c: &mut Tx<'_>, number: i64, limit: usize) -> DbResult<usize> {
    let (lo, hi) = bounds(number);
    let limit = limit as i64;
    let rids = c.execute(
        "DELETE FROM event_rids WHERE ctid = ANY(ARRAY(
             SELECT ctid FROM event_rids WHERE event_seq >= $1 AND event_seq < $2 LIMIT $3))",
        &[&lo, &hi, &limit],
    )?;
    let later = c.execute(&later_deliveries(), &[&lo, &hi, &limit])?;
    Ok((rids + later) as usize)
}

/// Deletes up to $3 deliveries numbered after the part ($1 to $2) of its events that
/// nothing owes, with their attempts.
fn later_deliveries() -> String {
    format!(
        "WITH later AS (
             SELECT d.id FROM deliveries d
             WHERE d.event_seq >= $1 AND d.event_seq < $2 AND d.id >= $2 AND NOT ({})
             LIMIT $3
         ), attempts_gone AS (
             DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM later)
         )
         DELETE FROM deliveries WHERE id IN (SELECT id FROM later)",
        owing("d")
    )
}

/// Drops the part whole, unless something in it is owed; returns how many events went with
/// it. Each table's part is detached first (`CONCURRENTLY`: no lock that would hold other
/// writes up), the events' first, so that nothing made after can refer to them and what
/// was made before is seen by the last look for anything owed.
fn drop_part(c: &mut Conn, number: i64) -> DbResult<usize> {
    let (lo, hi) = bounds(number);
    if owes(c, number)? {
        return Ok(0);
    }
    let events: i64 = c
        .query_one(
            "SELECT COUNT(*) FROM events WHERE seq >= $1 AND seq < $2",
            &[&lo, &hi],
        )?
        .get(0);
    detach(c, "events", number)?;
    if owes(c, number)? {
        // A resend or a recovery made while it was being detached: the part stays.
        c.batch(&format!(
            "ALTER TABLE events ATTACH PARTITION events_p{number} FOR VALUES FROM ({lo}) TO ({hi})"
        ))?;
        return Ok(0);
    }
    c.execute(&later_deliveries(), &[&lo, &hi, &i64::MAX])?;
    for table in &PARTED[1..] {
        detach(c, table, number)?;
    }
    let parts: Vec<String> = PARTED.iter().map(|t| format!("{t}_p{number}")).collect();
    c.in_transaction(LOCK_WAIT, |c| {
        c.batch(&format!("DROP TABLE IF EXISTS {}", parts.join(", ")))?;
        c.execute("DELETE FROM log_parts WHERE number = $1", &[&number])?;
        Ok(())
    })?;
    tracing::info!(part = number, events, "dropped a part of the event log");
    Ok(events as usize)
}

/// Detaches part `number` of `table`, or finishes a detaching an interruption left
/// pending; nothing when it is detached already.
fn detach(c: &mut Conn, table: &str, number: i64) -> DbResult<()> {
    let part = format!("{table}_p{number}");
    let pending: Option<bool> = c
        .query_opt(
            "SELECT inhdetachpending FROM pg_inherits
             WHERE inhrelid = to_regclass($1) AND inhparent = to_regclass($2)",
            &[&part, &table],
        )?
        .map(|r| r.get(0));
    match pending {
        Some(false) => c.batch(&format!(
            "ALTER TABLE {table} DETACH PARTITION {part} CONCURRENTLY"
        )),
        Some(true) => c.batch(&format!(
            "ALTER TABLE {table} DETACH PARTITION {part} FINALIZE"
        )),
        None => Ok(()),
    }
}

/// Moves the numbers onto the next part when the rule says so, making the part after it
/// ready first; answers whether they moved.
fn turn(c: &mut Conn, now: i64, span: Duration) -> DbResult<bool> {
    let turned = c.in_transaction(LOCK_WAIT, |c| {
        c.batch("LOCK TABLE log_parts IN EXCLUSIVE MODE")?;
        let row = c.query_one(
            "SELECT number, opened_at FROM log_parts
             WHERE opened_at IS NOT NULL ORDER BY number DESC LIMIT 1",
            &[],
        )?;
        let (current, opened_at): (i64, i64) = (row.get(0), row.get(1));
        let used: i64 = c
            .query_one(
                "SELECT GREATEST((SELECT last_value FROM event_numbers),
                                 (SELECT last_value FROM delivery_numbers))",
                &[],
            )?
            .get(0);
        if !part_turn_due(opened_at, now, span, used - bounds(current).0, PART_SIZE) {
            return Ok(false);
        }
        let (next, after) = (current + 1, current + 2);
        for number in [next, after] {
            make_part(c, number)?;
        }
        // Deliveries first: a delivery is then never numbered in an earlier part than its
        // event.
        let start = bounds(next).0;
        for sequence in ["delivery_numbers", "event_numbers"] {
            c.execute(
                &format!(
                    "SELECT setval('{sequence}', $1, false)
                     WHERE (SELECT last_value FROM {sequence}) < $1"
                ),
                &[&start],
            )?;
        }
        c.execute(
            "UPDATE log_parts SET opened_at = $2 WHERE number = $1",
            &[&next, &now],
        )?;
        Ok(true)
    });
    match turned {
        Err(e) if is_lock_timeout(&e) => {
            tracing::info!("the event log was busy; its numbers move on later");
            Ok(false)
        }
        Ok(true) => {
            tracing::info!("the event log moved onto its next part");
            Ok(true)
        }
        other => other,
    }
}

/// Makes part `number` of each table, unless it is there: made beside the table and then
/// attached, which locks the table only against other changes of its parts (creating it
/// as a part would lock out every read and write until the transaction ends).
fn make_part(c: &mut Conn, number: i64) -> DbResult<()> {
    let made = c.execute(
        "INSERT INTO log_parts (number) VALUES ($1) ON CONFLICT (number) DO NOTHING",
        &[&number],
    )?;
    if made == 0 {
        return Ok(());
    }
    let (lo, hi) = bounds(number);
    for table in PARTED {
        c.batch(&format!(
            "CREATE TABLE {table}_p{number} (LIKE {table} INCLUDING DEFAULTS)"
        ))?;
        c.batch(&format!(
            "ALTER TABLE {table} ATTACH PARTITION {table}_p{number}
             FOR VALUES FROM ({lo}) TO ({hi})"
        ))?;
    }
    Ok(())
}

impl PostgresStore {
    /// One step of retention over the parts the numbers have moved past, oldest first (see
    /// `EventStore::prune_events`).
    pub(crate) async fn prune_parts(&self, before: i64, limit: usize) -> StoreResult<usize> {
        for number in self.read(closed_parts).await? {
            let part = self.read(move |c| shape(c, number)).await?;
            match part_fate(part, before) {
                PartFate::Keep => return Ok(0),
                PartFate::Thin => {
                    let gone = self
                        .write_aside(move |c| thin(c, number, before, limit))
                        .await?;
                    if gone > 0 {
                        return Ok(gone);
                    }
                }
                PartFate::Drop => {
                    let cleared = self
                        .write_aside(move |c| clear_ahead(c, number, limit))
                        .await?;
                    if cleared > 0 {
                        return Ok(cleared);
                    }
                    return self.read(move |c| drop_part(c, number)).await;
                }
            }
        }
        Ok(0)
    }

    pub(crate) async fn turn_parts(&self, now: i64, span: Duration) -> StoreResult<bool> {
        self.read(move |c| turn(c, now, span)).await
    }
}
