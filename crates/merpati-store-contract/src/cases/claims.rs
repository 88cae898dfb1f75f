//! Claims and leases: a claimed delivery is leased to the worker until its lease ends, and
//! claimed by nobody else meanwhile; the node that takes a stopped node's slots voids its
//! leases. Fresh deliveries handed straight to the worker are leased in the transaction
//! that stores them.

use std::sync::Arc;

use merpati_domain::endpoint::StoredBreaker;
use merpati_domain::ids::{DeliveryId, EndpointId};
use merpati_domain::retry::NextStep;
use merpati_domain::slots::{Fence, SLOTS};
use merpati_domain::SharedStore;

use crate::support::*;

pub async fn a_claim_leases_until_the_lease_ends(store: &SharedStore) {
    let t = tree(store, "acct", 1).await;
    endpoint(store, &t.account, "ep", |_| {}).await;
    for rid in 0..3 {
        one_event(store, &t.devices[0], rid, T0).await;
    }
    let f = fence(store).await;
    assert_eq!(store.next_due_at(f.clone()).await.unwrap(), Some(T0));
    // Nothing is due before its time.
    assert!(store
        .claim_due(f.clone(), T0 - 1, 10, T0 + 1000)
        .await
        .unwrap()
        .is_empty());
    let first = store.claim_due(f.clone(), T0, 2, T0 + 1000).await.unwrap();
    assert_eq!(first.len(), 2, "no more than asked");
    let rest = store.claim_due(f.clone(), T0, 10, T0 + 1000).await.unwrap();
    assert_eq!(rest.len(), 1, "what is leased is not claimed again");
    assert!(store
        .claim_due(f.clone(), T0 + 999, 10, T0 + 2000)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.next_due_at(f.clone()).await.unwrap(), Some(T0 + 1000));
    // The lease ran out with no outcome recorded (the worker died): due again.
    let again = store.claim_due(f, T0 + 1000, 10, T0 + 2000).await.unwrap();
    assert_eq!(again.len(), 3);
    let mut ids: Vec<_> = again.iter().map(|d| d.delivery_id).collect();
    let mut before: Vec<_> = first.iter().chain(&rest).map(|d| d.delivery_id).collect();
    ids.sort();
    before.sort();
    assert_eq!(ids, before, "the same deliveries");
    assert!(
        again.iter().all(|d| d.attempt == 1),
        "a claim is no attempt"
    );
}

/// `events` deliveries to an endpoint "ep" of `acct`, claimed by "node_old", which holds
/// every slot in place of [`NODE`].
async fn claimed_by_an_old_node(
    store: &SharedStore,
    events: i64,
) -> (Tree, Arc<Fence>, Vec<merpati_domain::delivery::DueDelivery>) {
    let t = tree(store, "acct", 1).await;
    endpoint(store, &t.account, "ep", |_| {}).await;
    for rid in 0..events {
        one_event(store, &t.devices[0], rid, T0).await;
    }
    store.leave_cluster(NODE).await.unwrap();
    let old = fence_of(store, "node_old").await;
    let claimed = store
        .claim_due(old.clone(), T0, 10, T0 + 60_000)
        .await
        .unwrap();
    (t, old, claimed)
}

