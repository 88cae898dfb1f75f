//! The schema's indexes serve the queries that need them: the lookups meant for a partial
//! index use it, and every foreign key can find its children without a scan.

use rusqlite::Connection;

use crate::{accounts, delivery, endpoints, fanout, ingest, jobs};

/// The queries meant for a partial index use it (an endpoint's deliveries by status, a
/// device's item by rid): SQLite uses a partial index only when the query implies its
/// condition, and a miss would walk an endpoint's or an account's whole history.
#[test]
fn lookups_meant_for_partial_indexes_use_them() {
    let mut conn = Connection::open_in_memory().unwrap();
    crate::migrations::migrate(&mut conn).unwrap();
    let candidates = format!("SELECT d.id {}", jobs::CANDIDATES);
    let queries = [
        (endpoints::HOLD_PENDING, &["deliveries_due"][..]),
        (endpoints::UNQUEUE_PENDING, &["deliveries_queue"]),
        (endpoints::UNQUEUE_HELD, &["deliveries_held"]),
        (fanout::QUEUE_BUSY, &["deliveries_queue"]),
        (fanout::ADVANCE_QUEUE, &["deliveries_queue"]),
        (fanout::RELEASE_UNQUEUED, &["deliveries_held"]),
        (fanout::RELEASE_QUEUED, &["deliveries_held"]),
        (fanout::PENDING_QUEUES, &["deliveries_queue"]),
        (delivery::UNPARK, &["deliveries_parked"]),
        (&candidates, &["deliveries_failed", "deliveries_event"]),
        (ingest::SENT_BEFORE, &["events_rid"]),
        (endpoints::DELETED_ENDPOINT, &["endpoints_deleted"]),
        (endpoints::ENDPOINT_DELIVERIES, &["deliveries_endpoint"]),
        (accounts::DELETED_ACCOUNT, &["accounts_deleted"]),
        (accounts::ACCOUNT_EVENTS, &["events_account"]),
    ];
    for (sql, indexes) in queries {
        // Planned with the parameters unbound: the plan does not depend on their values.
        let mut explain = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let mut rows = explain.raw_query();
        let mut plan: Vec<String> = Vec::new();
        while let Some(row) = rows.next().unwrap() {
            plan.push(row.get(3).unwrap());
        }
        for index in indexes {
            assert!(
                plan.iter()
                    .any(|step| format!("{step} ").contains(&format!("INDEX {index} "))),
                "{sql}\n uses {plan:?}, not {index}"
            );
        }
    }
}

/// Deleting a parent row looks up its children by the child column: without an index
/// that is a scan of the whole child table for every row deleted (pruning, say).
#[test]
fn every_foreign_key_column_leads_an_index() {
    let mut conn = Connection::open_in_memory().unwrap();
    crate::migrations::migrate(&mut conn).unwrap();
    let tables: Vec<String> =
        crate::testing::column(&conn, "SELECT name FROM sqlite_master WHERE type = 'table'");
    let strings = |sql: &str, arg: &str| -> Vec<(i64, String)> {
        conn.prepare(sql)
            .unwrap()
            .query_map([arg], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let mut missing = Vec::new();
    for table in &tables {
        // (foreign key id, column), in the key's column order.
        let keys = strings(
            "SELECT id, \"from\" FROM pragma_foreign_key_list(?1) ORDER BY id, seq",
            table,
        );
        // A partial index holds only some rows, so it cannot stand in.
        let indexes: Vec<Vec<String>> = strings(
            "SELECT seq, name FROM pragma_index_list(?1) WHERE partial = 0",
            table,
        )
        .into_iter()
        .map(|(_, index)| {
            strings(
                "SELECT seqno, name FROM pragma_index_info(?1) ORDER BY seqno",
                &index,
            )
            .into_iter()
            .map(|(_, column)| column)
            .collect()
        })
        .collect();
        let mut ids: Vec<i64> = keys.iter().map(|k| k.0).collect();
        ids.dedup();
        for id in ids {
            let mut columns: Vec<&str> = keys
                .iter()
                .filter(|k| k.0 == id)
                .map(|k| k.1.as_str())
                .collect();
            columns.sort_unstable();
            // Some index starts with exactly the key's columns, in any order.
            let covered = indexes.iter().any(|index| {
                let mut lead: Vec<&str> = index
                    .iter()
                    .take(columns.len())
                    .map(String::as_str)
                    .collect();
                lead.sort_unstable();
                lead == columns
            });
            if !covered {
                missing.push(format!("{table}({})", columns.join(", ")));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "foreign keys without an index: {missing:?}"
    );
}
