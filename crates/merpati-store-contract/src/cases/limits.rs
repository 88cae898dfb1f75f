//! An account's caps: one more device, endpoint or alert rule than its cap is refused in
//! the same write that would make it, and an endpoint being deleted no longer counts.

use merpati_domain::alert::Match;
use merpati_domain::ids::{ChannelId, EndpointId};
use merpati_domain::{SharedStore, StoreError};

use crate::support::*;

pub async fn an_account_gets_no_more_than_its_caps(store: &SharedStore) {
    let t = tree(store, "acct", 2).await;
    let ch = ChannelId::from("ch");
    let refused = device_within(store, &t.account, &ch, "dev9", 2).await;
    assert!(
        matches!(refused, Err(StoreError::LimitReached(_))),
        "{refused:?}"
    );
    assert!(device_within(store, &t.account, &ch, "dev9", 3)
        .await
        .is_ok());
    // Another account's count is its own.
    let other = tree(store, "other", 0).await;
    assert!(device_within(store, &other.account, &ch, "dev0", 1)
        .await
        .is_ok());

    endpoint_within(store, &t.account, "ep1", |_| {}, 1)
        .await
        .unwrap();
    let refused = endpoint_within(store, &t.account, "ep2", |_| {}, 1).await;
    assert!(
        matches!(refused, Err(StoreError::LimitReached(_))),
        "{refused:?}"
    );
    store
        .delete_endpoint(t.account.clone(), EndpointId::from("ep1"), T0 + 1)
        .await
        .unwrap();
    endpoint_within(store, &t.account, "ep2", |_| {}, 1)
        .await
        .unwrap();

    let rule = |id: &str| super::alerts::rule(id, Match::default());
    store
        .create_rule(t.account.clone(), rule("r1"), 1)
        .await
        .unwrap();
    let refused = store.create_rule(t.account.clone(), rule("r2"), 1).await;
    assert!(
        matches!(refused, Err(StoreError::LimitReached(_))),
        "{refused:?}"
    );
    assert_eq!(store.list_rules(t.account.clone()).await.unwrap().len(), 1);
}