/// A node that stopped (its lease ended) is succeeded by one that takes its slots: what the
/// first had leased or parked is due at once, and the first's writes change nothing.
pub async fn a_takeover_voids_the_leases_and_what_lanes_parked(store: &SharedStore) {
    let (t, old, claimed) = claimed_by_an_old_node(store, 3).await;
    assert_eq!(claimed.len(), 3);
    store
        .park(old.clone(), vec![(claimed[0].delivery_id, T0 + 600_000)])
        .await
        .unwrap();
    store.leave_cluster("node_old").await.unwrap();
    store
        .join_cluster("node_new", "host", LONG)
        .await
        .unwrap()
        .unwrap();
    let taken = store
        .trade_slots("node_new", (0..SLOTS).collect(), Vec::new(), T0 + 5)
        .await
        .unwrap();
    assert_eq!(taken.held.len(), usize::from(SLOTS));
    for (slot, epoch) in &taken.held {
        assert!(
            old.epochs.get(slot).is_none_or(|e| epoch > e),
            "an epoch is raised when its slot changes hands"
        );
    }
    assert_eq!(taken.released, 3, "leased and parked alike");
    let new = Arc::new(Fence {
        node: "node_new".into(),
        epochs: taken.held,
    });
    // The old node's claims, parks and records find nothing of theirs.
    assert!(store
        .claim_due(old.clone(), T0 + 5, 10, T0 + 60_000)
        .await
        .unwrap()
        .is_empty());
    let recorded = store
        .record_attempts(
            old.clone(),
            Arc::new(vec![attempt(
                &claimed[1],
                T0 + 1,
                Some(200),
                NextStep::Succeeded,
            )]),
            WEEK_MS,
        )
        .await
        .unwrap();
    assert_eq!(recorded.fenced_out, 1);
    store
        .park(old.clone(), vec![(claimed[2].delivery_id, T0 + 600_000)])
        .await
        .unwrap();
    assert_eq!(store.unpark(old, "ep".into(), T0 + 5, 10).await.unwrap(), 0);
    let after = store
        .claim_due(new.clone(), T0 + 5, 10, T0 + 60_000)
        .await
        .unwrap();
    assert_eq!(after.len(), 3, "due at once, for the new node");
    assert!(after.iter().all(|d| d.attempt == 1), "nothing was recorded");
    let e = event(store, &t.account, &claimed[1].event_id).await;
    assert!(e.deliveries[0].attempts.is_empty());
    // The new node's own record counts.
    let recorded = store
        .record_attempts(
            new,
            Arc::new(vec![attempt(
                &after[0],
                T0 + 6,
                Some(200),
                NextStep::Succeeded,
            )]),
            WEEK_MS,
        )
        .await
        .unwrap();
    assert_eq!(recorded.fenced_out, 0);
}

pub async fn handed_over_deliveries_are_leased_once_committed_and_room_comes_back_otherwise(
    store: &SharedStore,
) {
    let t = tree(store, "acct", 1).await;
    for id in ["a", "b", "c"] {
        endpoint(store, &t.account, id, |_| {}).await;
    }
    let d = &t.devices[0];
    let lease_until = T0 + 45_000;
    let room = Room::new(2, lease_until);
    let result = store
        .ingest(d.clone(), vec![sms(d, 1, "hi")], T0, room.reserve())
        .await
        .unwrap();
    // Two handed over with the room there was, the third stored due.
    assert_eq!(result.new_deliveries, 1);
    let handed = room.handed.lock().unwrap().clone();
    assert_eq!(handed.len(), 2);
    assert_eq!(room.free(), 0, "the handed-over deliveries keep their room");
    let e = event(store, &t.account, &result.items[0].event_id).await;
    for h in &handed {
        assert_eq!(h.event_id, e.summary.id);
        assert_eq!(h.attempt, 1);
        assert_eq!(&*h.payload, &*e.payload.to_string());
        assert_eq!(h.endpoint.account_id, t.account);
        assert_eq!(
            h.endpoint.url,
            format!("https://example.com/{}", h.endpoint.id)
        );
        assert_eq!(h.endpoint.secrets.len(), 1);
    }
    // Only the one stored due is claimed; the handed-over ones when their lease ends.
    assert_eq!(claim(store, T0).await.len(), 1);
    assert_eq!(
        store
            .claim_due(fence(store).await, lease_until, 10, lease_until + 1)
            .await
            .unwrap()
            .len(),
        2
    );

    // A write that does not commit hands nothing over and gives its room back.
    let room = Room::new(3, lease_until);
    let refused = store
        .ingest(d.clone(), vec![sms(d, 1, "changed")], T0, room.reserve())
        .await;
    assert!(refused.is_err());
    assert!(room.handed.lock().unwrap().is_empty());
    assert_eq!(room.free(), 3);
}

