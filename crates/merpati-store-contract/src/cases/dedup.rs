//! Dedup: an item a device sends again (same rid, same content) is answered as the first
//! time and never becomes a second event; a rid used again for other content refuses the
//! whole batch, which then changes nothing.

use merpati_domain::event::EventFilter;
use merpati_domain::{SharedStore, StoreError};
use merpati_webhooks::Rid;

use crate::support::*;

async fn events(store: &SharedStore, account: &merpati_domain::ids::AccountId) -> usize {
    store
        .list_events(account.clone(), EventFilter::default(), None, 1000)
        .await
        .unwrap()
        .len()
}

pub async fn a_resent_item_is_one_event_and_a_reused_rid_refuses_the_batch(store: &SharedStore) {
    let t = tree(store, "acct", 2).await;
    endpoint(store, &t.account, "ep", |_| {}).await;
    let d = &t.devices[0];
    let first = ingest(store, d, vec![sms(d, 10593, "Hello")], T0).await;
    assert!(first.items[0].new);
    let again = ingest(store, d, vec![sms(d, 10593, "Hello")], T0 + 1000).await;
    assert_eq!(again.items[0].event_id, first.items[0].event_id);
    assert_eq!(again.items[0].id, first.items[0].id);
    assert!(!again.items[0].new);
    assert_eq!(again.new_deliveries, 0, "no second delivery either");
    assert_eq!(events(store, &t.account).await, 1);

    // The same rid and content twice in one batch: one event, answered twice.
    let batch = ingest(store, d, vec![sms(d, 7, "a"), sms(d, 7, "a")], T0).await;
    assert_eq!(batch.items[0].event_id, batch.items[1].event_id);
    assert!(batch.items[0].new && !batch.items[1].new);
    assert_eq!(events(store, &t.account).await, 2);

    // A reused rid refuses the batch, new items and all.
    let refused = store
        .ingest(
            d.clone(),
            vec![sms(d, 8, "new"), sms(d, 10593, "Other")],
            T0,
            Room::none(),
        )
        .await;
    let Err(StoreError::Conflict(message)) = refused else {
        panic!("{refused:?}")
    };
    assert!(message.starts_with("items[1]"), "{message}");
    let refused = store
        .ingest(
            d.clone(),
            vec![sms(d, 9, "x"), sms(d, 9, "y")],
            T0,
            Room::none(),
        )
        .await;
    assert!(matches!(refused, Err(StoreError::Conflict(_))));
    assert_eq!(
        events(store, &t.account).await,
        2,
        "nothing of either was stored"
    );

    // Rids are a device's own: another device's rid 10593 is another item.
    let other = &t.devices[1];
    let theirs = ingest(store, other, vec![sms(other, 10593, "Hello")], T0).await;
    assert_ne!(theirs.items[0].event_id, first.items[0].event_id);
}

pub async fn integer_and_string_rids_never_collide(store: &SharedStore) {
    let t = tree(store, "acct", 1).await;
    let d = &t.devices[0];
    let int = ingest(store, d, vec![item(d, Rid::Int(7), "m")], T0).await;
    let string = ingest(store, d, vec![item(d, Rid::Str("7".into()), "m")], T0).await;
    assert_ne!(int.items[0].event_id, string.items[0].event_id);
    assert!(string.items[0].new);
    assert_eq!(string.items[0].rid, Rid::Str("7".into()));
}

pub async fn the_system_id_only_grows(store: &SharedStore) {
    let t = tree(store, "acct", 1).await;
    let d = &t.devices[0];
    let mut last = 0;
    for rid in 0..5 {
        let batch = ingest(
            store,
            d,
            vec![sms(d, rid * 2, "a"), sms(d, rid * 2 + 1, "b")],
            T0,
        )
        .await;
        for item in &batch.items {
            assert!(item.id > last, "{} after {last}", item.id);
            last = item.id;
        }
    }
    // After a refused batch, numbers go on rising.
    let refused = store
        .ingest(d.clone(), vec![sms(d, 0, "changed")], T0, Room::none())
        .await;
    assert!(refused.is_err());
    let next = ingest(store, d, vec![sms(d, 100, "next")], T0).await;
    assert!(next.items[0].id > last);
}
