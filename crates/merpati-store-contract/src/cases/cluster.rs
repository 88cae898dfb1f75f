//! The nodes serving a database, each with a lease on the database's clock, and the slots
//! they hold: many nodes at once where the backend shares work, else one at a time.

use std::sync::Arc;

use merpati_domain::slots::{slot_of, Fence, SLOTS};
use merpati_domain::SharedStore;

use crate::support::*;

/// A node joins with a lease; a lease that ran out is not renewed (the node must join
/// again). A second node joins beside a live one where the backend shares work, and is
/// refused (told who holds the database) where it does not.
pub async fn nodes_hold_leases_and_join_beside_each_other_only_where_work_is_shared(
    store: &SharedStore,
) {
    store.leave_cluster(NODE).await.unwrap();
    let first = store.join_cluster("node_a", "host-a", LONG).await.unwrap();
    let first = first.expect("the database is free");
    assert_eq!(
        (first.id.as_str(), first.name.as_str()),
        ("node_a", "host-a")
    );
    assert!(first.lease_until >= first.renewed_at + LONG);

    let second = store.join_cluster("node_b", "host-b", LONG).await.unwrap();
    let (nodes, now) = store.cluster_nodes().await.unwrap();
    if store.shares_work() {
        assert_eq!(second.map(|n| n.id), Ok("node_b".to_string()));
        assert_eq!(nodes.len(), 2);
        store.leave_cluster("node_b").await.unwrap();
    } else {
        assert_eq!(
            second.map_err(|holder| holder.id),
            Err("node_a".to_string())
        );
        assert_eq!(nodes.len(), 1);
    }
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

/// A slot is taken only while no live node holds it, with a higher epoch each time it
/// changes hands; given back, what its holder still had leased is due at once; a node
/// whose lease ran out takes nothing.
pub async fn slots_change_hands_only_when_free_and_each_time_with_a_new_epoch(store: &SharedStore) {
    store.leave_cluster(NODE).await.unwrap();
    let t = tree(store, "acct", 1).await;
    endpoint(store, &t.account, "ep", |_| {}).await;
    let slot = slot_of(&"ep".into());
    let a = fence_of(store, "node_a").await;
    assert_eq!(a.epochs.len(), usize::from(SLOTS));
    one_event(store, &t.devices[0], 1, T0).await;
    let claimed = store
        .claim_due(a.clone(), T0, 10, T0 + 60_000)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let leases = store.slot_leases().await.unwrap();
    assert_eq!(leases.len(), usize::from(SLOTS));
    assert!(leases.iter().all(|l| l.node.as_deref() == Some("node_a")));

    // Given back: the lease it held is void, and the slot is free.
    let traded = store
        .trade_slots("node_a", Vec::new(), vec![slot], T0 + 1)
        .await
        .unwrap();
    assert_eq!(traded.released, 1);
    assert!(!traded.held.contains_key(&slot));
    assert_eq!(traded.held.len(), usize::from(SLOTS) - 1);
    let a_without = Arc::new(Fence {
        node: "node_a".into(),
        epochs: traded.held.clone(),
    });
    assert!(
        store
            .claim_due(a_without, T0 + 1, 10, T0 + 60_000)
            .await
            .unwrap()
            .is_empty(),
        "a slot given back is claimed by nobody until taken"
    );
    let lease = store
        .slot_leases()
        .await
        .unwrap()
        .into_iter()
        .find(|l| l.slot == slot)
        .unwrap();
    assert_eq!(lease.node, None);

    if store.shares_work() {
        // A live node's slots are not taken from it; a free one is.
        store
            .join_cluster("node_b", "host-b", LONG)
            .await
            .unwrap()
            .unwrap();
        let other = (slot + 1) % SLOTS;
        let b = store
            .trade_slots("node_b", vec![slot, other], Vec::new(), T0 + 2)
            .await
            .unwrap();
        assert_eq!(b.held.keys().copied().collect::<Vec<_>>(), vec![slot]);
        assert!(b.held[&slot] > a.epochs[&slot]);
        let b = Arc::new(Fence {
            node: "node_b".into(),
            epochs: b.held,
        });
        let claimed = store
            .claim_due(b.clone(), T0 + 2, 10, T0 + 60_000)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1, "due again, for its new holder");
        // The old fence names the old epoch: its record changes nothing.
        let recorded = store
            .record_attempts(
                a.clone(),
                Arc::new(vec![attempt(
                    &claimed[0],
                    T0 + 3,
                    Some(200),
                    merpati_domain::retry::NextStep::Succeeded,
                )]),
                WEEK_MS,
            )
            .await
            .unwrap();
        assert_eq!(recorded.fenced_out, 1);
        store.leave_cluster("node_b").await.unwrap();
    }

    // Taken again: a new epoch.
    let again = store
        .trade_slots("node_a", vec![slot], Vec::new(), T0 + 4)
        .await
        .unwrap();
    assert!(again.held[&slot] > a.epochs[&slot]);
    assert_eq!(again.held.len(), usize::from(SLOTS));

    // A node whose lease ran out holds nothing and takes nothing.
    store.leave_cluster("node_a").await.unwrap();
    let gone = store
        .trade_slots("node_a", vec![slot], Vec::new(), T0 + 5)
        .await
        .unwrap();
    assert!(gone.held.is_empty());
    assert!(
        store
            .claim_due(a, T0 + 5, 10, T0 + 60_000)
            .await
            .unwrap()
            .is_empty(),
        "its claims name a lease that ran out"
    );
}
