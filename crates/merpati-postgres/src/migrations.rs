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
    let applied = apply(conn);
    conn.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])?;
    applied
}

fn apply(conn: &mut Conn) -> DbResult<i64> {
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
        if *version <= current {
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