/// Deliveries of slots another node holds are stored leased to it for an offer, and named
/// once committed; that node reads them (a read, no claim) while the offer holds, with
/// what their attempts need, and claims them as any due delivery once it ran out.
pub async fn offered_deliveries_are_read_while_the_offer_holds_then_claimed(store: &SharedStore) {
    let t = tree(store, "acct", 1).await;
    for id in ["a", "b"] {
        endpoint(store, &t.account, id, |_| {}).await;
    }
    let d = &t.devices[0];
    let offer_until = T0 + 1_000;
    let room = Room::offering(offer_until);
    let result = store
        .ingest(d.clone(), vec![sms(d, 1, "hi")], T0, room.reserve())
        .await
        .unwrap();
    assert_eq!(result.new_deliveries, 0, "offered, not due");
    let carried = room.offered.lock().unwrap().clone();
    assert_eq!(carried.len(), 2, "one for each endpoint");
    assert!(room.handed.lock().unwrap().is_empty());
    let offered: Vec<DeliveryId> = carried.iter().map(|o| o.id).collect();
    // A write that does not commit offers nothing.
    let refused_room = Room::offering(offer_until);
    let refused = store
        .ingest(
            d.clone(),
            vec![sms(d, 1, "changed")],
            T0,
            refused_room.reserve(),
        )
        .await;
    assert!(refused.is_err());
    assert!(refused_room.offered.lock().unwrap().is_empty());

    // Leased: no claim takes them while the offer holds.
    assert!(claim(store, T0).await.is_empty());
    let mut asked = offered.clone();
    asked.push(DeliveryId(i64::MAX));
    let read = store.read_offered(asked, T0 + 10).await.unwrap();
    assert_eq!(
        read.iter().map(|r| r.delivery_id).collect::<Vec<_>>(),
        offered,
        "those offered, in the order named, and nothing else"
    );
    let e = event(store, &t.account, &result.items[0].event_id).await;
    for r in &read {
        assert_eq!(r.event_id, e.summary.id);
        assert_eq!(r.attempt, 1);
        assert_eq!(&*r.payload, &*e.payload.to_string());
        assert_eq!(
            r.endpoint.url,
            format!("https://example.com/{}", r.endpoint.id)
        );
        assert_eq!(r.endpoint.secrets.len(), 1);
    }
    assert_ne!(read[0].endpoint.id, read[1].endpoint.id);
    // What the offers carried is what the owner reads.
    for (offer, r) in carried.iter().zip(&read) {
        let c = offer.carried.as_ref().expect("a fresh delivery is carried");
        assert_eq!(c.event_id, r.event_id);
        assert_eq!(c.payload, r.payload);
        assert_eq!(c.endpoint_id, r.endpoint.id);
        assert_eq!(c.until, offer_until);
    }

    // One attempted and recorded is no longer offered.
    record(
        store,
        vec![attempt(&read[0], T0 + 20, Some(200), NextStep::Succeeded)],
        i64::MAX,
    )
    .await;
    let read_again = store.read_offered(offered.clone(), T0 + 30).await.unwrap();
    assert_eq!(
        read_again.iter().map(|r| r.delivery_id).collect::<Vec<_>>(),
        [read[1].delivery_id]
    );
    // Past the offer, the other is due: claimed, and no longer read.
    assert!(store
        .read_offered(offered.clone(), offer_until)
        .await
        .unwrap()
        .is_empty());
    let claimed = claim(store, offer_until).await;
    assert_eq!(
        claimed.iter().map(|c| c.delivery_id).collect::<Vec<_>>(),
        [read[1].delivery_id]
    );
}

