//! Dashboard sessions: opened only with a live key, ended by sign-out, by expiry, by the key's
//! revocation and by the account's deletion.

use merpati_domain::account::ApiKey;
use merpati_domain::ids::{token_hash, AccountId, ApiKeyId};
use merpati_domain::SharedStore;

use crate::support::*;

async fn key(store: &SharedStore, account: &AccountId, id: &str, secret: &str) {
    scoped_key(store, account, id, secret, false, None).await;
}

async fn scoped_key(
    store: &SharedStore,
    account: &AccountId,
    id: &str,
    secret: &str,
    read_only: bool,
    expires_at: Option<i64>,
) {
    store
        .create_api_key(
            ApiKey {
                id: ApiKeyId::from(id),
                account_id: account.clone(),
                hint: secret[..4].to_string(),
                created_at: T0,
                revoked_at: None,
                read_only,
                expires_at,
                last_used_at: None,
            },
            token_hash(secret),
        )
        .await
        .unwrap();
}

pub async fn a_key_grants_what_it_was_made_for_until_it_expires(store: &SharedStore) {
    let t = tree(store, "acct", 0).await;
    scoped_key(store, &t.account, "full", "mk_full", false, None).await;
    scoped_key(store, &t.account, "ro", "mk_ro", true, Some(T0 + 100)).await;
    let grant = |secret: &'static str, now: i64| async move {
        store.api_key_grant(token_hash(secret), now).await.unwrap()
    };
    let full = grant("mk_full", T0).await.expect("a live key");
    assert_eq!(
        (full.key_id.as_str(), &full.account_id, full.read_only),
        ("full", &t.account, false)
    );
    let ro = grant("mk_ro", T0 + 99)
        .await
        .expect("live until it expires");
    assert!(ro.read_only);
    // Expired at its time; a session does not outlive it either.
    assert_eq!(grant("mk_ro", T0 + 100).await, None);
    let opened = store
        .create_session(token_hash("s"), token_hash("mk_ro"), T0, T0 + 1_000)
        .await
        .unwrap();
    assert!(opened.expect("opened").read_only);
    assert!(store
        .session_grant(token_hash("s"), T0 + 100)
        .await
        .unwrap()
        .is_none());
    assert_eq!(grant("mk_nope", T0).await, None);

    // Uses are recorded, never moving back.
    store
        .record_api_key_use(ApiKeyId::from("full"), T0 + 50)
        .await
        .unwrap();
    store
        .record_api_key_use(ApiKeyId::from("full"), T0 + 40)
        .await
        .unwrap();
    assert_eq!(
        grant("mk_full", T0 + 60).await.unwrap().last_used_at,
        Some(T0 + 50)
    );
    let listed = store.list_api_keys(t.account.clone()).await.unwrap();
    let full = listed.iter().find(|k| k.id.as_str() == "full").unwrap();
    assert_eq!(
        (full.last_used_at, full.read_only, full.expires_at),
        (Some(T0 + 50), false, None)
    );
    let ro = listed.iter().find(|k| k.id.as_str() == "ro").unwrap();
    assert_eq!((ro.read_only, ro.expires_at), (true, Some(T0 + 100)));

    // Revoked, it grants nothing.
    store
        .revoke_api_key(t.account.clone(), ApiKeyId::from("full"), T0 + 70)
        .await
        .unwrap();
    assert_eq!(grant("mk_full", T0 + 71).await, None);
}

pub async fn a_session_lives_as_long_as_its_key_and_its_time(store: &SharedStore) {
    let t = tree(store, "acct", 0).await;
    key(store, &t.account, "key1", "mk_first").await;
    key(store, &t.account, "key2", "mk_second").await;
    let hour = 3_600_000;

    // A key that does not exist opens nothing.
    let none = store
        .create_session(token_hash("s0"), token_hash("mk_nope"), T0, T0 + hour)
        .await
        .unwrap();
    assert_eq!(none, None);
    assert_eq!(
        store
            .session_grant(token_hash("s0"), T0)
            .await
            .unwrap()
            .map(|g| g.account_id),
        None
    );

    for (session, secret) in [("s1", "mk_first"), ("s2", "mk_first"), ("s3", "mk_second")] {
        let opened = store
            .create_session(token_hash(session), token_hash(secret), T0, T0 + hour)
            .await
            .unwrap();
        assert_eq!(opened.map(|g| g.account_id), Some(t.account.clone()));
    }
    assert_eq!(
        store
            .session_grant(token_hash("s1"), T0 + 1)
            .await
            .unwrap()
            .map(|g| g.account_id),
        Some(t.account.clone())
    );
    // Expired at its time, not a moment later.
    assert_eq!(
        store
            .session_grant(token_hash("s1"), T0 + hour)
            .await
            .unwrap()
            .map(|g| g.account_id),
        None
    );

    // Signing out ends that session only; ending it twice is no error.
    store.end_session(token_hash("s1")).await.unwrap();
    store.end_session(token_hash("s1")).await.unwrap();
    assert_eq!(
        store
            .session_grant(token_hash("s1"), T0 + 1)
            .await
            .unwrap()
            .map(|g| g.account_id),
        None
    );
    assert!(store
        .session_grant(token_hash("s2"), T0 + 1)
        .await
        .unwrap()
        .map(|g| g.account_id)
        .is_some());

    // Revoking a key ends its sessions, and no new one opens with it.
    store
        .revoke_api_key(t.account.clone(), ApiKeyId::from("key1"), T0 + 2)
        .await
        .unwrap();
    assert_eq!(
        store
            .session_grant(token_hash("s2"), T0 + 3)
            .await
            .unwrap()
            .map(|g| g.account_id),
        None
    );
    let refused = store
        .create_session(token_hash("s4"), token_hash("mk_first"), T0 + 3, T0 + hour)
        .await
        .unwrap();
    assert_eq!(refused, None);
    assert!(store
        .session_grant(token_hash("s3"), T0 + 3)
        .await
        .unwrap()
        .map(|g| g.account_id)
        .is_some());

    // Deleting the account ends every session of it.
    store
        .delete_account(t.account.clone(), T0 + 4)
        .await
        .unwrap();
    assert_eq!(
        store
            .session_grant(token_hash("s3"), T0 + 5)
            .await
            .unwrap()
            .map(|g| g.account_id),
        None
    );
    let refused = store
        .create_session(token_hash("s5"), token_hash("mk_second"), T0 + 5, T0 + hour)
        .await
        .unwrap();
    assert_eq!(refused, None);
}
