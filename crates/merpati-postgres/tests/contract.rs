//! The storage contract suite (merpati-store-contract), on PostgreSQL: a private server
//! for the whole run, each case on a database of its own copied from a migrated template.

use std::sync::{Arc, OnceLock};

use merpati_postgres::scratch::{ScratchOptions, ScratchServer};
use merpati_postgres::{Options, PostgresStore};
use merpati_store_contract::{contract_suite, Fixture};

fn server() -> &'static ScratchServer {
    static SERVER: OnceLock<ScratchServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        ScratchServer::start(ScratchOptions::default()).expect("a private PostgreSQL server")
    })
}

/// A database of its own, migrated: its URL.
async fn migrated_database() -> String {
    tokio::task::spawn_blocking(|| {
        server()
            .fresh_database(|url| {
                PostgresStore::migrate(url)
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
            .expect("a fresh database")
    })
    .await
    .unwrap()
}

async fn fixture() -> Fixture {
    let url = migrated_database().await;
    // Two writers: every case must hold with other writers beside (as other nodes are).
    let options = Options {
        read_connections: 2,
        writers: 2,
        ..Options::default()
    };
    let sealer = Arc::new(merpati_keyring::Sealer::ephemeral());
    let store = PostgresStore::open(&url, &options, sealer)
        .await
        .expect("the store opens");
    Fixture::new(Arc::new(store), ())
}

contract_suite!(fixture);

/// The log in parts, seen from the database: a part pinned by an owed delivery is thinned
/// by rows; once settled, its rids and its events' later deliveries go first, then its three
/// tables are dropped whole.
mod log_parts {
    use std::time::Duration;

    use merpati_domain::retry::NextStep;
    use merpati_store_contract::support::*;

    /// A query's one number, on a connection of the test's own (a blocking client, so off
    /// the async threads).
    async fn number(url: &str, sql: &str) -> i64 {
        let (url, sql) = (url.to_owned(), sql.to_owned());
        tokio::task::spawn_blocking(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            c.query_one(sql.as_str(), &[]).unwrap().get(0)
        })
        .await
        .unwrap()
    }

    const PART_0: &str = "SELECT COUNT(*) FROM pg_class
                          WHERE relname IN ('events_p0', 'deliveries_p0', 'attempts_p0')";

    /// A store on a fresh database, and the database's URL.
    async fn fresh() -> (String, merpati_domain::SharedStore) {
        let url = super::migrated_database().await;
        let sealer = std::sync::Arc::new(merpati_keyring::Sealer::ephemeral());
        let opened = merpati_postgres::PostgresStore::open(&url, &Default::default(), sealer)
            .await
            .unwrap();
        (url, std::sync::Arc::new(opened))
    }

    #[tokio::test]
    async fn a_settled_part_is_dropped_whole_after_what_refers_to_it() {
        let (url, store) = fresh().await;
        let t = tree(&store, "acct", 1).await;
        endpoint(&store, &t.account, "ep", |_| {}).await;
        let d = &t.devices[0];
        for rid in 0..3 {
            one_event(&store, d, rid, T0).await;
        }
        let first = claim(&store, T0).await;
        let done = first
            .iter()
            .map(|c| attempt(c, T0, Some(200), NextStep::Succeeded))
            .collect();
        record(&store, done, WEEK_MS).await;

        let day = Duration::from_secs(86_400);
        assert!(store.turn_event_log(T0 + 1, Duration::ZERO).await.unwrap());
        assert!(!store
            .turn_event_log(T0 + 1 + 86_399_999, day)
            .await
            .unwrap());
        // Part 0 is closed; part 1 is in use and part 2 ready.
        let open = "SELECT COUNT(*) FROM log_parts WHERE opened_at IS NOT NULL";
        assert_eq!(number(&url, open).await, 2);
        assert_eq!(number(&url, "SELECT MAX(number) FROM log_parts").await, 2);

        // A resend of an old event: a delivery numbered in part 1 that owes part 0's event.
        let late = store
            .resend_delivery(t.account.clone(), first[0].delivery_id, T0 + 100)
            .await
            .unwrap();
        assert!(late.0 >= 10_000_000_000, "numbered in part 1: {late:?}");
        let young = one_event(&store, d, 3, T0 + 10_000).await;

        let cut = T0 + 5_000;
        let mut thinned = 0;
        while let n @ 1.. = store.prune_events(cut, 100).await.unwrap() {
            thinned += n;
        }
        assert_eq!(thinned, 2, "the two events nothing owes, by rows");
        assert_eq!(number(&url, PART_0).await, 3, "kept while owed");

        let resent = claim(&store, T0 + 100).await;
        assert_eq!(resent.len(), 1);
        let settled = vec![attempt(
            &resent[0],
            T0 + 100,
            Some(200),
            NextStep::Succeeded,
        )];
        record(&store, settled, WEEK_MS).await;
        while store.prune_events(cut, 1).await.unwrap() > 0 {}
        assert_eq!(number(&url, PART_0).await, 0, "dropped whole");
        let below = |table: &str| format!("SELECT COUNT(*) FROM {table} WHERE event_seq < 1e10");
        assert_eq!(
            number(&url, &below("deliveries")).await,
            0,
            "the late delivery went first"
        );
        assert_eq!(number(&url, &below("event_rids")).await, 0);
        assert_eq!(
            number(
                &url,
                &format!(
                    "SELECT COUNT(*) FROM attempts WHERE delivery_id = {}",
                    late.0
                )
            )
            .await,
            0
        );
        assert_eq!(number(&url, "SELECT MIN(number) FROM log_parts").await, 1);
        let kept = event(&store, &t.account, &young).await;
        assert_eq!(
            kept.deliveries.len(),
            1,
            "the young event and its delivery stay"
        );
        assert!(store
            .turn_event_log(T0 + 1 + 86_400_000, day)
            .await
            .unwrap());
        assert_eq!(number(&url, "SELECT MAX(number) FROM log_parts").await, 3);
        store.close().await;
    }

    /// A pending delivery whose endpoint row is gone (an insert that raced the endpoint's
    /// purge) is never claimed, so it owes nothing: its part still goes.
    #[tokio::test]
    async fn a_delivery_to_an_endpoint_that_is_gone_does_not_pin_its_part() {
        let (url, store) = fresh().await;
        let t = tree(&store, "acct", 1).await;
        endpoint(&store, &t.account, "ep", |_| {}).await;
        one_event(&store, &t.devices[0], 1, T0).await;
        let pending = "SELECT COUNT(*) FROM deliveries WHERE status = 'pending'";
        assert_eq!(number(&url, pending).await, 1);
        assert!(store.turn_event_log(T0 + 1, Duration::ZERO).await.unwrap());
        assert_eq!(
            store.prune_events(T0 + 5_000, 100).await.unwrap(),
            0,
            "owed"
        );
        assert_eq!(number(&url, PART_0).await, 3);

        let gone = "WITH gone AS (DELETE FROM endpoints WHERE id = 'ep' RETURNING 1)
                    SELECT COUNT(*) FROM gone";
        assert_eq!(number(&url, gone).await, 1);
        assert!(claim(&store, T0 + 10).await.is_empty(), "never claimed");
        while store.prune_events(T0 + 5_000, 100).await.unwrap() > 0 {}
        assert_eq!(number(&url, PART_0).await, 0, "dropped with its part");
        assert_eq!(number(&url, pending).await, 0);
        store.close().await;
    }
}

/// Two nodes on one database: what one node's writers keep of endpoints between their
/// transactions goes as soon as the other changes an endpoint.
mod two_nodes {
    use std::sync::Arc;

    use merpati_domain::ids::EndpointId;
    use merpati_store_contract::support::*;

    /// A node of the database at `url`, with the nodes' key.
    async fn node(url: &str, sealer: &Arc<merpati_keyring::Sealer>) -> merpati_domain::SharedStore {
        // One writer each, so that each keeps what it read from one write to the next.
        let options = merpati_postgres::Options {
            read_connections: 1,
            writers: 1,
            ..merpati_postgres::Options::default()
        };
        let sealer = sealer.clone();
        Arc::new(
            merpati_postgres::PostgresStore::open(url, &options, sealer)
                .await
                .unwrap(),
        )
    }

    /// Where the deliveries of a fresh event go, as the store hands them over at `now`: each
    /// endpoint, its URL and how many secrets sign.
    async fn handed(
        store: &merpati_domain::SharedStore,
        t: &Tree,
        rid: i64,
        now: i64,
    ) -> Vec<(EndpointId, String, usize)> {
        let room = Room::new(10, now + 60_000);
        let d = &t.devices[0];
        store
            .ingest(d.clone(), vec![sms(d, rid, "hi")], now, room.reserve())
            .await
            .unwrap();
        let mut handed: Vec<_> = room
            .handed
            .lock()
            .unwrap()
            .iter()
            .map(|h| {
                let e = &h.endpoint;
                (e.id.clone(), e.url.clone(), e.secrets.len())
            })
            .collect();
        handed.sort();
        handed
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_on_one_node_reaches_the_others_next_write() {
        let url = super::migrated_database().await;
        let sealer = Arc::new(merpati_keyring::Sealer::ephemeral());
        let (a, b) = (node(&url, &sealer).await, node(&url, &sealer).await);
        let t = tree(&a, "acct", 1).await;
        let ep = endpoint(&a, &t.account, "ep", |_| {}).await;
        let url_of = |path: &str| format!("https://example.com/{path}");
        assert_eq!(
            handed(&a, &t, 1, T0).await,
            [(ep.id.clone(), url_of("ep"), 1)]
        );

        // Changed through the other node: a new URL, a second secret, a second endpoint.
        let mut changed = ep.clone();
        changed.url = url_of("moved");
        b.update_endpoint(t.account.clone(), changed).await.unwrap();
        assert_eq!(
            handed(&a, &t, 2, T0).await,
            [(ep.id.clone(), url_of("moved"), 1)]
        );
        let (account, id) = (t.account.clone(), ep.id.clone());
        b.rotate_endpoint_secret(account, id, "whsec_new".into(), T0 + 1_000, T0)
            .await
            .unwrap();
        let other = endpoint(&b, &t.account, "other", |_| {}).await;
        assert_eq!(
            handed(&a, &t, 3, T0).await,
            [
                (ep.id.clone(), url_of("moved"), 2),
                (other.id.clone(), url_of("other"), 1)
            ]
        );
        // The old secret expires with nothing changed: kept no longer than it signs.
        assert_eq!(handed(&a, &t, 4, T0 + 999).await[0].2, 2);
        assert_eq!(handed(&a, &t, 5, T0 + 1_000).await[0].2, 1);

        // Deleted there: no delivery to it here.
        b.delete_endpoint(t.account.clone(), ep.id.clone(), T0)
            .await
            .unwrap();
        assert_eq!(
            handed(&a, &t, 6, T0 + 1_000).await,
            [(other.id, url_of("other"), 1)]
        );
    }
}