/// The targets of offers that carried their deliveries are as new as what the offering
/// write saw of endpoints: a change made before it is in them; an endpoint deleted is not.
pub async fn offered_targets_are_as_new_as_the_offering_write_saw(store: &SharedStore) {
    let t = tree(store, "acct", 1).await;
    let a = endpoint(store, &t.account, "a", |_| {}).await;
    endpoint(store, &t.account, "b", |_| {}).await;
    let d = &t.devices[0];
    // Offers of a write of rid `rid`, by endpoint: how far each saw.
    let offer = |rid: i64| async move {
        let room = Room::offering(T0 + 1_000);
        store
            .ingest(d.clone(), vec![sms(d, rid, "hi")], T0, room.reserve())
            .await
            .unwrap();
        let offered = room.offered.lock().unwrap().clone();
        offered
            .into_iter()
            .map(|o| {
                let c = o.carried.expect("carried");
                (c.endpoint_id.to_string(), c.endpoints_seen)
            })
            .collect::<std::collections::BTreeMap<String, i64>>()
    };
    let targets = |wanted: Vec<(&str, i64)>| {
        let wanted = wanted
            .into_iter()
            .map(|(e, seen)| (EndpointId::from(e), seen))
            .collect();
        async move { store.offered_targets(wanted, T0 + 10).await.unwrap() }
    };

    let first = offer(1).await;
    let found = targets(vec![("a", first["a"]), ("b", first["b"])]).await;
    assert_eq!(found.len(), 2);
    for (id, target) in &found {
        assert_eq!(&target.id, id);
        assert_eq!(target.account_id, t.account);
        assert_eq!(target.url, format!("https://example.com/{id}"));
        assert_eq!(target.secrets.len(), 1);
    }

    let mut moved = a.clone();
    moved.url = "https://example.com/a-moved".into();
    moved.updated_at = T0 + 1;
    store
        .update_endpoint(t.account.clone(), moved)
        .await
        .unwrap();
    let second = offer(2).await;
    assert!(second["a"] >= first["a"]);
    let found = targets(vec![("a", second["a"])]).await;
    assert_eq!(
        found[&EndpointId::from("a")].url,
        "https://example.com/a-moved"
    );

    store
        .delete_endpoint(t.account.clone(), "b".into(), T0 + 2)
        .await
        .unwrap();
    let third = offer(3).await;
    assert!(!third.contains_key("b"), "no longer fanned out to");
    let found = targets(vec![("a", third["a"]), ("b", third["a"])]).await;
    assert_eq!(
        found.keys().map(EndpointId::as_str).collect::<Vec<_>>(),
        ["a"],
        "a deleted endpoint has none"
    );
}

/// A claim whose commit went unanswered is read back by when it was made and until when it
/// leased: what it took of the fence's slots, while still so leased, and nothing of
/// another claim's.
pub async fn what_a_claim_leased_is_read_back_by_when_it_was_made(store: &SharedStore) {
    let t = tree(store, "acct", 1).await;
    endpoint(store, &t.account, "ep", |_| {}).await;
    for rid in 0..4 {
        one_event(store, &t.devices[0], rid, T0).await;
    }
    let f = fence(store).await;
    let mut first = store.claim_due(f.clone(), T0, 3, T0 + 1000).await.unwrap();
    let other = store
        .claim_due(f.clone(), T0 + 1, 10, T0 + 1001)
        .await
        .unwrap();
    assert_eq!((first.len(), other.len()), (3, 1));
    first.sort_by_key(|d| d.delivery_id);
    let read = store
        .read_claimed(f.clone(), T0, T0 + 1000, 10)
        .await
        .unwrap();
    assert_eq!(
        read.iter().map(|d| d.delivery_id).collect::<Vec<_>>(),
        first.iter().map(|d| d.delivery_id).collect::<Vec<_>>(),
        "what that claim took, and nothing of the other"
    );
    for (r, c) in read.iter().zip(&first) {
        assert_eq!(
            (r.attempt, &r.event_id, &*r.payload, &r.endpoint.url),
            (c.attempt, &c.event_id, &*c.payload, &c.endpoint.url)
        );
        assert_eq!(r.endpoint.secrets.len(), 1);
    }
    assert_eq!(
        store
            .read_claimed(f.clone(), T0, T0 + 1000, 2)
            .await
            .unwrap()
            .len(),
        2,
        "no more than asked"
    );
    // One attempted and recorded is no longer leased by that claim.
    record(
        store,
        vec![attempt(&first[0], T0 + 5, Some(200), NextStep::Succeeded)],
        i64::MAX,
    )
    .await;
    let read = store
        .read_claimed(f.clone(), T0, T0 + 1000, 10)
        .await
        .unwrap();
    assert_eq!(
        read.iter().map(|d| d.delivery_id).collect::<Vec<_>>(),
        first[1..].iter().map(|d| d.delivery_id).collect::<Vec<_>>()
    );
    // A fence without slots reads nothing.
    let none = Arc::new(Fence {
        node: f.node.clone(),
        epochs: Default::default(),
    });
    assert!(store
        .read_claimed(none, T0, T0 + 1000, 10)
        .await
        .unwrap()
        .is_empty());
}

