//! Versioned migrations of the schema, applied in order at open, each in its own
//! transaction.

use merpati_domain::StoreError;
use rusqlite::Connection;

use crate::error::DbResult;

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (
        2,
        "presence",
        include_str!("../migrations/0002_presence.sql"),
    ),
    (
        3,
        "endpoint_health",
        include_str!("../migrations/0003_endpoint_health.sql"),
    ),
    (
        4,
        "retention",
        include_str!("../migrations/0004_retention.sql"),
    ),
    (5, "jobs", include_str!("../migrations/0005_jobs.sql")),
    (6, "lanes", include_str!("../migrations/0006_lanes.sql")),
    (
        7,
        "child_indexes",
        include_str!("../migrations/0007_child_indexes.sql"),
    ),
    (
        8,
        "endpoint_status_indexes",
        include_str!("../migrations/0008_endpoint_status_indexes.sql"),
    ),
    (
        9,
        "inbound_on_events",
        include_str!("../migrations/0009_inbound_on_events.sql"),
    ),
    (
        10,
        "background_deletion",
        include_str!("../migrations/0010_background_deletion.sql"),
    ),
    (
        11,
        "revisions",
        include_str!("../migrations/0011_revisions.sql"),
    ),
    (12, "alerts", include_str!("../migrations/0012_alerts.sql")),
    (
        13,
        "sessions",
        include_str!("../migrations/0013_sessions.sql"),
    ),
    (
        14,
        "endpoint_minutes",
        include_str!("../migrations/0014_endpoint_minutes.sql"),
    ),
    (
        15,
        "connectors",
        include_str!("../migrations/0015_connectors.sql"),
    ),
    (
        16,
        "scoped_keys",
        include_str!("../migrations/0016_scoped_keys.sql"),
    ),
    (
        17,
        "account_limits",
        include_str!("../migrations/0017_account_limits.sql"),
    ),
    (
        18,
        "audit_log",
        include_str!("../migrations/0018_audit_log.sql"),
    ),
    (
        19,
        "cluster",
        include_str!("../migrations/0019_cluster.sql"),
    ),
    (20, "slots", include_str!("../migrations/0020_slots.sql")),
    (
        21,
        "presence_machines",
        include_str!("../migrations/0021_presence_machines.sql"),
    ),
    (
        22,
        "breakers",
        include_str!("../migrations/0022_breakers.sql"),
    ),
    (
        23,
        "job_nodes",
        include_str!("../migrations/0023_job_nodes.sql"),
    ),
];

pub(crate) fn migrate(conn: &mut Connection) -> DbResult<()> {
    migrate_to(conn, i64::MAX)
}

/// Applies the migrations up to `target` (a test starts from an older schema this way).
pub(crate) fn migrate_to(conn: &mut Connection, target: i64) -> DbResult<()> {
    crate::slots::register(conn)?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER PRIMARY KEY,
             name       TEXT NOT NULL,
             applied_at INTEGER NOT NULL
         )",
    )?;
    let current = version(conn)?;
    let newest = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    if current > newest {
        return Err(StoreError::Internal(format!(
            "the database is at schema version {current}, newer than this merpati ({newest})"
        ))
        .into());
    }
    let to_apply = MIGRATIONS.iter().filter(|m| m.0 > current && m.0 <= target);
    for (version, name, sql) in to_apply {
        let fail = |e: rusqlite::Error| {
            StoreError::Internal(format!("migration {version} ({name}) failed: {e}"))
        };
        let tx = conn.transaction().map_err(fail)?;
        tx.execute_batch(sql).map_err(fail)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            rusqlite::params![version, name, now_ms()],
        )
        .map_err(fail)?;
        tx.commit().map_err(fail)?;
        tracing::info!(version, name, "applied migration");
    }
    Ok(())
}

/// The schema version the database is at.
pub(crate) fn version(c: &Connection) -> DbResult<i64> {
    Ok(c.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?)
}

fn now_ms() -> i64 {
    use merpati_domain::clock::{Clock, SystemClock};
    SystemClock.now_ms()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device's items sent before the dedup keys moved onto events are still known.
    #[test]
    fn inbound_items_move_onto_their_events() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("PRAGMA foreign_keys = ON").unwrap();
        migrate_to(&mut conn, 8).unwrap();
        conn.execute_batch(
            "INSERT INTO accounts (id, name, created_at, updated_at) VALUES ('a', 'a', 0, 0);
             INSERT INTO events (seq, id, account_id, type, device_id, payload, created_at)
             VALUES (1, 'evt_1', 'a', 'sms.received', 'd', '{}', 10),
                    (2, 'evt_2', 'a', 'device.connected', 'd', '{}', 20),
                    (3, 'evt_3', 'a', 'sms.received', 'd', '{}', 30);
             INSERT INTO inbound_items VALUES ('a', 'd', 'i:1', x'01', 1), ('a', 'd', 's:x', x'03', 3);",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        use rusqlite::OptionalExtension;
        let sent = |rid: &str| -> Option<(Vec<u8>, i64, String)> {
            conn.query_row(crate::ingest::SENT_BEFORE, ["a", "d", rid], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
            .unwrap()
        };
        assert_eq!(sent("i:1"), Some((vec![1], 1, "evt_1".into())));
        assert_eq!(sent("s:x"), Some((vec![3], 3, "evt_3".into())));
        assert_eq!(sent("i:2"), None);
        let events: i64 = conn
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(events, 3, "the migration deleted no event");
        crate::testing::assert_whole(&conn);
    }
}
