//! The nodes serving a database: one at a time, each with a lease on the database's clock.

use merpati_domain::SharedStore;

/// Long enough that no test run outlives it.
const LONG: i64 = 3_600_000;

/// A node joins while no other's lease is live; a second is refused (and told who holds
/// the database) until the first leaves or its lease runs out; a lease that ran out is not
/// renewed (the node must join again).
pub async fn one_node_at_a_time_holds_the_database_until_its_lease_ends(store: &SharedStore) {
    let first = store.join_cluster("node_a", "host-a", LONG).await.unwrap();
    let first = first.expect("the database is free");
    assert_eq!(
        (first.id.as_str(), first.name.as_str()),
        ("node_a", "host-a")
    );
    assert!(first.lease_until >= first.renewed_at + LONG);

    let refused = store.join_cluster("node_b", "host-b", LONG).await.unwrap();
    assert_eq!(
        refused.map_err(|holder| holder.id),
        Err("node_a".to_string())
    );
    let (nodes, now) = store.cluster_nodes().await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert!(nodes[0].lease_until > now);

    let renewed = store.renew_lease("node_a", LONG).await.unwrap().unwrap();
    assert!(renewed.renewed_at >= first.renewed_at);
    // The same node joining again (a restart that kept its id) is itself, not another.
    assert!(store
        .join_cluster("node_a", "host-a", LONG)
        .await
        .unwrap()
        .is_ok());

    store.leave_cluster("node_a").await.unwrap();
    assert!(store.cluster_nodes().await.unwrap().0.is_empty());
    assert_eq!(store.renew_lease("node_a", LONG).await.unwrap(), None);
    let second = store.join_cluster("node_b", "host-b", LONG).await.unwrap();
    assert_eq!(second.map(|n| n.id), Ok("node_b".to_string()));

    // A lease of no length has run out as it is given: the next node may join at once.
    store.leave_cluster("node_b").await.unwrap();
    store
        .join_cluster("node_c", "host-c", 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.renew_lease("node_c", LONG).await.unwrap(), None);
    assert!(store
        .join_cluster("node_d", "host-d", LONG)
        .await
        .unwrap()
        .is_ok());
}
