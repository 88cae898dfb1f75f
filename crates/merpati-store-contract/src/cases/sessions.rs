//! Dashboard sessions: opened only with a live key, ended by sign-out, by expiry, by the key's
//! revocation and by the account's deletion.

use merpati_domain::account::ApiKey;
use merpati_domain::ids::{token_hash, AccountId, ApiKeyId};
use merpati_domain::SharedStore;

use crate::support::*;

async fn key(store: &SharedStore, account: &AccountId, id: &str, secret: &str) {
    store
        .create_api_key(
            ApiKey {
                id: ApiKeyId::from(id),
                account_id: account.clone(),
                hint: secret[..4].to_string(),
                created_at: T0,
                revoked_at: None,
            },
            token_hash(secret),
        )
        .await
        .unwrap();
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
        store.session_account(token_hash("s0"), T0).await.unwrap(),
        None
    );

    for (session, secret) in [("s1", "mk_first"), ("s2", "mk_first"), ("s3", "mk_second")] {
        let opened = store
            .create_session(token_hash(session), token_hash(secret), T0, T0 + hour)
            .await
            .unwrap();
        assert_eq!(opened, Some(t.account.clone()));
    }
    assert_eq!(
        store
            .session_account(token_hash("s1"), T0 + 1)
            .await
            .unwrap(),
        Some(t.account.clone())
    );
    // Expired at its time, not a moment later.
    assert_eq!(
        store
            .session_account(token_hash("s1"), T0 + hour)
            .await
            .unwrap(),
        None
    );

    // Signing out ends that session only; ending it twice is no error.
    store.end_session(token_hash("s1")).await.unwrap();
    store.end_session(token_hash("s1")).await.unwrap();
    assert_eq!(
        store
            .session_account(token_hash("s1"), T0 + 1)
            .await
            .unwrap(),
        None
    );
    assert!(store
        .session_account(token_hash("s2"), T0 + 1)
        .await
        .unwrap()
        .is_some());

    // Revoking a key ends its sessions, and no new one opens with it.
    store
        .revoke_api_key(t.account.clone(), ApiKeyId::from("key1"), T0 + 2)
        .await
        .unwrap();
    assert_eq!(
        store
            .session_account(token_hash("s2"), T0 + 3)
            .await
            .unwrap(),
        None
    );
    let refused = store
        .create_session(token_hash("s4"), token_hash("mk_first"), T0 + 3, T0 + hour)
        .await
        .unwrap();
    assert_eq!(refused, None);
    assert!(store
        .session_account(token_hash("s3"), T0 + 3)
        .await
        .unwrap()
        .is_some());

    // Deleting the account ends every session of it.
    store
        .delete_account(t.account.clone(), T0 + 4)
        .await
        .unwrap();
    assert_eq!(
        store
            .session_account(token_hash("s3"), T0 + 5)
            .await
            .unwrap(),
        None
    );
    let refused = store
        .create_session(token_hash("s5"), token_hash("mk_second"), T0 + 5, T0 + hour)
        .await
        .unwrap();
    assert_eq!(refused, None);
}
