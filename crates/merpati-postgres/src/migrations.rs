//! Versioned migrations of the schema, applied in order at open, each in its own
//! transaction. Nodes starting together take turns: the first migrates under an advisory
//! lock, the others find the work done.

use merpati_domain::StoreError;

use crate::conn::Conn;
use crate::error::DbResult;

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (2, "cluster", include_str!("../migrations/0002_cluster.sql")),
    (3, "slots", include_str!("../migrations/0003_slots.sql")),
    (
        4,
        "presence_machines",
        include_str!("../migrations/0004_presence_machines.sql"),
    ),
    (
        5,
        "breakers",
        include_str!("../migrations/0005_breakers.sql"),
    ),
    (
        6,
        "job_nodes",
        include_str!("../migrations/0006_job_nodes.sql"),
    ),
    (
        7,
        "log_parts",
        include_str!("../migrations/0007_log_parts.sql"),
    ),
    (
        8,
        "delivery_slots",
        include_str!("../migrations/0008_delivery_slots.sql"),
    ),
    (
        9,
        "endpoint_changes",
        include_str!("../migrations/0009_endpoint_changes.sql"),
    ),
];

/// The advisory lock migrations are applied under (any constant of our own).
const MIGRATION_LOCK: i64 = 0x6d65_7270_6174_6901;

/// Brings the schema to the newest version; answers the version it is at.
pub(crate) fn migrate(conn: &mut Conn) -> DbResult<i64> {
    conn.batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    BIGINT PRIMARY KEY,
             name       TEXT NOT NULL,
             applied_at BIGINT NOT NULL
         )",
    )
    .or_else(|e| {
        // Two nodes creating it at once: one loses the race, and the table is there.
        if crate::error::is_unique_violation(&e) {
            Ok(())
        } else {
            Err(e)
        }
    })?;
    conn.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
    let applied = apply(conn, i64::MAX);
    conn.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])?;
    applied
}

/// Applies the migrations after the current version, up to `target`.
fn apply(conn: &mut Conn, target: i64) -> DbResult<i64> {
    let mut current = version(conn)?;
    let newest = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > newest {
        return Err(StoreError::Internal(format!(
            "the database is at schema version {current}, newer than this merpati knows \
             ({newest}): run the newer merpati"
        ))
        .into());
    }
    for (version, name, sql) in MIGRATIONS {
        if *version <= current || *version > target {
            continue;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        conn.batch("BEGIN")?;
        let step = conn.batch(sql).and_then(|()| {
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                &[version, name, &now],
            )
        });
        match step {
            Ok(_) => conn.batch("COMMIT")?,
            Err(e) => {
                let _ = conn.batch("ROLLBACK");
                return Err(e);
            }
        }
        current = *version;
        tracing::info!(version, name, "applied a migration");
    }
    Ok(current)
}

/// The schema version the database is at.
pub(crate) fn version(conn: &mut Conn) -> DbResult<i64> {
    Ok(conn
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )?
        .get(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::Server;

    /// A log written before it was kept in parts is all in part 0, its rids known, its
    /// numbers going on from where they were; its deliveries then learn their slots.
    #[test]
    fn the_log_moves_into_parts_whole() {
        let url = crate::scratch::shared().empty_database().unwrap();
        let mut conn = Conn::connect(&Server::plain(&url)).unwrap();
        migrate(&mut conn).unwrap();
        conn.batch("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
            .unwrap();
        conn.batch(
            "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL,
                                             applied_at BIGINT NOT NULL)",
        )
        .unwrap();
        assert_eq!(apply(&mut conn, 6).unwrap(), 6);
        conn.batch(
            "INSERT INTO accounts (id, name, created_at, updated_at) VALUES ('a', 'a', 0, 0);
             INSERT INTO endpoints (account_id, id, url, business_ids, channel_ids, device_ids,
                                    format, secret_in_body, headers, created_at, updated_at)
             VALUES ('a', 'ep', 'http://x', '[]', '[]', '[]', 'gateway', FALSE, '{}', 0, 0);
             INSERT INTO events (id, account_id, type, device_id, payload, created_at, rid,
                                 content_hash)
             VALUES ('evt_1', 'a', 'sms', 'd', '{}', 10, 'i:1', '\\x01'),
                    ('evt_2', 'a', 'device.connected', 'd', '{}', 20, NULL, NULL);
             INSERT INTO deliveries (event_seq, endpoint_id, status, created_at)
             VALUES (1, 'ep', 'succeeded', 10), (2, 'ep', 'pending', 20);
             INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms)
             VALUES (1, 1, 10, 5);",
        )
        .unwrap();
        assert_eq!(apply(&mut conn, 7).unwrap(), 7);
        let count =
            |conn: &mut Conn, sql: &str| -> i64 { conn.query_one(sql, &[]).unwrap().get(0) };
        assert_eq!(count(&mut conn, "SELECT COUNT(*) FROM events_p0"), 2);
        assert_eq!(count(&mut conn, "SELECT COUNT(*) FROM deliveries_p0"), 2);
        assert_eq!(count(&mut conn, "SELECT COUNT(*) FROM attempts_p0"), 1);
        let rid = conn
            .query_one(
                "SELECT event_seq, event_id, content_hash FROM event_rids
                 WHERE account_id = 'a' AND device_id = 'd' AND rid = 'i:1'",
                &[],
            )
            .unwrap();
        assert_eq!(rid.get::<_, i64>(0), 1);
        assert_eq!(rid.get::<_, String>(1), "evt_1");
        assert_eq!(rid.get::<_, Vec<u8>>(2), vec![1]);
        assert_eq!(count(&mut conn, "SELECT COUNT(*) FROM event_rids"), 1);
        assert_eq!(count(&mut conn, "SELECT nextval('event_numbers')"), 3);
        assert_eq!(count(&mut conn, "SELECT nextval('delivery_numbers')"), 3);
        assert_eq!(count(&mut conn, "SELECT nextval('attempt_numbers')"), 2);

        // Then every delivery takes its endpoint's slot.
        assert_eq!(apply(&mut conn, i64::MAX).unwrap(), 9);
        assert_eq!(
            count(
                &mut conn,
                "SELECT COUNT(*) FROM deliveries d JOIN endpoints ep ON ep.id = d.endpoint_id
                 WHERE d.slot = ep.slot"
            ),
            2
        );

        // And every change to what the writers keep of endpoints raises a number, at its
        // commit; a failing streak does not.
        let version = |conn: &mut Conn| count(conn, "SELECT version FROM endpoint_changes");
        let before = version(&mut conn);
        conn.batch("UPDATE endpoints SET failing_since = 5 WHERE id = 'ep'")
            .unwrap();
        assert_eq!(version(&mut conn), before);
        conn.batch("UPDATE endpoints SET url = 'https://example.com/2' WHERE id = 'ep'")
            .unwrap();
        assert_eq!(version(&mut conn), before + 1);
        conn.batch(
            "BEGIN;
             UPDATE endpoints SET rate_limit = 3 WHERE id = 'ep';
             INSERT INTO endpoint_secrets (endpoint_id, secret, created_at) VALUES ('ep', 's', 1);",
        )
        .unwrap();
        assert_eq!(version(&mut conn), before + 1, "raised at the commit");
        conn.batch("COMMIT").unwrap();
        assert_eq!(version(&mut conn), before + 3);
    }
}
