//! Retention and purges: events older than the cut go, but for those a delivery still
//! owes; a deleted endpoint or account is gone from every view at once and its rows go a
//! chunk at a time.

use merpati_domain::event::EventFilter;
use merpati_domain::ids::AccountId;
use merpati_domain::retry::NextStep;
use merpati_domain::{SharedStore, StoreError};
use std::time::Duration;

use crate::support::*;

async fn events(store: &SharedStore, account: &AccountId) -> Vec<i64> {
    let mut seqs: Vec<i64> = store
        .list_events(account.clone(), EventFilter::default(), None, 1000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    seqs.sort();
    seqs
}

pub async fn old_events_go_unless_a_delivery_still_owes_them(store: &SharedStore) {
    let t = tree(store, "acct", 1).await;
    endpoint(store, &t.account, "ep", |_| {}).await;
    let d = &t.devices[0];
    // Three old events: one delivered, one failed for good, one still owed.
    let mut old = Vec::new();
    for rid in 0..3 {
        old.push(one_event(store, d, rid, T0).await);
    }
    let claimed = claim(store, T0).await;
    let of = |rid: usize| {
        claimed
            .iter()
            .find(|c| c.event_id == old[rid])
            .expect("claimed")
    };
    record(
        store,
        vec![
            attempt(of(0), T0, Some(200), NextStep::Succeeded),
            attempt(of(1), T0, Some(400), NextStep::Failed),
            attempt(of(2), T0, Some(500), NextStep::RetryAt(T0 + 1000)),
        ],
        WEEK_MS,
    )
    .await;
    let owed = old[2].clone();
    // The log moves on (a log kept in parts starts a new one), and a young event.
    store
        .turn_event_log(T0 + 1, Duration::ZERO)
        .await
        .expect("the log moves on");
    one_event(store, d, 3, T0 + 10_000).await;
    let before = events(store, &t.account).await;
    assert_eq!(before.len(), 4);

    let cut = T0 + 5_000;
    assert_eq!(
        store.prune_events(cut, 1).await.unwrap(),
        1,
        "a chunk at a time"
    );
    assert_eq!(store.prune_events(cut, 100).await.unwrap(), 1);
    assert_eq!(store.prune_events(cut, 100).await.unwrap(), 0);
    let left = events(store, &t.account).await;
    assert_eq!(left.len(), 2);
    let kept = event(store, &t.account, &owed).await;
    assert_eq!(kept.summary.id, owed, "owed, so kept");
    assert_eq!(
        *left.last().unwrap(),
        *before.last().unwrap(),
        "young, so kept"
    );
    // Its dedup record went with it: the same rid is a new item now.
    let again = ingest(store, d, vec![sms(d, 0, "m0")], T0 + 20_000).await;
    assert!(again.items[0].new);

    // Once settled, the owed event goes too (in a log kept in parts, with its part).
    let retried = claim(store, T0 + 1_000).await;
    assert_eq!(retried.len(), 1, "only the owed one is due");
    record(
        store,
        vec![attempt(
            &retried[0],
            T0 + 1_000,
            Some(200),
            NextStep::Succeeded,
        )],
        WEEK_MS,
    )
    .await;
    assert!(prune_all(store, cut).await >= 1);
    let left = events(store, &t.account).await;
    assert_eq!(left.len(), 2, "the young one and the new rid 0");
    assert_eq!(
        store
            .get_event(t.account.clone(), owed.clone())
            .await
            .unwrap_err(),
        StoreError::NotFound("event")
    );
    let again = ingest(store, d, vec![sms(d, 2, "m2")], T0 + 30_000).await;
    assert!(again.items[0].new, "its rid went with it");
    let young = ingest(store, d, vec![sms(d, 3, "m3")], T0 + 30_000).await;
    assert!(!young.items[0].new, "the young one's rid stays");
}

/// Retention steps until nothing more goes; returns how many rows went.
async fn prune_all(store: &SharedStore, before: i64) -> usize {
    let mut total = 0;
    loop {
        match store.prune_events(before, 100).await.unwrap() {
            0 => return total,
            n => total += n,
        }
    }
}

pub async fn deleted_endpoints_and_accounts_go_a_chunk_at_a_time(store: &SharedStore) {
    let t = tree(store, "acct", 1).await;
    let kept = tree(store, "kept", 1).await;
    endpoint(store, &t.account, "doomed", |_| {}).await;
    endpoint(store, &t.account, "stays", |_| {}).await;
    endpoint(store, &kept.account, "theirs", |_| {}).await;
    for rid in 0..3 {
        one_event(store, &t.devices[0], rid, T0).await;
    }
    one_event(store, &kept.devices[0], 0, T0).await;

    store
        .delete_endpoint(t.account.clone(), "doomed".into(), T0)
        .await
        .unwrap();
    let gone = store.get_endpoint(t.account.clone(), "doomed".into()).await;
    assert_eq!(gone, Err(StoreError::NotFound("endpoint")));
    assert!(
        claim(store, T0)
            .await
            .iter()
            .all(|d| d.endpoint.id != "doomed"),
        "a deleted endpoint's deliveries are not sent"
    );
    let mut removed = Vec::new();
    loop {
        let n = store.purge_deleted_endpoint(2).await.unwrap();
        if n == 0 {
            break;
        }
        removed.push(n);
    }
    assert_eq!(
        removed,
        [2, 1, 1],
        "its three deliveries two at a time, then itself"
    );

    let endpoints = store.delete_account(t.account.clone(), T0).await.unwrap();
    assert_eq!(endpoints, ["stays"]);
    assert_eq!(
        store.get_account(t.account.clone()).await,
        Err(StoreError::NotFound("account"))
    );
    // What lets anyone in is gone at once.
    let token = store
        .device_for_token(merpati_domain::ids::token_hash("token-acct-dev0"))
        .await
        .unwrap();
    assert!(token.is_none());
    while store.purge_deleted_endpoint(100).await.unwrap() > 0 {}
    let mut rows = 0;
    loop {
        let n = store.purge_deleted_account(2).await.unwrap();
        if n == 0 {
            break;
        }
        rows += n;
    }
    assert_eq!(rows, 4, "three events, then the account");
    assert_eq!(
        events(store, &kept.account).await.len(),
        1,
        "another account's stay"
    );
    // Its id is free again once it is gone.
    tree(store, "acct", 0).await;
}