pub async fn parked_deliveries_wait_until_taken_back(store: &SharedStore) {
    let t = tree(store, "acct", 1).await;
    endpoint(store, &t.account, "slow", |_| {}).await;
    endpoint(store, &t.account, "fast", |_| {}).await;
    for rid in 0..4 {
        one_event(store, &t.devices[0], rid, T0).await;
    }
    let claimed = claim(store, T0).await;
    let slow: Vec<_> = claimed
        .iter()
        .filter(|d| d.endpoint.id == "slow")
        .map(|d| (d.delivery_id, T0 + 30_000 + d.delivery_id.0))
        .collect();
    assert_eq!(slow.len(), 4);
    let f = fence(store).await;
    store.park(f.clone(), slow).await.unwrap();
    assert!(claim(store, T0 + 1).await.is_empty());
    // The lane caught up: two back now, earliest first, and no more than asked.
    let slow_id = EndpointId::from("slow");
    assert_eq!(
        store
            .unpark(f.clone(), slow_id.clone(), T0 + 1, 2)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .unpark(f.clone(), "fast".into(), T0 + 1, 2)
            .await
            .unwrap(),
        0
    );
    let back = claim(store, T0 + 1).await;
    assert_eq!(back.len(), 2);
    // Parking costs no attempt.
    assert!(back.iter().all(|d| d.attempt == 1));
    assert_eq!(store.unpark(f, slow_id, T0 + 1, 10).await.unwrap(), 2);
}

/// An endpoint's breaker is kept by its owner, shown on the endpoint and handed to whoever
/// claims its deliveries next; a node that lost the slot keeps nothing.
pub async fn a_kept_breaker_goes_to_the_next_owner_and_only_the_owner_keeps_one(
    store: &SharedStore,
) {
    let t = tree(store, "acct", 1).await;
    let ep = endpoint(store, &t.account, "ep", |_| {}).await;
    one_event(store, &t.devices[0], 0, T0).await;
    store.leave_cluster(NODE).await.unwrap();
    let old = fence_of(store, "node_old").await;
    let open = StoredBreaker {
        until: T0 + 60_000,
        cooldown_ms: 30_000,
    };
    store
        .mark_breakers(old.clone(), vec![(ep.id.clone(), Some(open))])
        .await
        .unwrap();
    let shown = store
        .get_endpoint(t.account.clone(), ep.id.clone())
        .await
        .unwrap();
    assert_eq!(shown.paused_until, Some(T0 + 60_000));

    store.leave_cluster("node_old").await.unwrap();
    let new = fence_of(store, "node_new").await;
    let claimed = store
        .claim_due(new.clone(), T0, 10, T0 + 60_000)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        claimed[0].endpoint.breaker,
        Some(open),
        "the new owner starts there"
    );

    // The old owner closing it changes nothing now; the new one does.
    store
        .mark_breakers(old, vec![(ep.id.clone(), None)])
        .await
        .unwrap();
    let kept = |store: &SharedStore| {
        let (account, id) = (t.account.clone(), ep.id.clone());
        let store = store.clone();
        async move { store.get_endpoint(account, id).await.unwrap().paused_until }
    };
    assert_eq!(kept(store).await, Some(T0 + 60_000));
    store
        .mark_breakers(new, vec![(ep.id.clone(), None)])
        .await
        .unwrap();
    assert_eq!(kept(store).await, None);
}

/// A success the old owner records after a takeover is fenced out with its delivery: the
/// endpoint's failing streak goes on.
pub async fn a_fenced_out_success_leaves_the_failing_streak(store: &SharedStore) {
    let (t, old, claimed) = claimed_by_an_old_node(store, 2).await;
    let failed = attempt(&claimed[0], T0, Some(500), NextStep::RetryAt(T0 + 1000));
    store
        .record_attempts(old.clone(), Arc::new(vec![failed]), WEEK_MS)
        .await
        .unwrap();
    let failing_since = || async {
        store
            .get_endpoint(t.account.clone(), "ep".into())
            .await
            .unwrap()
            .failing_since
    };
    assert_eq!(failing_since().await, Some(T0));
    store.leave_cluster("node_old").await.unwrap();
    fence_of(store, "node_new").await;
    let late = attempt(&claimed[1], T0 + 2, Some(200), NextStep::Succeeded);
    let recorded = store
        .record_attempts(old, Arc::new(vec![late]), WEEK_MS)
        .await
        .unwrap();
    assert_eq!(recorded.fenced_out, 1);
    assert_eq!(failing_since().await, Some(T0), "the streak goes on");
}
