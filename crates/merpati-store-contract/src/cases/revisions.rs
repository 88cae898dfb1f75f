//! Revisions and walls: what people edit is stored only at the revision it was read at (a
//! lost update is refused as Stale, never made), and an account's resources are invisible
//! to every other account.

use merpati_domain::ids::AccountId;
use merpati_domain::{SharedStore, StoreError};

use crate::support::*;

pub async fn an_update_applies_only_at_the_revision_it_was_read(store: &SharedStore) {
    let t = tree(store, "acct", 1).await;
    let account = store.get_account(t.account.clone()).await.unwrap();
    let mut renamed = account.clone();
    renamed.name = "Renamed".into();
    let stored = store.update_account(renamed.clone()).await.unwrap();
    assert_eq!(
        (stored.name.as_str(), stored.revision),
        ("Renamed", account.revision + 1)
    );
    // A second writer that read the first revision loses, and changes nothing.
    let mut late = account.clone();
    late.name = "Late".into();
    assert_eq!(
        store.update_account(late).await,
        Err(StoreError::Stale("account"))
    );
    assert_eq!(
        store.get_account(t.account.clone()).await.unwrap().name,
        "Renamed"
    );

    let business = store
        .get_business(t.account.clone(), t.business.clone())
        .await
        .unwrap();
    let mut b = business.clone();
    b.name = "Other".into();
    store
        .update_business(t.account.clone(), b.clone())
        .await
        .unwrap();
    assert_eq!(
        store.update_business(t.account.clone(), b).await,
        Err(StoreError::Stale("business"))
    );

    let channel = store
        .get_channel(t.account.clone(), t.channel.clone())
        .await
        .unwrap();
    let mut c = channel.clone();
    c.engine = "wa".into();
    let stored = store
        .update_channel(t.account.clone(), c.clone())
        .await
        .unwrap();
    assert_eq!(stored.engine, "wa");
    assert_eq!(
        store.update_channel(t.account.clone(), c).await,
        Err(StoreError::Stale("channel"))
    );

    let device = store
        .get_device(t.account.clone(), "dev0".into())
        .await
        .unwrap();
    let mut d = device.clone();
    d.name = "Phone 1".into();
    store
        .update_device(t.account.clone(), d.clone())
        .await
        .unwrap();
    assert_eq!(
        store.update_device(t.account.clone(), d).await,
        Err(StoreError::Stale("device"))
    );

    let e = endpoint(store, &t.account, "ep", |_| {}).await;
    let mut first = e.clone();
    first.description = Some("first".into());
    let stored = store
        .update_endpoint(t.account.clone(), first)
        .await
        .unwrap();
    assert_eq!(stored.description.as_deref(), Some("first"));
    assert_eq!(stored.revision, e.revision + 1);
    let mut second = e.clone();
    second.url = "https://example.com/second".into();
    assert_eq!(
        store.update_endpoint(t.account.clone(), second).await,
        Err(StoreError::Stale("endpoint"))
    );
    // Enabling and disabling count as changes too.
    store
        .set_endpoint_enabled(t.account.clone(), "ep".into(), false, T0)
        .await
        .unwrap();
    assert_eq!(
        store.update_endpoint(t.account.clone(), stored).await,
        Err(StoreError::Stale("endpoint"))
    );
    // Gone is not found, not stale.
    let mut missing = e.clone();
    missing.id = "nope".into();
    assert_eq!(
        store.update_endpoint(t.account.clone(), missing).await,
        Err(StoreError::NotFound("endpoint"))
    );
}

pub async fn accounts_are_walls(store: &SharedStore) {
    let mine = tree(store, "mine", 1).await;
    let theirs = tree(store, "theirs", 1).await;
    endpoint(store, &theirs.account, "ep", |_| {}).await;
    let event = one_event(store, &theirs.devices[0], 1, T0).await;
    let me = mine.account.clone();
    // The same ids they gave, each account's own.
    assert_eq!(mine.devices[0].device_id, theirs.devices[0].device_id);
    assert_eq!(
        store
            .get_endpoint(me.clone(), "ep".into())
            .await
            .map(|e| e.id),
        Err(StoreError::NotFound("endpoint"))
    );
    assert_eq!(
        store.get_event(me.clone(), event.clone()).await,
        Err(StoreError::NotFound("event"))
    );
    assert_eq!(
        store.replay_event(me.clone(), event, None, T0).await,
        Err(StoreError::NotFound("event"))
    );
    assert_eq!(
        store.delete_endpoint(me.clone(), "nope".into(), T0).await,
        Err(StoreError::NotFound("endpoint"))
    );
    assert!(store
        .list_api_keys(AccountId::from("nobody"))
        .await
        .is_err());
    let channel = merpati_domain::ids::ChannelId::from("ch");
    let foreign_business = super::super::support::channel_row(
        &"other_ch".into(),
        &merpati_domain::ids::BusinessId::from("not_mine"),
    );
    let refused = store.create_channel(me.clone(), foreign_business).await;
    assert!(
        matches!(refused, Err(StoreError::Invalid(_))),
        "{refused:?}"
    );
    let taken = store
        .create_channel(me, channel_row(&channel, &mine.business))
        .await;
    assert!(matches!(taken, Err(StoreError::Conflict(_))), "{taken:?}");
}
